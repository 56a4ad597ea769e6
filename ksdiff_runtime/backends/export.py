"""Export a checkpoint to ONNX for the ONNX Runtime and TensorRT backends (needs torch; reading an
export back does not: backends/artifact.py describes the directory).

The graphs are float32 with dynamic batch and time axes; weights that a float16 checkpoint holds
exactly are stored as float16 initializers cast to float32 inside the graph (ONNX Runtime folds
the casts when it loads: the same numbers, half the file). The export is written into a temporary
sibling directory, verified there, and only then renamed into place: a crash never leaves a
half-written export where a backend looks.
"""

from __future__ import annotations

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
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.utils import extract_model
from tqdm import tqdm

from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.model.config import ModelConfig, checkpoint_file
from ksdiff_runtime.model.graphs import TakeStyleEncoder, WindowConditioner, WindowDenoiser
from ksdiff_runtime.model.io import (
    CONDITIONER_INPUTS,
    CONDITIONER_OUTPUTS,
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    DENOISER_PATHS,
    FACE_OUTPUT,
    HEAD_OUTPUT,
    INT64_INPUTS,
    STREAM_CONDITIONER_INPUTS,
    STREAM_CONDITIONER_OUTPUTS,
    STREAM_STATE,
    STYLE_ENCODER_INPUTS,
    STYLE_ENCODER_OUTPUTS,
)
from ksdiff_runtime.model.streaming import StreamingConditioner

from .artifact import (
    CONDITIONER_AXES,
    CONDITIONER_FILE,
    CONSTANTS_FILE,
    DENOISER_AXES,
    DENOISER_FILE,
    DENOISER_INT8_FACE_FILE,
    DENOISER_INT8_FACE_GRAPH,
    DENOISER_INT8_FILE,
    DENOISER_INT8_GRAPH,
    DENOISER_PATH_FILES,
    DENOISER_PATH_GRAPHS,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    GRAPH_FILES,
    MANIFEST_FILE,
    OPSET,
    STREAM_CONDITIONER_AXES,
    STREAM_CONDITIONER_FILE,
    STYLE_ENCODER_AXES,
    STYLE_ENCODER_FILE,
    TRACED_GRAPH_FILES,
    ExportError,
    export_of,
    load_export,
    model_hash,
    sha256_file,
)
from .base import ModelConstants

log = logging.getLogger("ksdiff_runtime.backends")

DEFAULT_EXPORT_DIR = Path("exports/ksdiff")
# ONNX Runtime vs torch on random inputs, float32: a correct export lands around 1e-6..1e-5;
# anything above this is a broken graph, not rounding.
VERIFY_TOLERANCE = 1e-3
# an int8 graph vs its float graph in ONNX Runtime on the same random inputs: int8 weights move the face's output
# by a tenth (0.11 on the bundled model's denoiser); a wrong scale or a saturated product moves it by units
INT8_VERIFY_TOLERANCE = 0.5
# what verify_int8 checks, with its bound and why: the int8 denoiser's outputs against the float denoiser's (the
# face's moved by its int8 weights; the head's path float, to rounding), and its face's path cut from it against it
INT8_CUT = "x0_expr, its cut path vs the int8 graph"
INT8_BOUNDS = {FACE_OUTPUT: (INT8_VERIFY_TOLERANCE, "int8 weights move it by about a tenth"),
               HEAD_OUTPUT: (VERIFY_TOLERANCE, "the head's path stays float"),
               INT8_CUT: (VERIFY_TOLERANCE, "the same nodes and weights")}

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


