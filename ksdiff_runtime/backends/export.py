"""Export a checkpoint to ONNX for the ONNX Runtime and TensorRT backends, and read exports back.

An export is a directory:

    conditioner.onnx   WindowConditioner (KSDiff.condition), float32
    denoiser.onnx      WindowDenoiser (KSDiff.denoise), float32
    constants.npz      ModelConstants (motion normalisation, null style, noise schedule)
    manifest.json      format, model config, graph input/output names and dynamic axes, opset,
                       checkpoint sha256, model_hash (sha256 over both ONNX files), versions,
                       and the ONNX Runtime vs torch errors measured right after the export

Batch and time are dynamic axes, so one export serves any number of streams, CFG variants and
window lengths. The export is written into a temporary sibling directory, verified there, and
only then renamed into place: a crash never leaves a half-written export where a backend looks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.graphs import CONDITIONER_INPUTS, CONDITIONER_OUTPUTS, DENOISER_INPUTS, DENOISER_OUTPUTS

from .base import BackendError, ModelConstants

log = logging.getLogger("ksdiff_runtime.backends")

EXPORT_FORMAT = "ksdiff-onnx-export"
EXPORT_VERSION = 1
OPSET = 17
CONDITIONER_FILE = "conditioner.onnx"
DENOISER_FILE = "denoiser.onnx"
CONSTANTS_FILE = "constants.npz"
MANIFEST_FILE = "manifest.json"
DEFAULT_EXPORT_DIR = Path("exports/ksdiff")
# ONNX Runtime vs torch on random inputs, float32: a correct export lands around 1e-6..1e-5;
# anything above this is a broken graph, not rounding.
VERIFY_TOLERANCE = 1e-3

# symbolic axes: B batch (streams x CFG variants), S feature frames, P transcript tokens,
# N new frames, T = C + N motion frames
CONDITIONER_AXES: dict[str, dict[int, str]] = {
    "feats": {0: "B", 1: "S"}, "prosody": {0: "B", 1: "S"}, "text": {0: "B", 1: "P"}, "audio_keep": {0: "B"},
    "text_keep": {0: "B"}, "prev_expr": {0: "B"}, "prev_pose": {0: "B"}, "known": {0: "B"}, "n_new": {0: "N"},
    "f_e": {0: "B", 1: "T"}, "f_h": {0: "B", 1: "T"}, "key_prob_e": {0: "B", 1: "N"}, "key_value_e": {0: "B", 1: "N"},
    "key_prob_p": {0: "B", 1: "N"}, "key_value_p": {0: "B", 1: "N"},
}
DENOISER_AXES: dict[str, dict[int, str]] = (
    {n: {0: "B", 1: "T"} for n in DENOISER_INPUTS[:9]} | {"t": {0: "B"}, "style": {0: "B"}}
    | {n: {0: "B", 1: "T"} for n in DENOISER_OUTPUTS}
)
INT64_INPUTS = frozenset({"text", "t"})


class ExportError(BackendError):
    """An export directory that cannot be used (missing, corrupt, another format); says which and why."""


def default_cache_dir() -> Path:
    """Root of ksdiff-runtime's caches: $KSDIFF_RUNTIME_CACHE, else $XDG_CACHE_HOME/ksdiff-runtime, else ~/.cache/."""
    if os.environ.get("KSDIFF_RUNTIME_CACHE"):
        return Path(os.environ["KSDIFF_RUNTIME_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ksdiff-runtime"


def sha256_file(*paths: Path) -> str:
    """sha256 over the bytes of the files, in order (read in 1 MiB blocks: engines can be large)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_hash(export_dir: Path) -> str:
    """sha256 over both ONNX files' bytes (conditioner then denoiser): names the exported graphs + weights."""
    return sha256_file(Path(export_dir) / CONDITIONER_FILE, Path(export_dir) / DENOISER_FILE)


# --- random graph inputs (export tracing and verification) --------------------------------------
def conditioner_inputs(cfg: ModelConfig, B: int, N: int, P: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    S = cfg.encoder_context_frames + N + cfg.lookahead_frames
    C = cfg.motion_context_frames
    f32 = np.float32
    return {
        "feats": rng.standard_normal((B, S, cfg.feature_dim), f32),
        "prosody": rng.standard_normal((B, S, cfg.prosody_dim), f32),
        "text": rng.integers(1, cfg.text_vocab, (B, P), dtype=np.int64),
        "audio_keep": (rng.random(B) > 0.3).astype(f32),
        "text_keep": (rng.random(B) > 0.5).astype(f32),
        "prev_expr": rng.standard_normal((B, C, cfg.expr_dim), f32),
        "prev_pose": rng.standard_normal((B, C, cfg.pose_dim), f32),
        "known": (rng.random((B, C)) > 0.2).astype(f32),
        "n_new": np.zeros(N, f32),
    }


def denoiser_inputs(cfg: ModelConfig, B: int, N: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    T = cfg.motion_context_frames + N
    f32 = np.float32
    return {
        "x_expr": rng.standard_normal((B, T, cfg.expr_dim), f32),
        "x_pose": rng.standard_normal((B, T, cfg.pose_dim), f32),
        "known": (rng.random((B, T)) > 0.5).astype(f32),
        "key_prob_e": rng.random((B, T), f32),
        "key_value_e": rng.standard_normal((B, T, cfg.expr_dim), f32),
        "key_prob_p": rng.random((B, T), f32),
        "key_value_p": rng.standard_normal((B, T, cfg.pose_dim), f32),
        "f_e": rng.standard_normal((B, T, cfg.d_model), f32),
        "f_h": rng.standard_normal((B, T, cfg.d_model), f32),
        "t": rng.integers(0, cfg.diffusion_steps, B, dtype=np.int64),
        "style": rng.standard_normal((B, cfg.style_dim), f32),
    }


# --- export -------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    errors: dict[str, float]  # graph -> max abs error, ONNX Runtime vs torch


def _export_graph(module, inputs: dict[str, np.ndarray], path: Path, input_names: tuple[str, ...],
                  output_names: tuple[str, ...], axes: dict[str, dict[int, str]]) -> None:
    import torch

    args = tuple(torch.from_numpy(inputs[n]) for n in input_names)
    with warnings.catch_warnings():
        # the tracer warns about shape-dependent Python values (the n_new placeholder, slicing by
        # C + N); the dynamic-axes check in verify_export is what proves the graph generalises
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def verify_export(model, export_dir: Path, B: int = 3, N: int = 11, P: int = 5,
                  threads: int | None = None) -> dict[str, float]:
    """Max abs error, ONNX Runtime vs torch, per graph, on random inputs of a batch size and window
    length other than the export's (so the dynamic axes are exercised, not just replayed)."""
    import onnxruntime as ort
    import torch

    from ksdiff_runtime.model.graphs import WindowConditioner, WindowDenoiser

    cfg = model.cfg
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    errors = {}
    for graph, module, file, inputs, input_names, outputs in (
        ("conditioner", WindowConditioner(model), CONDITIONER_FILE, conditioner_inputs(cfg, B, N, P, seed=7),
         CONDITIONER_INPUTS, CONDITIONER_OUTPUTS),
        ("denoiser", WindowDenoiser(model), DENOISER_FILE, denoiser_inputs(cfg, B, N, seed=7), DENOISER_INPUTS,
         DENOISER_OUTPUTS),
    ):
        sess = ort.InferenceSession(str(Path(export_dir) / file), opts, providers=["CPUExecutionProvider"])
        got = sess.run(list(outputs), inputs)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(inputs[n]) for n in input_names))
        err = 0.0
        for name, r, o in zip(outputs, ref, got, strict=True):
            if tuple(r.shape) != o.shape:
                raise ExportError(f"{graph} output {name}: ONNX Runtime shape {o.shape} != torch {tuple(r.shape)}")
            err = max(err, float(np.abs(r.numpy() - o).max()))
        errors[graph] = err
    return errors


def _write_export(checkpoint: Path, out: Path, progress: bool) -> dict[str, float]:
    """All files of an export into ``out`` (an empty directory); returns the verification errors."""
    import onnx
    import onnxruntime as ort
    import torch
    from tqdm import tqdm

    from ksdiff_runtime.model.checkpoint import load_model
    from ksdiff_runtime.model.graphs import WindowConditioner, WindowDenoiser

    stages = ["load checkpoint", "export conditioner", "export denoiser", "verify with ONNX Runtime", "manifest"]
    bar = tqdm(stages, desc="export", unit="stage", disable=not progress, leave=False)
    bar.set_postfix_str(stages[0])
    # the shipped checkpoint stores float16 weights; export float32 graphs (fp16 is a
    # TensorRT build choice, not an export one)
    model = load_model(checkpoint).float().eval()
    cfg = model.cfg
    bar.update()
    # trace with one shape, verify with another: B=2, N=train window, P=8 vs B=3, N=11, P=5
    N = cfg.train_window_frames
    bar.set_postfix_str(stages[1])
    _export_graph(WindowConditioner(model).eval(), conditioner_inputs(cfg, 2, N, 8), out / CONDITIONER_FILE,
                  CONDITIONER_INPUTS, CONDITIONER_OUTPUTS, CONDITIONER_AXES)
    bar.update()
    bar.set_postfix_str(stages[2])
    _export_graph(WindowDenoiser(model).eval(), denoiser_inputs(cfg, 2, N), out / DENOISER_FILE, DENOISER_INPUTS,
                  DENOISER_OUTPUTS, DENOISER_AXES)
    for file in (CONDITIONER_FILE, DENOISER_FILE):
        onnx.checker.check_model(str(out / file))
    bar.update()
    bar.set_postfix_str(stages[3])
    errors = verify_export(model, out)
    for graph, err in errors.items():
        if not err < VERIFY_TOLERANCE:  # also catches NaN
            raise ExportError(f"export of {checkpoint}: ONNX Runtime differs from torch on the {graph} by {err:.3g} "
                              f"(max abs; a correct export is below {VERIFY_TOLERANCE:g})")
    bar.update()
    bar.set_postfix_str(stages[4])
    ModelConstants.from_model(model).save(out / CONSTANTS_FILE)
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "config": cfg.to_dict(),
        "opset": OPSET,
        "dtype": "float32",
        "graphs": {
            "conditioner": {"file": CONDITIONER_FILE, "inputs": list(CONDITIONER_INPUTS),
                            "outputs": list(CONDITIONER_OUTPUTS), "dynamic_axes": CONDITIONER_AXES},
            "denoiser": {"file": DENOISER_FILE, "inputs": list(DENOISER_INPUTS), "outputs": list(DENOISER_OUTPUTS),
                         "dynamic_axes": DENOISER_AXES},
        },
        "int64_inputs": sorted(INT64_INPUTS),
        "checkpoint": {"name": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "model_hash": model_hash(out),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "verify": {"batch": 3, "new_frames": 11, "text_tokens": 5,
                   "max_abs_error": {g: float(e) for g, e in errors.items()}},
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    bar.update()
    bar.close()
    return errors


def _swap_into_place(tmp: Path, out_dir: Path, old: Path) -> None:
    """Rename the finished export ``tmp`` to ``out_dir``, moving any previous export aside first.

    Directories cannot be swapped atomically, so this takes two renames: a crash between them leaves
    no export (made again on next use), never half of one. If another process puts its export in
    place between our two renames (same checkpoint, same bytes), move that aside and try again."""
    for _ in range(3):
        try:
            if out_dir.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            return
        except OSError:  # out_dir reappeared (ENOTEMPTY/EEXIST) or vanished under us: look again
            continue
    raise ExportError(f"cannot move the new export into {out_dir}: another process keeps replacing it")


def export_model(checkpoint: str | Path, out_dir: str | Path = DEFAULT_EXPORT_DIR,
                 progress: bool = True) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir`` (replacing any export there), verified against torch.

    Idempotent: the same checkpoint and versions give the same files. Atomic: everything is written
    and checked in a temporary sibling directory first; only a complete export is renamed into place.
    """
    from ksdiff_runtime.model.checkpoint import CheckpointError

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    old = out_dir.parent / f".{out_dir.name}.old-{tag}"
    tmp.mkdir()
    try:
        errors = _write_export(checkpoint, tmp, progress)
        _swap_into_place(tmp, out_dir, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    _, _, manifest = load_export(out_dir)
    log.info("exported %s -> %s (max abs error vs torch: %s)", checkpoint, out_dir,
             ", ".join(f"{g} {e:.2e}" for g, e in errors.items()))
    return ExportResult(out_dir, manifest, errors)


# --- reading an export back ---------------------------------------------------------------------
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
                          f"reads version {EXPORT_VERSION} (re-export it)")
    return manifest


def load_export(export_dir: str | Path) -> tuple[ModelConfig, ModelConstants, dict[str, Any]]:
    """(config, constants, manifest) of an export; ExportError naming the directory and the problem."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    missing = [f for f in (CONDITIONER_FILE, DENOISER_FILE, CONSTANTS_FILE) if not (export_dir / f).is_file()]
    if missing:
        raise ExportError(f"export {export_dir} is incomplete: missing {', '.join(missing)}")
    expected = {"conditioner": (CONDITIONER_INPUTS, CONDITIONER_OUTPUTS),
                "denoiser": (DENOISER_INPUTS, DENOISER_OUTPUTS)}
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
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ExportError(f"export {export_dir}: {CONSTANTS_FILE} is corrupt: {exc}") from exc
    return cfg, constants, manifest


def ensure_export(checkpoint: str | Path, export_dir: str | Path, progress: bool = False) -> Path:
    """An export of ``checkpoint`` in ``export_dir``: reused when valid and made from the same checkpoint
    (sha256), otherwise (re-)exported."""
    checkpoint, export_dir = Path(checkpoint), Path(export_dir)
    if export_dir.exists():
        try:
            _, _, manifest = load_export(export_dir)
        except ExportError as exc:
            log.warning("re-exporting: %s", exc)
        else:
            if manifest["checkpoint"]["sha256"] == sha256_file(checkpoint):
                log.debug("reusing export %s", export_dir)
                return export_dir
            log.info("re-exporting %s: it was made from another checkpoint than %s", export_dir, checkpoint)
    else:
        log.info("exporting %s to %s (once; later runs reuse it)", checkpoint, export_dir)
    export_model(checkpoint, export_dir, progress=progress)
    return export_dir
