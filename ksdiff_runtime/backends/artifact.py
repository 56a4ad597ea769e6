"""Reading an ONNX export of the model, and the one that ships with the runtime (no torch needed).

An export is a directory:

    conditioner.onnx   WindowConditioner (KSDiff.condition)
    denoiser.onnx      WindowDenoiser (KSDiff.denoise)
    denoiser_expr.onnx, denoiser_pose.onnx
                       its two paths, each cut from denoiser.onnx with the inputs it reads (model/io.py
                       DENOISER_PATHS): the same nodes and weights, run at once on two cores by ONNX Runtime
    conditioner_stream.onnx  StreamingConditioner (model/streaming.py: a live stream's hop, encoder state
                       as inputs and outputs)
    style_encoder.onnx TakeStyleEncoder (KSDiff.style_of: windows of a reference take -> style vectors)
    denoiser_int8.onnx the denoiser with its face path's MatMul and Gemm weights quantised to int8 (per output channel,
                       7 bits, activations quantised as they come; the head's path float): what ONNX Runtime
                       on the CPU runs for `serve`'s streams by default (docs/BACKENDS.md "int8 on the CPU")
    denoiser_expr_int8.onnx
                       its face path, cut from denoiser_int8.onnx: run at once with denoiser_pose.onnx where
                       the float paths are
    constants.npz      ModelConstants (motion normalisation, null style, noise schedule, the moods' styles)
    manifest.json      format, model config, graph input/output names and dynamic axes, opset,
                       checkpoint sha256, model_hash (sha256 over the ONNX files), versions,
                       and the ONNX Runtime vs torch errors measured right after the export

Batch and time are dynamic axes, so one export serves any number of streams, CFG variants and
window lengths. ``SHIPPED_EXPORT`` is the bundled checkpoint's export, committed beside it, so a
runtime without torch (serve, bake) runs the bundled model; another checkpoint is exported on
first use (backends/export.py, which needs torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from ksdiff_runtime import assets
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.io import (
    CONDITIONER_INPUTS,
    CONDITIONER_OUTPUTS,
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    DENOISER_PATHS,
    FACE_OUTPUT,
    HEAD_OUTPUT,
    STREAM_CONDITIONER_INPUTS,
    STREAM_CONDITIONER_OUTPUTS,
    STREAM_STATE,
    STREAM_STATE_OUT,
    STYLE_ENCODER_INPUTS,
    STYLE_ENCODER_OUTPUTS,
)

from .base import BackendError, ModelConstants

EXPORT_FORMAT = "ksdiff-onnx-export"
EXPORT_VERSION = 7  # 2: the stream conditioner; 3: the style encoder; 4: the denoiser's paths apart; 5: int8;
# 6: int8 for the face's path only; 7: the int8 face's path cut from it
OPSET = 17
CONDITIONER_FILE = "conditioner.onnx"
DENOISER_FILE = "denoiser.onnx"
STREAM_CONDITIONER_FILE = "conditioner_stream.onnx"
STYLE_ENCODER_FILE = "style_encoder.onnx"
# the graphs exported from torch, and each denoiser output's own graph cut from the denoiser's (DENOISER_PATHS),
# by its name in the manifest
TRACED_GRAPH_FILES = (CONDITIONER_FILE, DENOISER_FILE, STREAM_CONDITIONER_FILE, STYLE_ENCODER_FILE)
DENOISER_PATH_GRAPHS = {FACE_OUTPUT: "denoiser_expr", HEAD_OUTPUT: "denoiser_pose"}
DENOISER_PATH_FILES = {output: f"{graph}.onnx" for output, graph in DENOISER_PATH_GRAPHS.items()}
# the denoiser with its face's path quantised to int8 (ONNX Runtime on the CPU), and that path cut from it (run at
# once with the float head's path, as the float paths are), by their manifest names and files
DENOISER_INT8_GRAPH = "denoiser_int8"
DENOISER_INT8_FILE = "denoiser_int8.onnx"
DENOISER_INT8_FACE_GRAPH = "denoiser_expr_int8"
DENOISER_INT8_FACE_FILE = "denoiser_expr_int8.onnx"
# the paths an int8 backend runs at once: the face's int8, the head's float
DENOISER_INT8_PATH_FILES = DENOISER_PATH_FILES | {FACE_OUTPUT: DENOISER_INT8_FACE_FILE}
GRAPH_FILES = (*TRACED_GRAPH_FILES, *DENOISER_PATH_FILES.values(), DENOISER_INT8_FILE, DENOISER_INT8_FACE_FILE)
CONSTANTS_FILE = "constants.npz"
MANIFEST_FILE = "manifest.json"
SHIPPED_EXPORT = assets.ASSETS / "export"  # the bundled checkpoint's export (`ksdiff-runtime export --ship`)

# symbolic axes: B batch (streams x CFG variants), S feature frames, P transcript tokens,
# N new frames, T = C + N motion frames
CONDITIONER_AXES: dict[str, dict[int, str]] = {
    "feats": {0: "B", 1: "S"}, "prosody": {0: "B", 1: "S"}, "text": {0: "B", 1: "P"}, "audio_keep": {0: "B"},
    "text_keep": {0: "B"}, "prev_expr": {0: "B"}, "prev_pose": {0: "B"}, "known": {0: "B"}, "n_new": {0: "N"},
    "f_e": {0: "B", 1: "T"}, "f_h": {0: "B", 1: "T"}, "key_prob_e": {0: "B", 1: "N"}, "key_value_e": {0: "B", 1: "N"},
    "key_prob_p": {0: "B", 1: "N"}, "key_value_p": {0: "B", 1: "N"},
}
# the stream conditioner: W feature frames of the hop (K committed + provisional), K committed
STREAM_CONDITIONER_AXES: dict[str, dict[int, str]] = (
    {n: dict(a) for n, a in CONDITIONER_AXES.items()} | {"feats": {0: "B", 1: "W"}, "prosody": {0: "B", 1: "W"},
                                                         "n_commit": {0: "K"}}
    | {n: {0: "B"} for n in STREAM_STATE + STREAM_STATE_OUT}
)
# W windows of a take (the style clip's length, fixed by the model config)
STYLE_ENCODER_AXES: dict[str, dict[int, str]] = {"take": {0: "W"}, "style": {0: "W"}}
DENOISER_AXES: dict[str, dict[int, str]] = (
    {n: {0: "B", 1: "T"} for n in DENOISER_INPUTS[:9]} | {"t": {0: "B"}, "style": {0: "B"}}
    | {n: {0: "B", 1: "T"} for n in DENOISER_OUTPUTS}
)


class ExportError(BackendError):
    """An export directory that cannot be used (missing, corrupt, another format); says which and why."""


def default_cache_dir() -> Path:
    """Root of ksdiff-runtime's caches: $KSDIFF_RUNTIME_CACHE, else $XDG_CACHE_HOME/ksdiff-runtime, else ~/.cache/."""
    if os.environ.get("KSDIFF_RUNTIME_CACHE"):
        return Path(os.environ["KSDIFF_RUNTIME_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "ksdiff-runtime"
    try:
        home = Path.home()
    except RuntimeError:  # no $HOME and no home in the user database (a container run as an arbitrary uid)
        raise ExportError("no folder for ksdiff-runtime's cache: $HOME is not set and this user has no home "
                          "directory; set KSDIFF_RUNTIME_CACHE (or XDG_CACHE_HOME) to a writable folder") from None
    return home / ".cache" / "ksdiff-runtime"


def sha256_file(*paths: Path) -> str:
    """sha256 over the bytes of the files, in order (read in 1 MiB blocks: engines can be large)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_hash(export_dir: Path) -> str:
    """sha256 over the ONNX files' bytes (GRAPH_FILES, in order): names the exported graphs + weights."""
    return sha256_file(*(Path(export_dir) / f for f in GRAPH_FILES))


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST_FILE
    if not export_dir.is_dir():
        raise ExportError(f"export {export_dir} does not exist (run `ksdiff-runtime export -o {export_dir}`)")
    if not path.is_file():
        raise ExportError(f"export {export_dir} has no {MANIFEST_FILE}: not an export, or an interrupted one")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"export {export_dir}: {MANIFEST_FILE} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ExportError(f"export {export_dir}: {MANIFEST_FILE} has format {found!r}, not {EXPORT_FORMAT!r}")
    if manifest.get("version") != EXPORT_VERSION:
        raise ExportError(f"export {export_dir} has {EXPORT_FORMAT} version {manifest.get('version')!r}; this code "
                          f"reads version {EXPORT_VERSION} (re-export it: `ksdiff-runtime export --checkpoint CKPT -o "
                          f"{export_dir}`; a backend's cached export is made again on first use where torch is "
                          f"installed)")
    problem = manifest_shape_problem(manifest)
    if problem is not None:  # a hand edit or another tool's file: what the backends read must be there, typed
        raise ExportError(f"export {export_dir}: {MANIFEST_FILE} is malformed: {problem} (re-export it)")
    return manifest


def manifest_shape_problem(manifest: dict[str, Any]) -> str | None:
    """What in a manifest of the right format and version is not the shape the runtime reads (None: nothing):
    ``graphs`` (each entry's ``inputs`` and ``outputs`` lists of names), ``model_hash``, ``checkpoint.sha256``
    and ``config`` (every field of ModelConfig with a value of its type)."""
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict):
        return f"graphs is {type(graphs).__name__}, not an object"
    for name, entry in graphs.items():
        if not isinstance(entry, dict):
            return f"graphs.{name} is {type(entry).__name__}, not an object"
        for key in ("inputs", "outputs"):
            names = entry.get(key)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return f"graphs.{name}.{key} is not a list of names"
    if not isinstance(manifest.get("model_hash"), str):
        return "model_hash is not a string"
    checkpoint = manifest.get("checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("sha256"), str):
        return "checkpoint.sha256 is not a string"
    return _value_problem("config", manifest.get("config"), ModelConfig().to_dict())


def _value_problem(where: str, value: Any, like: Any) -> str | None:
    """Why ``value`` (read from JSON) is not of the shape of ``like`` (a config's ``to_dict`` value), or None. None
    in ``like`` (an optional path) takes a string too; a float takes an integer (JSON writes 1.0 as 1 elsewhere)."""
    if isinstance(like, dict):
        if not isinstance(value, dict):
            return f"{where} is {type(value).__name__}, not an object"
        missing = sorted(set(like) - set(value))
        if missing:
            return f"{where} lacks {', '.join(missing)}"
        for key, sub in like.items():
            problem = _value_problem(f"{where}.{key}", value[key], sub)
            if problem is not None:
                return problem
        return None  # a field this code does not know is ModelConfig.from_dict's to refuse, by name
    if like is None:
        ok = value is None or isinstance(value, str)
    elif isinstance(like, bool):
        ok = isinstance(value, bool)
    elif isinstance(like, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(like, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(like, (list, tuple)):
        ok = isinstance(value, list) and all(_value_problem(where, v, like[0]) is None for v in value) \
            if like else isinstance(value, list)
    else:
        ok = isinstance(value, type(like))
    return None if ok else f"{where} is {json.dumps(value)[:40]} ({type(value).__name__}), not {type(like).__name__}"


def load_export(export_dir: str | Path) -> tuple[ModelConfig, ModelConstants, dict[str, Any]]:
    """(config, constants, manifest) of an export; ExportError naming the directory and the problem."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    missing = [f for f in (*GRAPH_FILES, CONSTANTS_FILE) if not (export_dir / f).is_file()]
    if missing:
        raise ExportError(f"export {export_dir} is incomplete: missing {', '.join(missing)}")
    expected = {"conditioner": (CONDITIONER_INPUTS, CONDITIONER_OUTPUTS),
                "denoiser": (DENOISER_INPUTS, DENOISER_OUTPUTS),
                "stream_conditioner": (STREAM_CONDITIONER_INPUTS, STREAM_CONDITIONER_OUTPUTS),
                "style_encoder": (STYLE_ENCODER_INPUTS, STYLE_ENCODER_OUTPUTS)}
    expected |= {DENOISER_PATH_GRAPHS[output]: (inputs, (output,)) for output, inputs in DENOISER_PATHS.items()}
    expected[DENOISER_INT8_GRAPH] = expected["denoiser"]
    expected[DENOISER_INT8_FACE_GRAPH] = expected[DENOISER_PATH_GRAPHS[FACE_OUTPUT]]
    for graph, (inputs, outputs) in expected.items():
        entry = manifest.get("graphs", {}).get(graph, {})
        if tuple(entry.get("inputs", ())) != inputs or tuple(entry.get("outputs", ())) != outputs:
            raise ExportError(f"export {export_dir}: the {graph} graph's inputs/outputs differ from this code's "
                              f"(re-export it)")
    # the hash is cheap (tens of MB) and catches truncated or swapped ONNX files; TensorRT engines
    # are cached under this hash, so it must describe the files actually there
    actual = model_hash(export_dir)
    if actual != manifest.get("model_hash"):
        raise ExportError(f"export {export_dir}: the ONNX files do not match the manifest's model_hash "
                          f"(corrupt or modified; re-export it)")
    try:
        cfg = ModelConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"export {export_dir}: its model config does not match this code: {exc}") from exc
    try:
        constants = ModelConstants.load(export_dir / CONSTANTS_FILE, cfg)
    # a truncated or emptied npz (not in model_hash) raises BadZipFile or EOFError; bad moods a BackendError
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, BackendError) as exc:
        raise ExportError(f"export {export_dir}: {CONSTANTS_FILE} is corrupt: {exc}") from exc
    return cfg, constants, manifest


def export_of(checkpoint: Path, export_dir: Path) -> bool:
    """Whether ``export_dir`` holds a valid export made from ``checkpoint`` (same sha256)."""
    return export_problem(checkpoint, export_dir) is None


def export_problem(checkpoint: Path, export_dir: Path) -> str | None:
    """Why ``export_dir`` is not a valid export made from ``checkpoint`` (None: it is one)."""
    try:
        _, _, manifest = load_export(export_dir)
    except ExportError as exc:
        return str(exc)
    if manifest["checkpoint"]["sha256"] != sha256_file(checkpoint):
        return f"export {export_dir} was made from another checkpoint than {checkpoint} (its sha256 differs)"
    return None