def stream_conditioner_inputs(cfg: ModelConfig, B: int, N: int, K: int, P: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A hop of the stream conditioner: K committed frames then N - 1 provisional ones, random state."""
    rng = np.random.default_rng(seed)
    inputs = conditioner_inputs(cfg, B, N, P, seed)
    W = K + N - 1
    inputs["feats"], inputs["prosody"] = inputs["feats"][:, :W].copy(), inputs["prosody"][:, :W].copy()
    inputs["n_commit"] = np.zeros(K, np.float32)
    for name, shape in cfg.stream_state_shapes().items():
        inputs[name] = rng.standard_normal((B, *shape), np.float32)
    return inputs


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


def style_encoder_inputs(cfg: ModelConfig, W: int, seed: int = 0) -> dict[str, np.ndarray]:
    """W windows of a take in natural units: blendshape weights in 0..1, head angles of a few degrees."""
    rng = np.random.default_rng(seed)
    expr = rng.random((W, cfg.style_clip_frames, cfg.expr_dim), np.float32)
    pose = 0.1 * rng.standard_normal((W, cfg.style_clip_frames, cfg.pose_dim), np.float32)
    return {"take": np.concatenate([expr, pose], axis=-1)}


# --- export -------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    errors: dict[str, float]  # graph -> max abs error, ONNX Runtime vs torch


def _export_graph(module, inputs: dict[str, np.ndarray], path: Path, input_names: tuple[str, ...],
                  output_names: tuple[str, ...], axes: dict[str, dict[int, str]]) -> None:
    args = tuple(torch.from_numpy(inputs[n]) for n in input_names)
    with warnings.catch_warnings():
        # the tracer warns about shape-dependent Python values (the n_new placeholder, slicing by
        # C + N); the dynamic-axes check in verify_export is what proves the graph generalises
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _one_output(module, index: int):
    """A graph's torch reference that returns only its output ``index`` (a denoiser path's)."""
    return lambda *args: module(*args)[index]


def verify_export(model, export_dir: Path, B: int = 3, N: int = 11, P: int = 5,
                  threads: int | None = None) -> dict[str, float]:
    """Max abs error, ONNX Runtime vs torch, per graph, on random inputs of a batch size and window
    length other than the export's (so the dynamic axes are exercised, not just replayed)."""
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
        ("stream_conditioner", StreamingConditioner(model), STREAM_CONDITIONER_FILE,
         stream_conditioner_inputs(cfg, B, N, 3, P, seed=7), STREAM_CONDITIONER_INPUTS, STREAM_CONDITIONER_OUTPUTS),
        ("style_encoder", TakeStyleEncoder(model), STYLE_ENCODER_FILE, style_encoder_inputs(cfg, B, seed=7),
         STYLE_ENCODER_INPUTS, STYLE_ENCODER_OUTPUTS),
        *((DENOISER_PATH_GRAPHS[output], _one_output(WindowDenoiser(model), DENOISER_OUTPUTS.index(output)),
           DENOISER_PATH_FILES[output], denoiser_inputs(cfg, B, N, seed=7), DENOISER_INPUTS, (output,))
          for output in DENOISER_PATHS),
    ):
        sess = ort.InferenceSession(str(Path(export_dir) / file), opts, providers=["CPUExecutionProvider"])
        fed = {i.name for i in sess.get_inputs()}
        got = sess.run(list(outputs), {n: v for n, v in inputs.items() if n in fed})
        with torch.no_grad():
            ref = module(*(torch.from_numpy(inputs[n]) for n in input_names))
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        err = 0.0
        for name, r, o in zip(outputs, ref, got, strict=True):
            if tuple(r.shape) != o.shape:
                raise ExportError(f"{graph} output {name}: ONNX Runtime shape {o.shape} != torch {tuple(r.shape)}")
            err = max(err, float(np.abs(r.numpy() - o).max()))
        errors[graph] = err
    return errors


def _write_export(checkpoint: Path, out: Path, progress: bool) -> dict[str, float]:
    """All files of an export into ``out`` (an empty directory); returns the verification errors."""
    stages = ["load checkpoint", "export conditioner", "export denoiser", "export stream conditioner",
              "export style encoder", "verify with ONNX Runtime", "manifest"]
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
    bar.update()
    bar.set_postfix_str(stages[3])
    # traced with a 1-frame commit and a low-latency window; verified with 3 and 11
    _export_graph(StreamingConditioner(model).eval(), stream_conditioner_inputs(cfg, 2, 8, 1, 8),
                  out / STREAM_CONDITIONER_FILE, STREAM_CONDITIONER_INPUTS, STREAM_CONDITIONER_OUTPUTS,
                  STREAM_CONDITIONER_AXES)
    bar.update()
    bar.set_postfix_str(stages[4])
    # traced with 2 windows, verified with 3
    _export_graph(TakeStyleEncoder(model).eval(), style_encoder_inputs(cfg, 2), out / STYLE_ENCODER_FILE,
                  STYLE_ENCODER_INPUTS, STYLE_ENCODER_OUTPUTS, STYLE_ENCODER_AXES)
    for file in TRACED_GRAPH_FILES:
        compact_weights(out / file)
    write_denoiser_paths(out)
    write_int8_graphs(out)
    for file in GRAPH_FILES:
        onnx.checker.check_model(str(out / file))
    bar.update()
    bar.set_postfix_str(stages[5])
    errors = verify_export(model, out)
    for graph, err in errors.items():
        if not err < VERIFY_TOLERANCE:  # also catches NaN
            raise ExportError(f"export of {checkpoint}: ONNX Runtime differs from torch on the {graph} by {err:.3g} "
                              f"(max abs; a correct export is below {VERIFY_TOLERANCE:g})")
    int8_errors = verify_int8(out, cfg)
    for check, err in int8_errors.items():
        bound, why = INT8_BOUNDS[check]
        if not err < bound:
            raise ExportError(f"export of {checkpoint}: the int8 denoiser's {check} differs by {err:.3g} (max abs "
                              f"against the float denoiser's, or the int8 graph's for its cut path; at most {bound:g}: "
                              f"{why})")
    bar.update()
    bar.set_postfix_str(stages[6])
    ModelConstants.from_model(model).save(out / CONSTANTS_FILE)
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "config": cfg.to_dict(),
        "opset": OPSET,
        "dtype": "float32 (weights exact in float16 stored as float16 + Cast)",
        "graphs": {
            "conditioner": {"file": CONDITIONER_FILE, "inputs": list(CONDITIONER_INPUTS),
                            "outputs": list(CONDITIONER_OUTPUTS), "dynamic_axes": CONDITIONER_AXES},
            "denoiser": {"file": DENOISER_FILE, "inputs": list(DENOISER_INPUTS), "outputs": list(DENOISER_OUTPUTS),
                         "dynamic_axes": DENOISER_AXES},
            "stream_conditioner": {"file": STREAM_CONDITIONER_FILE, "inputs": list(STREAM_CONDITIONER_INPUTS),
                                   "outputs": list(STREAM_CONDITIONER_OUTPUTS),
                                   "dynamic_axes": STREAM_CONDITIONER_AXES,
                                   "state": {n: list(cfg.stream_state_shapes()[n]) for n in STREAM_STATE}},
            "style_encoder": {"file": STYLE_ENCODER_FILE, "inputs": list(STYLE_ENCODER_INPUTS),
                              "outputs": list(STYLE_ENCODER_OUTPUTS), "dynamic_axes": STYLE_ENCODER_AXES,
                              "window_frames": cfg.style_clip_frames},
            **denoiser_path_entries(),
            **int8_entries(),
        },
        "int64_inputs": sorted(INT64_INPUTS),
        "checkpoint": {"name": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "model_hash": model_hash(out),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "verify": {"batch": 3, "new_frames": 11, "text_tokens": 5,
                   "max_abs_error": {g: float(e) for g, e in errors.items()},
                   "int8_max_abs_error_vs_float": int8_errors},
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    bar.update()
    bar.close()
    return errors


def write_denoiser_paths(export_dir: Path) -> None:
    """Cut each denoiser path's graph (model/io.py DENOISER_PATHS) from the export's denoiser.onnx: the nodes its
    output needs, with the very weights (float16 and their casts as compact_weights stored them)."""
    for output, inputs in DENOISER_PATHS.items():
        extract_model(str(export_dir / DENOISER_FILE), str(export_dir / DENOISER_PATH_FILES[output]), list(inputs),
                      [output], check_model=False)


def write_int8_graphs(export_dir: Path) -> None:
    """Quantise the denoiser's face path to int8 (DENOISER_INT8_FILE) with ONNX Runtime's dynamic quantisation.

    Every MatMul and Gemm with a weight in the face's path (its attention and feed-forward projections, its
    output head, its style-and-step projections) gets int8 weights, one scale per output channel, 7 bits
    (``reduce_range``: on x86 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights in
    pairs summed into int16, which 8-bit weights can overflow); activations are quantised per call as they come.
    Convolutions, norms and the rest stay float, and so does the head's whole path (HEAD_OUTPUT's nodes: only the
    face's own are named to the quantiser, so a node it did not find stays float): a quantised head carried its
    error through every DDIM step into visible jitter, where the face, predicted afresh each hop, did not move
    (docs/BACKENDS.md "int8 on the CPU"). The stream conditioner is left float: quantised, its calls in a live
    round took as long or longer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(export_dir / DENOISER_FILE))
    _float32_weights(model)  # quantize_dynamic quantises initializers, not casts of them
    face = path_nodes(model, FACE_OUTPUT) - path_nodes(model, HEAD_OUTPUT)
    tmp = export_dir / f".{DENOISER_INT8_FILE}.float32"
    onnx.save(model, str(tmp))
    quiet = QuietQuantiser()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(tmp), str(export_dir / DENOISER_INT8_FILE), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=True, op_types_to_quantize=["MatMul"],
                         nodes_to_quantize=sorted(face))
    finally:
        logging.getLogger().removeFilter(quiet)
        tmp.unlink(missing_ok=True)
    compact_weights(export_dir / DENOISER_INT8_FILE)  # the weights left float go back to float16 + Cast
    # its face's path alone, to run at once with the float head's path (a line's or a quality stream's window)
    extract_model(str(export_dir / DENOISER_INT8_FILE), str(export_dir / DENOISER_INT8_FACE_FILE),
                  list(DENOISER_PATHS[FACE_OUTPUT]), [FACE_OUTPUT], check_model=False)


class QuietQuantiser(logging.Filter):
    """Drops ONNX Runtime's quantiser's chatter, on the root logger (which it logs to, with ``logging.info``): its
    INFO lines (a dozen "Quantization parameters for tensor ... not specified" and "Ignore MatMul due to non
    constant B" per export, on the console of every first `serve` of a checkpoint of one's own) and its advice to
    pre-process the model first, which a user cannot act on (the int8 graph is checked against the float one
    instead: verify_int8). Its other warnings and errors still reach the user, and every other logger's lines."""

    NOISE = ("Please consider to run pre-processing before quantization",)

    def __init__(self) -> None:
        super().__init__()
        import onnxruntime.quantization

        self.package = os.path.dirname(onnxruntime.quantization.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.package):
            return True
        return record.levelno >= logging.WARNING and not str(record.msg).startswith(self.NOISE)


def path_nodes(model: onnx.ModelProto, output: str) -> set[str]:
    """The names of the denoiser's nodes that ``output`` needs from its path's inputs (DENOISER_PATHS): the nodes
    write_denoiser_paths cuts into that path's graph, as ONNX Runtime's dynamic quantiser names them (it makes
    each Gemm a MatMul named after it first; a name it no longer uses leaves that node float, which the tests'
    count of the face's integer products catches)."""
    path = onnx.utils.Extractor(model).extract_model(list(DENOISER_PATHS[output]), [output])
    if not any(node.op_type in ("MatMul", "Gemm") for node in path.graph.node):
        raise ExportError(f"the denoiser's {output} path has no MatMul or Gemm: not the graph the int8 export was "
                          "made for")
    return {node.name for node in path.graph.node} | {f"{node.name}_MatMul" for node in path.graph.node
                                                       if node.op_type == "Gemm"}


def _float32_weights(model: onnx.ModelProto) -> None:
    """Fold every Cast of a float16 initializer to float32 (compact_weights' casts) into a float32 initializer."""
    graph = model.graph
    halves = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT16}
    nodes, added = [], []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in halves and helper.get_attribute_value(node.attribute[0]) \
                == TensorProto.FLOAT:
            added.append(numpy_helper.from_array(numpy_helper.to_array(halves[node.input[0]]).astype(np.float32),
                                                 node.output[0]))
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used] + added
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def int8_entries() -> dict[str, dict[str, Any]]:
    """The manifest's entries for the int8 denoiser (the denoiser's inputs, outputs and axes) and its face's path."""
    return {DENOISER_INT8_GRAPH: {
        "file": DENOISER_INT8_FILE, "inputs": list(DENOISER_INPUTS), "outputs": list(DENOISER_OUTPUTS),
        "dynamic_axes": DENOISER_AXES, "quantised_from": DENOISER_FILE,
        "quantisation": "dynamic: the face path's MatMul and Gemm weights int8 per output channel, 7 bits; "
                        f"activations uint8 per call; the {HEAD_OUTPUT} path float",
    }, DENOISER_INT8_FACE_GRAPH: denoiser_path_entries()[DENOISER_PATH_GRAPHS[FACE_OUTPUT]] | {
        "file": DENOISER_INT8_FACE_FILE, "cut_from": DENOISER_INT8_FILE,
    }}


def verify_int8(export_dir: Path, cfg: ModelConfig, B: int = 3, N: int = 11) -> dict[str, float]:
    """Max abs differences in ONNX Runtime on random inputs (INT8_BOUNDS): the int8 denoiser's outputs vs the
    denoiser's, by output, and its face's path cut from it vs its own face output (INT8_CUT)."""
    feeds = denoiser_inputs(cfg, B, N, seed=7)

    def run(file: str, outputs: tuple[str, ...]) -> list[np.ndarray]:
        session = ort.InferenceSession(str(export_dir / file), providers=["CPUExecutionProvider"])
        return session.run(list(outputs), {n: feeds[n] for n in (i.name for i in session.get_inputs())})

    ref, whole = run(DENOISER_FILE, DENOISER_OUTPUTS), run(DENOISER_INT8_FILE, DENOISER_OUTPUTS)
    errors = {output: float(np.abs(a - b).max()) for output, a, b in zip(DENOISER_OUTPUTS, ref, whole, strict=True)}
    cut = run(DENOISER_INT8_FACE_FILE, (FACE_OUTPUT,))[0]
    errors[INT8_CUT] = float(np.abs(cut - whole[DENOISER_OUTPUTS.index(FACE_OUTPUT)]).max())
    return errors


def denoiser_path_entries() -> dict[str, dict[str, Any]]:
    """The manifest's entries for the denoiser's path graphs."""
    return {DENOISER_PATH_GRAPHS[output]: {
        "file": DENOISER_PATH_FILES[output], "inputs": list(inputs), "outputs": [output], "cut_from": DENOISER_FILE,
        "dynamic_axes": {n: a for n, a in DENOISER_AXES.items() if n in (*inputs, output)},
    } for output, inputs in DENOISER_PATHS.items()}


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


def replace_problem(out_dir: Path) -> str | None:
    """Why an export must not replace what is at ``out_dir`` (None: nothing is there, an empty folder or an export,
    whole or broken): replacing it moves it aside and deletes it, which must never take a user's own files."""
    if not os.path.lexists(out_dir):
        return None
    # `-o .`, `-o ..`, `-o /`, `-o ~` from inside it: the export would take the folder the user is working in (and
    # every folder above it) away from under them, export or not, and the temporary sibling of `.` or `/` has no name
    # compared with every link resolved: a link to the current folder (or to one of its parents) is the same folder
    where, cwd = Path(os.path.realpath(out_dir)), Path(os.path.realpath(os.getcwd()))
    if where == cwd:
        return "it is the current folder"
    if where in cwd.parents:
        return "it holds the current folder"
    if out_dir.is_symlink():
        return "it is a symbolic link"
    if not out_dir.is_dir():
        return "it exists and is not a folder"
    try:
        names = {p.name for p in out_dir.iterdir()}
    except OSError as exc:
        return f"its contents cannot be listed ({exc.strerror or exc})"
    if MANIFEST_FILE in names or names <= {*GRAPH_FILES, CONSTANTS_FILE}:
        return None
    others = sorted(names - {*GRAPH_FILES, CONSTANTS_FILE})
    return f"it is not an export: it holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}"


def _new_folder_near(out_dir: Path) -> Path:
    """A folder name to suggest instead of ``out_dir``: a new one inside it when it is a folder (the user meant to put
    the export there), else beside it."""
    where, cwd = Path(os.path.realpath(out_dir)), Path(os.path.realpath(os.getcwd()))
    if where == cwd or where in cwd.parents:
        base = Path(".")  # `-o .` or `-o /`: a new folder here, not beside the root or the folder above
    elif out_dir.is_dir() and not out_dir.is_symlink():
        base = out_dir
    else:
        base = out_dir.parent
    suggestion = base / "ksdiff-export"
    n = 2
    while os.path.lexists(suggestion):
        suggestion, n = base / f"ksdiff-export-{n}", n + 1
    return suggestion


def export_model(checkpoint: str | Path, out_dir: str | Path = DEFAULT_EXPORT_DIR,
                 progress: bool = True) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir`` (replacing any export there), verified against torch.

    Idempotent: the same checkpoint and versions give the same files. Atomic: everything is written
    and checked in a temporary sibling directory first; only a complete export is renamed into place.
    """
    checkpoint, out_dir = checkpoint_file(checkpoint), Path(out_dir)
    problem = replace_problem(out_dir)
    if problem is not None:
        # never "remove it first": that is bad advice for `.`, a home folder or a folder of the user's own files
        raise ExportError(f"will not export to {out_dir}: {problem}; an export replaces its whole folder, so give a "
                          f"new folder (or an earlier export) instead, e.g. -o {_new_folder_near(out_dir)}")
    if out_dir.name in ("", ".", ".."):
        # `a/b/..`: the folder it is, as the system resolves it (through links), so that the temporary and old
        # siblings are named after a name of its own (normpath would make `link/..` the current folder instead)
        out_dir = Path(os.path.realpath(out_dir))
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    old = out_dir.parent / f".{out_dir.name}.old-{tag}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        errors = _write_export(checkpoint, tmp, progress)
        _swap_into_place(tmp, out_dir, old)
    except OSError as exc:  # a read-only or full disk, a file where a folder goes: what was there is kept
        where = f" ({exc.filename})" if exc.filename else ""
        raise ExportError(f"cannot write the export to {out_dir}: {exc.strerror or exc}{where}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    _, _, manifest = load_export(out_dir)
    log.info("exported %s -> %s (max abs error vs torch: %s)", checkpoint, out_dir,
             ", ".join(f"{g} {e:.2e}" for g, e in errors.items()))
    return ExportResult(out_dir, manifest, errors)


def ensure_export(checkpoint: str | Path, export_dir: str | Path, progress: bool = False) -> Path:
    """An export of ``checkpoint`` in ``export_dir``: reused when valid and made from the same checkpoint
    (sha256), otherwise (re-)exported."""
    checkpoint, export_dir = Path(checkpoint), Path(export_dir)
    if export_of(checkpoint, export_dir):
        log.debug("reusing export %s", export_dir)
        return export_dir
    log.info("exporting %s to %s (once; later runs reuse it)", checkpoint, export_dir)
    export_model(checkpoint, export_dir, progress=progress)
    return export_dir


def compact_weights(path: Path) -> int:
    """Store the graph's float32 weights that are exactly float16 (all of a float16 checkpoint's) as float16
    initializers followed by a Cast to float32; returns the bytes saved. ONNX Runtime folds the casts at
    load, so inference sees the very same float32 numbers."""
    model = onnx.load(str(path))
    graph = model.graph
    casts, kept, saved = [], [], 0
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(init)
            half = value.astype(np.float16)
            if value.size >= 16 and np.array_equal(half.astype(np.float32), value):
                kept.append(numpy_helper.from_array(half, f"{init.name}__fp16"))
                casts.append(helper.make_node("Cast", [f"{init.name}__fp16"], [init.name], to=TensorProto.FLOAT,
                                              name=f"{init.name}__cast"))
                saved += value.nbytes - half.nbytes
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.save(model, str(path))
    return saved
