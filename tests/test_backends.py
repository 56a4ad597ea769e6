"""Backends: ONNX export, ONNX Runtime parity with torch, backend selection, the TensorRT engine cache.

The GPU tests (torch-cuda, ONNX Runtime's CUDA provider, CUDA graphs, TensorRT) are marked ``gpu``
and skip themselves where there is no CUDA GPU or no TensorRT.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ksdiff_runtime import cli
from ksdiff_runtime.backends import BACKEND_NAMES, BackendError, load_backend
from ksdiff_runtime.backends import export as export_mod
from ksdiff_runtime.backends.artifact import EXPORT_FORMAT, ExportError, load_export
from ksdiff_runtime.backends.export import denoiser_inputs, ensure_export, export_model
from ksdiff_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from ksdiff_runtime.backends.tensorrt_backend import (
    BuildSettings,
    GpuInfo,
    TensorRTBackend,
    engine_key,
    engine_paths,
    key_fields,
    plan_engine,
    profile_shapes,
    timing_cache_path,
    write_sidecar,
)
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.engine.sampling import Guidance, WindowBatch, sample_windows
from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT, load_model, save_checkpoint
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.io import (
    CONDITIONER_INPUTS,
    CONDITIONER_OUTPUTS,
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    DENOISER_PATHS,
    STREAM_CONDITIONER_INPUTS,
    STREAM_CONDITIONER_OUTPUTS,
    STYLE_ENCODER_INPUTS,
    STYLE_ENCODER_OUTPUTS,
)
from ksdiff_runtime.model.ksdiff import KSDiff

TINY_MODEL = dict(d_model=32, n_heads=2, denoiser_layers=1, kel_hidden=16, style_dim=8, n_msdc_blocks=1)
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
# a stated bound, float32 both sides: measured ~1e-6 on the shipped checkpoint after 4 DDIM steps
PARITY_TOL = 1e-3
GRAPH_TOL = 1e-4
# int8 weights vs float32, one denoising step of 4 windows: measured 0.017 (blendshapes) on the shipped checkpoint
# (random inputs); the head's path stays float
INT8_MOTION_TOL = 0.1


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # default export/engine caches go to a temp dir, never the user's ~/.cache
    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped checkpoint exported once for the module (about 2 s)."""
    return export_model(DEFAULT_CHECKPOINT, tmp_path_factory.mktemp("export") / "ksdiff", progress=False).path


@pytest.fixture(scope="module")
def shipped_torch() -> TorchBackend:
    return TorchBackend(load_model(DEFAULT_CHECKPOINT))


def window_batch(cfg: ModelConfig, B: int, N: int, seed: int = 0, with_text: bool = False,
                 with_style: bool = False) -> WindowBatch:
    rng = np.random.default_rng(seed)
    S = cfg.encoder_context_frames + N + cfg.lookahead_frames
    C = cfg.motion_context_frames
    known = np.ones((B, C), np.float32)
    known[0, : C // 2] = 0.0  # the first stream has just started: half its context is before the clip
    return WindowBatch(
        feats=rng.standard_normal((B, S, cfg.feature_dim)).astype(np.float32),
        prosody=rng.standard_normal((B, S, 2)).astype(np.float32),
        prev_expr=rng.random((B, C, cfg.expr_dim)).astype(np.float32),
        prev_pose=(0.1 * rng.standard_normal((B, C, cfg.pose_dim))).astype(np.float32),
        known=known,
        noise=rng.standard_normal((B, N, cfg.expr_dim + cfg.pose_dim)).astype(np.float32),
        style=rng.standard_normal((B, cfg.style_dim)).astype(np.float32) if with_style else None,
        text=rng.integers(1, cfg.text_vocab, (B, 7)) if with_text else None,
        text_keep=(np.arange(B) % 2 == 0).astype(np.float32) if with_text else None,
    )


def max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def save_tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(path, KSDiff(ModelConfig(**TINY_MODEL)).eval(), half=True)
    return path


# --- export ------------------------------------------------------------------------------------
def test_manifest_describes_the_export(shipped_export: Path):
    cfg, constants, manifest = load_export(shipped_export)
    model = load_model(DEFAULT_CHECKPOINT)
    assert manifest["format"] == EXPORT_FORMAT and manifest["opset"] == 17 and manifest["dtype"].startswith("float32")
    assert cfg == model.cfg
    assert ModelConfig.from_dict(manifest["config"]) == model.cfg
    assert manifest["graphs"]["conditioner"]["inputs"] == list(CONDITIONER_INPUTS)
    assert manifest["graphs"]["conditioner"]["outputs"] == list(CONDITIONER_OUTPUTS)
    assert manifest["graphs"]["denoiser"]["inputs"] == list(DENOISER_INPUTS)
    assert manifest["graphs"]["denoiser"]["outputs"] == list(DENOISER_OUTPUTS)
    assert manifest["graphs"]["stream_conditioner"]["inputs"] == list(STREAM_CONDITIONER_INPUTS)
    assert manifest["graphs"]["stream_conditioner"]["outputs"] == list(STREAM_CONDITIONER_OUTPUTS)
    state_shapes = {k: list(v) for k, v in cfg.stream_state_shapes().items()}
    assert manifest["graphs"]["stream_conditioner"]["state"] == state_shapes
    assert manifest["graphs"]["style_encoder"]["inputs"] == list(STYLE_ENCODER_INPUTS)
    assert manifest["graphs"]["style_encoder"]["outputs"] == list(STYLE_ENCODER_OUTPUTS)
    assert manifest["graphs"]["style_encoder"]["window_frames"] == cfg.style_clip_frames
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()
    for output, inputs in DENOISER_PATHS.items():  # each denoiser path cut from the denoiser, with its inputs
        entry = manifest["graphs"][f"denoiser_{output[3:]}"]
        assert entry["inputs"] == list(inputs) and entry["outputs"] == [output] and entry["cut_from"] == "denoiser.onnx"
    entry = manifest["graphs"]["denoiser_int8"]  # the denoiser quantised, with the denoiser's inputs and outputs
    assert entry["quantised_from"] == "denoiser.onnx"
    assert (entry["inputs"], entry["outputs"]) == (list(DENOISER_INPUTS), list(DENOISER_OUTPUTS))
    entry = manifest["graphs"]["denoiser_expr_int8"]  # its face's path, cut from it
    assert (entry["inputs"], entry["outputs"]) == (list(DENOISER_PATHS["x0_expr"]), ["x0_expr"])
    assert entry["cut_from"] == "denoiser_int8.onnx"
    int8_errors = manifest["verify"]["int8_max_abs_error_vs_float"]  # the face quantised, the head float
    assert set(int8_errors) == set(export_mod.INT8_BOUNDS)  # each output, and the face's cut path
    assert 0 < int8_errors["x0_expr"] < export_mod.INT8_VERIFY_TOLERANCE and int8_errors["x0_pose"] < GRAPH_TOL
    assert int8_errors[export_mod.INT8_CUT] < GRAPH_TOL
    files = ("conditioner.onnx", "denoiser.onnx", "conditioner_stream.onnx", "style_encoder.onnx",
             "denoiser_expr.onnx", "denoiser_pose.onnx", "denoiser_int8.onnx", "denoiser_expr_int8.onnx")
    graphs = b"".join((shipped_export / f).read_bytes() for f in files)
    assert manifest["model_hash"] == hashlib.sha256(graphs).hexdigest()
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["onnx"]
    for graph in ("conditioner", "denoiser", "stream_conditioner", "style_encoder", "denoiser_expr", "denoiser_pose"):
        assert manifest["verify"]["max_abs_error"][graph] < GRAPH_TOL
    # constants round-trip (float32 from the float16 checkpoint)
    ref = TorchBackend(model).constants
    for name in ("expr_mean", "expr_std", "pose_mean", "pose_std", "style_null", "alpha_bar"):
        np.testing.assert_array_equal(getattr(constants, name), getattr(ref, name))


def test_float16_weights_are_stored_as_float16_and_give_the_same_numbers(tiny_checkpoint: Path, tmp_path: Path):
    """compact_weights halves the files and changes nothing ONNX Runtime computes: the same float32
    numbers reach the graph (the weights of a float16 checkpoint are exact in float16)."""
    import onnx

    out = export_model(tiny_checkpoint, tmp_path / "exp", progress=False).path
    plain = tmp_path / "plain.onnx"
    compact = out / "denoiser.onnx"
    model = onnx.load(str(compact))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # undo the compaction by hand: the float16 initializers back to float32, the casts dropped
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16:
            value = onnx.numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(onnx.numpy_helper.from_array(value, init.name.removesuffix("__fp16")))
    kept = [n for n in model.graph.node if not n.name.endswith("__cast")]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(plain))
    assert compact.stat().st_size < 0.7 * plain.stat().st_size  # (a tiny model: the graph itself weighs in)
    cfg, _, _ = load_export(out)
    feeds = denoiser_inputs(cfg, 2, 9)
    a = ort.InferenceSession(str(compact), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_export_is_idempotent_and_atomic(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "exp"
    first = export_model(tiny_checkpoint, out, progress=False)
    second = export_model(tiny_checkpoint, out, progress=False)  # over an existing export
    assert first.manifest == second.manifest  # byte-identical graphs: same model_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp or old dirs left behind

    # a crash in the middle of an export leaves the previous export untouched and no debris
    def crash(checkpoint, tmp, progress):
        (tmp / "conditioner.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "_write_export", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_checkpoint, out, progress=False)
    assert load_export(out)[2] == first.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_load_export_errors_name_the_problem(shipped_export: Path, tmp_path: Path):
    with pytest.raises(ExportError, match="does not exist"):
        load_export(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match=r"no manifest\.json"):
        load_export(empty)

    def copy(name: str) -> Path:
        return Path(shutil.copytree(shipped_export, tmp_path / name))

    bad = copy("corrupt-manifest")
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"manifest\.json is corrupt"):
        load_export(bad)
    other = copy("other-format")
    (other / "manifest.json").write_text(json.dumps({"format": "someone-elses-export", "version": 1}))
    with pytest.raises(ExportError, match="someone-elses-export"):
        load_export(other)
    newer = copy("newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps(manifest | {"version": 99}))
    with pytest.raises(ExportError, match="version 99"):
        load_export(newer)
    missing = copy("missing")
    (missing / "denoiser.onnx").unlink()
    with pytest.raises(ExportError, match=r"incomplete: missing denoiser\.onnx"):
        load_export(missing)
    no_stream = copy("no_stream")  # an export of version 1 had no stream conditioner
    (no_stream / "conditioner_stream.onnx").unlink()
    with pytest.raises(ExportError, match=r"incomplete: missing conditioner_stream\.onnx"):
        load_export(no_stream)
    truncated = copy("truncated")
    data = (truncated / "conditioner.onnx").read_bytes()
    (truncated / "conditioner.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="model_hash"):
        load_export(truncated)
    with pytest.raises(BackendError, match="model_hash"):  # ExportError is a BackendError
        OnnxRuntimeBackend(truncated)


def test_export_cli_prints_the_parity_errors(tiny_checkpoint: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli-export"
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "conditioner: ONNX Runtime vs torch max abs error" in printed and "denoiser:" in printed
    assert load_export(out)[2]["checkpoint"]["name"] == tiny_checkpoint.name
    assert cli.main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- ONNX Runtime vs torch -------------------------------------------------------------------------
@pytest.mark.parametrize(("B", "guidance", "extras"), [
    (1, None, {}),
    (5, Guidance(audio=2.0, style=1.5, text=1.2), {"with_text": True, "with_style": True}),
])
def test_onnxruntime_matches_torch_through_the_sampler(shipped_export, shipped_torch, B, guidance, extras):
    ort_backend = OnnxRuntimeBackend(shipped_export, threads=2)
    assert ort_backend.name == "onnxruntime-cpu"
    assert ort_backend.constants.cfg == shipped_torch.constants.cfg
    N = 13  # the export traced 32 new frames, the verification 11
    batch = window_batch(shipped_torch.constants.cfg, B, N, seed=B, **extras)
    ref = sample_windows(shipped_torch, batch, steps=4, guidance=guidance)
    got = sample_windows(ort_backend, batch, steps=4, guidance=guidance)
    assert got.expr.shape == (B, N, 52) and got.pose.shape == (B, N, 3)
    errors = {name: max_err(getattr(ref, name), getattr(got, name)) for name in ("expr", "pose", "key_expr")}
    print(f"B={B}: ONNX Runtime vs torch max abs error after 4 DDIM steps: {errors}")
    assert errors["expr"] < PARITY_TOL, errors
    assert errors["pose"] < PARITY_TOL, errors
    assert errors["key_expr"] < PARITY_TOL, errors


def test_onnxruntime_accepts_any_dtype_and_layout(shipped_export, shipped_torch):
    backend = OnnxRuntimeBackend(shipped_export)
    cfg = backend.cfg
    feeds = export_mod.denoiser_inputs(cfg, 2, 5, seed=3)
    ref = shipped_torch.denoise(feeds)
    # float64, int32 and non-contiguous views: the backend converts instead of failing
    messy = {k: (v.astype(np.int32) if v.dtype == np.int64 else np.asfortranarray(v.astype(np.float64)))
             for k, v in feeds.items()}
    got = backend.denoise(messy)
    for name in DENOISER_OUTPUTS:
        assert got[name].dtype == np.float32
        assert max_err(ref[name], got[name]) < GRAPH_TOL


def test_onnxruntime_cpu_threads_do_not_spin_between_calls(shipped_export):
    """Spinning intra-op threads burnt a third of the CPU for no speed (docs/BACKENDS.md): CPU a VTuber's
    OBS and game, and the runtime's front-ends, need. Every CPU session turns it off."""
    backend = OnnxRuntimeBackend(shipped_export)
    for session in (backend._conditioner, backend._denoiser, backend._stream_conditioner):
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- int8 -------------------------------------------------------------------------------------------
def weighted_matmuls(path: Path, prefix: str = "") -> tuple[int, int, int]:
    """(MatMuls and Gemms whose weight is a float initializer or a cast of one, MatMulIntegers, int8 weight
    matrices) of a graph, of the nodes whose name starts with ``prefix`` (the model's module path)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in inits}
    nodes = [n for n in model.graph.node if n.name.startswith(prefix)]
    weighted = sum(1 for n in nodes if n.op_type in ("MatMul", "Gemm") and (n.input[1] in inits or n.input[1] in casts))
    integer = [n for n in nodes if n.op_type == "MatMulInteger"]
    matrices = sum(1 for n in integer if inits.get(n.input[1]) is not None
                   and inits[n.input[1]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[1]].dims) == 2)
    return weighted, len(integer), matrices


def test_the_int8_denoiser_quantises_the_faces_weighted_matmuls_and_leaves_the_heads_float(shipped_export: Path):
    face, head = "/den_expr/", "/den_pose/"  # the model's two denoisers (model/ksdiff.py)
    face_matmuls, _, _ = weighted_matmuls(shipped_export / "denoiser.onnx", face)
    head_matmuls, _, _ = weighted_matmuls(shipped_export / "denoiser.onnx", head)
    left, integer, matrices = weighted_matmuls(shipped_export / "denoiser_int8.onnx", face)
    # the face's: none left float; each an integer product of an int8 matrix (its Gemm layers, the style-and-step
    # projections, too)
    assert left == 0 and integer == matrices == face_matmuls > 10, (face_matmuls, left, integer, matrices)
    # the head's: every one float, as in the float graph (quantised, the head jittered over DDIM steps)
    assert weighted_matmuls(shipped_export / "denoiser_int8.onnx", head) == (head_matmuls, 0, 0) and head_matmuls > 10
    # the weights left float stay float16 + Cast, as in the float graph: the file is smaller, not larger
    assert (shipped_export / "denoiser_int8.onnx").stat().st_size < (shipped_export / "denoiser.onnx").stat().st_size


def test_the_shipped_int8_denoiser_is_quantised_from_its_denoiser(tmp_path: Path):
    """Quantising is deterministic: the shipped int8 denoiser is exactly what the export makes of the shipped
    denoiser now (a stale one, left from another denoiser, would differ)."""
    from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT

    shutil.copy(SHIPPED_EXPORT / "denoiser.onnx", tmp_path / "denoiser.onnx")
    export_mod.write_int8_graphs(tmp_path)
    for file in ("denoiser_int8.onnx", "denoiser_expr_int8.onnx"):
        assert (tmp_path / file).read_bytes() == (SHIPPED_EXPORT / file).read_bytes(), file
    cfg, _, manifest = load_export(SHIPPED_EXPORT)
    errors, shipped = export_mod.verify_int8(SHIPPED_EXPORT, cfg), manifest["verify"]["int8_max_abs_error_vs_float"]
    assert set(errors) == set(shipped) == set(export_mod.INT8_BOUNDS)
    # the face's error is the int8 weights' (any CPU); the head's only rounding, which differs between CPUs' kernels
    assert errors["x0_expr"] == pytest.approx(shipped["x0_expr"], rel=1e-3)
    assert 0 < errors["x0_expr"] < export_mod.INT8_VERIFY_TOLERANCE and errors["x0_pose"] < GRAPH_TOL
    assert errors[export_mod.INT8_CUT] < GRAPH_TOL  # the face's path cut from the int8 graph gives its numbers


def test_int8_backend_runs_the_int8_graphs_close_to_float(shipped_export: Path, monkeypatch: pytest.MonkeyPatch):
    from ksdiff_runtime.backends import onnxruntime_backend as orb

    monkeypatch.setattr(orb.os, "cpu_count", lambda: 2)  # a CPU that runs a line's paths at once
    float_backend = OnnxRuntimeBackend(shipped_export, threads=1)
    int8_backend = OnnxRuntimeBackend(shipped_export, threads=1, int8=True)
    assert (float_backend.precision, int8_backend.precision) == ("float32", "int8")
    assert Path(int8_backend._denoiser._model_path).name == "denoiser_int8.onnx"
    assert Path(int8_backend._stream_conditioner._model_path).name == "conditioner_stream.onnx"  # float: not faster
    # its paths, run at once for a line's window: the int8 face's, cut from the int8 graph, and the float head's
    paths = {output: Path(session._model_path).name for output, session in int8_backend._paths.items()}
    assert paths == {"x0_expr": "denoiser_expr_int8.onnx", "x0_pose": "denoiser_pose.onnx"}
    cfg = float_backend.constants.cfg
    batch = window_batch(cfg, 4, 16, seed=11, with_style=True)
    ref = sample_windows(float_backend, batch, steps=1)
    got = sample_windows(int8_backend, batch, steps=1)
    again = sample_windows(int8_backend, batch, steps=1)
    for name in ("expr", "pose"):
        np.testing.assert_array_equal(getattr(got, name), getattr(again, name))  # deterministic
        err = max_err(getattr(ref, name), getattr(got, name))
        print(f"int8 vs float32, {name}: max abs {err:.2g}")
        if name == "expr":  # int8 weights move the face by hundredths; the held-out figures do not move
            assert 1e-6 < err < INT8_MOTION_TOL, (name, err)
        else:  # the head's path is float in the int8 graph: the same head, to rounding
            assert err < GRAPH_TOL, (name, err)
    # over four steps too, where a quantised head's error had added up to jitter (lines, the quality preset)
    head = max_err(*(sample_windows(b, batch, steps=4).pose for b in (float_backend, int8_backend)))
    assert head < GRAPH_TOL, head


def test_int8_is_for_onnxruntime_on_the_cpu(shipped_export: Path, tiny_checkpoint: Path):
    with pytest.raises(BackendError, match="int8 denoiser is for ONNX Runtime on the CPU"):
        OnnxRuntimeBackend(shipped_export, device="cuda", int8=True)
    assert load_backend("onnxruntime-cpu", int8=True).precision == "int8"
    assert load_backend("onnxruntime-cpu").precision == "float32"
    # a backend without int8 graphs runs float when asked for int8 (serve asks on every backend)
    assert load_backend("torch-cpu", tiny_checkpoint, int8=True).name == "torch-cpu"


# --- load_backend ----------------------------------------------------------------------------------
def test_unknown_backend_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'tensorflow'.*onnxruntime-cpu.*tensorrt"):
        load_backend("tensorflow")
    assert set(BACKEND_NAMES) >= {"auto", "torch", "onnxruntime", "tensorrt"}


@pytest.mark.skipif(HAS_CUDA or HAS_TRT, reason="checks the choice on a machine without CUDA and TensorRT")
def test_auto_picks_onnxruntime_cpu_here_and_says_why(tiny_checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ksdiff_runtime.backends")
    backend = load_backend("auto", tiny_checkpoint, export_dir=tmp_path / "exp")
    assert backend.name == "onnxruntime-cpu"
    messages = [r.getMessage() for r in caplog.records if r.name == "ksdiff_runtime.backends"]
    assert any("tensorrt" in m and "skipped" in m and "not installed" in m for m in messages), messages
    assert any("torch-cuda" in m and "skipped" in m and "no CUDA GPU" in m for m in messages), messages
    assert any(m == "backend: onnxruntime-cpu (auto)" for m in messages), messages
    # the aliases resolve to the CPU variants here
    assert load_backend("torch", tiny_checkpoint).name == "torch-cpu"
    assert load_backend("onnxruntime", tiny_checkpoint, export_dir=tmp_path / "exp").name == "onnxruntime-cpu"


def test_auto_falls_back_to_torch_cpu_when_onnxruntime_fails(tiny_checkpoint, tmp_path, caplog, monkeypatch):
    from ksdiff_runtime.backends import onnxruntime_backend

    def broken(*args, **kwargs):
        raise BackendError("onnxruntime-cpu: ONNX Runtime cannot load the graphs (simulated)")

    monkeypatch.setattr(onnxruntime_backend, "OnnxRuntimeBackend", broken)
    caplog.set_level(logging.INFO, logger="ksdiff_runtime.backends")
    backend = load_backend("auto", tiny_checkpoint, export_dir=tmp_path / "exp")
    assert backend.name == ("torch-cuda" if HAS_CUDA else "torch-cpu")
    if not HAS_CUDA:
        assert any(r.levelno == logging.WARNING and "simulated" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_tensorrt_without_tensorrt_is_a_clear_error(tiny_checkpoint, tmp_path, caplog):
    with pytest.raises(BackendError, match="tensorrt: the tensorrt Python package is not installed"):
        load_backend("tensorrt", tiny_checkpoint, export_dir=tmp_path / "exp")
    with pytest.raises(BackendError, match="tensorrt Python package is not installed"):
        TensorRTBackend(tmp_path / "exp")  # the class itself, too (the module imports fine)
    caplog.set_level(logging.INFO, logger="ksdiff_runtime.backends")
    backend = load_backend("tensorrt", tiny_checkpoint, export_dir=tmp_path / "exp", fallback=True)
    assert backend.name == ("torch-cuda" if HAS_CUDA else "onnxruntime-cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tensorrt" in w and "falling back to torch-cuda" in w for w in warnings), warnings


@pytest.mark.skipif(HAS_CUDA, reason="checks the errors on a machine without CUDA")
def test_gpu_backends_without_a_gpu_are_clear_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(BackendError, match="torch-cuda: torch sees no CUDA GPU"):
        load_backend("torch-cuda", tiny_checkpoint)

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match="no CUDAExecutionProvider"):
            load_backend("onnxruntime-cuda", tiny_checkpoint, export_dir=tmp_path / "exp")


def test_export_is_reused_and_redone_when_the_checkpoint_changes(tmp_path, monkeypatch):
    ckpt = save_tiny(tmp_path / "model.pt", seed=1)
    exp = tmp_path / "exp"
    backend = load_backend("onnxruntime-cpu", ckpt, export_dir=exp)
    first = load_export(exp)[2]

    calls = []
    real_export = export_mod.export_model
    monkeypatch.setattr(export_mod, "export_model", lambda *a, **k: calls.append(a) or real_export(*a, **k))
    load_backend("onnxruntime-cpu", ckpt, export_dir=exp)
    assert calls == []  # same checkpoint: reused

    save_tiny(ckpt, seed=2)  # new weights under the same path
    retrained = load_backend("onnxruntime-cpu", ckpt, export_dir=exp)
    assert len(calls) == 1
    second = load_export(exp)[2]
    assert second["checkpoint"]["sha256"] != first["checkpoint"]["sha256"]
    assert second["model_hash"] != first["model_hash"]
    feeds = export_mod.denoiser_inputs(backend.cfg, 1, 4)
    assert max_err(backend.denoise(feeds)["x0_expr"], retrained.denoise(feeds)["x0_expr"]) > 1e-3

    (exp / "manifest.json").write_text("garbage")  # a broken export is replaced, not fatal
    ensure_export(ckpt, exp)
    assert len(calls) == 2 and load_export(exp)[2]["model_hash"] == second["model_hash"]


def test_default_export_dir_is_per_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(tmp_path / "c"))
    a, b = save_tiny(tmp_path / "a.pt", seed=1), save_tiny(tmp_path / "b.pt", seed=2)
    backend = load_backend("onnxruntime-cpu", a)
    exports = list((tmp_path / "c" / "exports").iterdir())
    assert [p.name for p in exports] == [hashlib.sha256(a.read_bytes()).hexdigest()[:16]]
    assert backend.export_dir == exports[0]
    load_backend("onnxruntime-cpu", b)
    assert len(list((tmp_path / "c" / "exports").iterdir())) == 2


def test_a_damaged_shipped_export_is_said_and_the_one_in_the_cache_runs(tmp_path, monkeypatch, caplog):
    """The bundled checkpoint whose shipped export fails its checks (a damaged install, an edited file) runs
    from the cache's export, with a warning naming the problem; an intact one runs without a word."""
    from ksdiff_runtime.backends import select
    from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT
    from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(tmp_path / "cache"))
    cached = select.default_export_dir(DEFAULT_CHECKPOINT)
    shutil.copytree(SHIPPED_EXPORT, cached)  # a valid export of the bundled checkpoint, as an earlier fallback made
    shipped = tmp_path / "shipped"
    shutil.copytree(SHIPPED_EXPORT, shipped)
    monkeypatch.setattr(select, "SHIPPED_EXPORT", shipped)
    with caplog.at_level(logging.WARNING, "ksdiff_runtime.backends"):
        assert load_backend("onnxruntime-cpu", DEFAULT_CHECKPOINT, threads=1).export_dir == shipped
    assert "shipped export" not in caplog.text

    graph = shipped / "denoiser.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1  # one bit of the graph's last weight
    graph.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "ksdiff_runtime.backends"):
        backend = load_backend("onnxruntime-cpu", DEFAULT_CHECKPOINT, threads=1)
    assert backend.export_dir == cached
    warned = [r.getMessage() for r in caplog.records if "shipped export cannot be used" in r.getMessage()]
    assert len(warned) == 1 and "model_hash" in warned[0] and str(shipped) in warned[0] and str(cached) in warned[0]


# --- TensorRT: the plain-Python parts ---------------------------------------------------------------
GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


def test_profile_shapes_cover_every_input_and_the_windows_used():
    cfg = ModelConfig()
    s = BuildSettings.for_config(cfg)
    assert s.max_batch == 256 and s.new_frames == (1, cfg.train_window_frames, 4 * cfg.train_window_frames)
    for graph, names in (("conditioner", CONDITIONER_INPUTS), ("denoiser", DENOISER_INPUTS),
                         ("stream_conditioner", STREAM_CONDITIONER_INPUTS)):
        shapes = profile_shapes(cfg, graph, s)
        assert set(shapes) == set(names)
        for name, (lo, opt, hi) in shapes.items():
            assert len(lo) == len(opt) == len(hi), name
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), (name, lo, opt, hi)
    cond, den = profile_shapes(cfg, "conditioner", s), profile_shapes(cfg, "denoiser", s)
    E, L, C, N = cfg.encoder_context_frames, cfg.lookahead_frames, cfg.motion_context_frames, cfg.train_window_frames
    assert cond["feats"][1] == (4, E + N + L, cfg.feature_dim)  # opt: an offline window, a few CFG variants
    assert cond["feats"][2] == (256, E + 4 * N + L, cfg.feature_dim)
    assert cond["text"][2] == (256, cfg.max_text_tokens) and cond["n_new"][0] == (1,)
    assert cond["prev_expr"][0] == (1, C, 52) and cond["prev_expr"][2] == (256, C, 52)
    assert den["x_expr"][0] == (1, C + 1, 52) and den["f_e"][2] == (256, C + 4 * N, cfg.d_model)
    assert den["t"] == ((1,), (4,), (256,)) and den["style"][2] == (256, cfg.style_dim)
    # the stream conditioner: every live hop the engine makes falls inside its profile (a hop of each
    # preset, and its first hop, which commits the windowed span before the stream's first frame)
    stream = profile_shapes(cfg, "stream_conditioner", s)
    assert stream["n_commit"][1] == (1,) and stream["s_h"][2] == (256, *cfg.stream_state_shapes()["s_h"])
    for preset in PRESETS.values():
        H, W = preset.hop_frames, preset.window_frames
        for K in (H, E + H + L):
            for name, shape in (("n_commit", (K,)), ("n_new", (W,)), ("feats", (1, K + W - H, cfg.feature_dim))):
                lo, _, hi = stream[name]
                assert all(a <= x <= b for a, x, b in zip(lo, shape, hi, strict=True)), (preset.name, name, shape)
    with pytest.raises(ValueError, match="unknown graph"):
        profile_shapes(cfg, "vocoder", s)
    with pytest.raises(ValueError, match="new_frames"):
        BuildSettings(new_frames=(8, 4, 16))
    with pytest.raises(ValueError, match="opt_batch"):
        BuildSettings(max_batch=2, opt_batch=4)


def test_engine_key_changes_with_everything_an_engine_depends_on():
    s = BuildSettings()
    base = key_fields("denoiser", GPU, "10.3.0", "ab" * 32, s)
    key = engine_key(base)
    assert key == engine_key(key_fields("denoiser", GPU, "10.3.0", "ab" * 32, BuildSettings()))  # deterministic
    variants = [
        key_fields("conditioner", GPU, "10.3.0", "ab" * 32, s),
        key_fields("denoiser", GpuInfo("NVIDIA GeForce RTX 4090", "8.9"), "10.3.0", "ab" * 32, s),
        key_fields("denoiser", GpuInfo(GPU.name, "8.0"), "10.3.0", "ab" * 32, s),
        key_fields("denoiser", GPU, "10.4.0", "ab" * 32, s),
        key_fields("denoiser", GPU, "10.3.0", "cd" * 32, s),
        key_fields("denoiser", GPU, "10.3.0", "ab" * 32, BuildSettings(fp16=False)),
        key_fields("denoiser", GPU, "10.3.0", "ab" * 32, BuildSettings(max_batch=64)),
        key_fields("denoiser", GPU, "10.3.0", "ab" * 32, BuildSettings(new_frames=(1, 8, 64))),
    ]
    keys = {engine_key(f) for f in variants}
    assert len(keys) == len(variants) and key not in keys
    engine, sidecar = engine_paths(Path("/cache"), base)
    assert engine == Path(f"/cache/denoiser-{key[:16]}.engine") and sidecar.suffix == ".json"
    # timings are shared across graphs and models, not across GPUs or TensorRT versions
    t = timing_cache_path(Path("/cache"), GPU, "10.3.0")
    assert t == timing_cache_path(Path("/cache"), GpuInfo(GPU.name, GPU.compute_capability), "10.3.0")
    assert t != timing_cache_path(Path("/cache"), GPU, "10.4.0")
    assert t != timing_cache_path(Path("/cache"), GpuInfo("NVIDIA L4", "8.9"), "10.3.0")


def test_engine_cache_rebuilds_missing_corrupt_foreign_and_stale_engines(tmp_path):
    fields = key_fields("conditioner", GPU, "10.3.0", "ab" * 32, BuildSettings())
    plan = plan_engine(tmp_path, fields)
    assert plan.build and "no cached engine" in plan.reason

    plan.engine.write_bytes(b"\x00serialized engine bytes")
    assert "no sidecar" in plan_engine(tmp_path, fields).reason
    write_sidecar(plan)
    cached = plan_engine(tmp_path, fields)
    assert not cached.build and cached.reason == "cached"
    assert plan_engine(tmp_path, fields, rebuild=True).build

    plan.engine.write_bytes(b"\x00serialized engine")  # truncated / overwritten
    assert "sha256" in plan_engine(tmp_path, fields).reason
    plan.engine.write_bytes(b"\x00serialized engine bytes")
    assert not plan_engine(tmp_path, fields).build

    # a sidecar recorded for another TensorRT version and GPU (an engine copied from elsewhere)
    meta = json.loads(plan.sidecar.read_text())
    meta["fields"] = meta["fields"] | {"tensorrt": "10.1.0", "gpu": "NVIDIA A10"}
    plan.sidecar.write_text(json.dumps(meta))
    stale = plan_engine(tmp_path, fields)
    assert stale.build and "gpu, tensorrt" in stale.reason and "stale or foreign" in stale.reason

    plan.sidecar.write_text("{truncated")
    assert "unreadable" in plan_engine(tmp_path, fields).reason
    plan.sidecar.write_text(json.dumps({"format": "other"}))
    assert "not a ksdiff-tensorrt-engine" in plan_engine(tmp_path, fields).reason


# --- GPU (skipped here) --------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_matches_torch_cpu(shipped_torch):
    gpu = load_backend("torch-cuda")
    batch = window_batch(shipped_torch.constants.cfg, 5, 13, with_text=True)
    g = Guidance(audio=2.0)
    ref, got = sample_windows(shipped_torch, batch, 4, g), sample_windows(gpu, batch, 4, g)
    assert max_err(ref.expr, got.expr) < 1e-3 and max_err(ref.pose, got.pose) < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replay_matches_eager():
    eager = TorchBackend(load_model(DEFAULT_CHECKPOINT), "cuda")
    graphed = TorchBackend(load_model(DEFAULT_CHECKPOINT), "cuda", cuda_graphs=True)
    cfg = eager.constants.cfg
    for B, N, seed in ((2, 32, 0), (2, 32, 1), (3, 7, 2), (2, 32, 3)):  # replays, a new shape, back again
        feeds = export_mod.denoiser_inputs(cfg, B, N, seed=seed)
        ref, got = eager.denoise(feeds), graphed.denoise(feeds)
        for name in DENOISER_OUTPUTS:
            assert max_err(ref[name], got[name]) < 1e-5
    assert len(graphed._graphs) == 2


@pytest.mark.gpu
@needs_cuda
def test_onnxruntime_cuda_matches_torch(shipped_export, shipped_torch):

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
    backend = OnnxRuntimeBackend(shipped_export, device="cuda")
    batch = window_batch(backend.cfg, 5, 13)
    ref, got = sample_windows(shipped_torch, batch, 4), sample_windows(backend, batch, 4)
    assert max_err(ref.expr, got.expr) < 1e-3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (pip install 'ksdiff-runtime[gpu]')")
def test_tensorrt_matches_torch_and_caches_its_engines(shipped_export, shipped_torch, tmp_path):
    backend = TensorRTBackend(shipped_export, cache_dir=tmp_path / "trt")
    assert len(list((tmp_path / "trt").glob("*.engine"))) == 2
    assert len(list((tmp_path / "trt").glob("timing-*.cache"))) == 1
    for B in (1, 5):
        batch = window_batch(backend.cfg, B, 13, seed=B)
        ref, got = sample_windows(shipped_torch, batch, 4), sample_windows(backend, batch, 4)
        # FP16 engines: a looser bound than float32 ONNX Runtime
        assert max_err(ref.expr, got.expr) < 5e-2 and max_err(ref.pose, got.pose) < 5e-2
    # a corrupt cached engine is rebuilt, not fatal
    for engine in (tmp_path / "trt").glob("*.engine"):
        engine.write_bytes(b"garbage")
    again = TensorRTBackend(shipped_export, cache_dir=tmp_path / "trt")
    assert again.denoise(export_mod.denoiser_inputs(backend.cfg, 2, 8))["x0_expr"].shape == (2, 16, 52)


def spy_on_paths(backend: OnnxRuntimeBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outputs the backend's denoiser path graphs are run for, as they run."""
    ran: list[str] = []
    for session in backend._paths.values():
        def spy(names, feeds, run=session.run):
            ran.extend(names)
            return run(names, feeds)

        monkeypatch.setattr(session, "run", spy)
    return ran


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize(("rows", "new_frames"), [(1, 32), (3, 32), (1, 8)])
def test_the_denoisers_paths_at_once_give_the_whole_graphs_numbers(shipped_export: Path, rows: int, new_frames: int,
                                                                   int8: bool, monkeypatch: pytest.MonkeyPatch):
    """On a CPU of several cores with one thread a call, a call of one row over a bake's window runs the expression
    and pose paths' graphs at once (each cut from the denoiser's; int8: the face's from the int8 denoiser, the head's
    float); the numbers are the whole graph's, which runs larger batches and a low-latency hop's short window."""
    from ksdiff_runtime.backends import onnxruntime_backend as orb

    monkeypatch.setattr(orb.os, "cpu_count", lambda: 2)
    backend = OnnxRuntimeBackend(shipped_export, threads=1, int8=int8)
    whole = ort.InferenceSession(str(shipped_export / ("denoiser_int8.onnx" if int8 else "denoiser.onnx")),
                                 providers=["CPUExecutionProvider"])
    ran = spy_on_paths(backend, monkeypatch)
    feeds = denoiser_inputs(backend.constants.cfg, rows, new_frames, seed=3)
    got = backend.denoise(feeds)
    at_once = rows <= orb.PATHS_AT_ONCE_MAX_ROWS and feeds["x_expr"].shape[1] >= orb.PATHS_AT_ONCE_MIN_FRAMES
    assert at_once == (new_frames == 32 and rows == 1)
    assert sorted(ran) == (["x0_expr", "x0_pose"] if at_once else [])
    for name, ref in zip(DENOISER_OUTPUTS, whole.run(list(DENOISER_OUTPUTS), feeds), strict=True):
        assert got[name].shape == ref.shape
        np.testing.assert_allclose(got[name], ref, atol=1e-5)


def test_the_shipped_exports_denoiser_paths_give_its_denoisers_numbers(monkeypatch: pytest.MonkeyPatch):
    """The committed export's path graphs (cut from its denoiser as shipped) against its whole denoiser."""
    from ksdiff_runtime.backends import onnxruntime_backend as orb
    from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT

    monkeypatch.setattr(orb.os, "cpu_count", lambda: 2)
    backend = OnnxRuntimeBackend(SHIPPED_EXPORT, threads=1)
    feeds = denoiser_inputs(backend.constants.cfg, 1, 32, seed=5)
    whole = backend._denoiser.run(list(DENOISER_OUTPUTS), feeds)
    for output, session in backend._paths.items():
        got = session.run([output], {n: feeds[n] for n in DENOISER_PATHS[output]})[0]
        np.testing.assert_allclose(got, whole[DENOISER_OUTPUTS.index(output)], atol=1e-5)


def test_a_denoiser_call_inside_a_part_runs_whole(shipped_export: Path, monkeypatch: pytest.MonkeyPatch):
    """A part of a batch run at once on the cores does not split its calls further: the choice follows the work's
    shape, never timing, so the same bake gives the same bytes."""
    from ksdiff_runtime.backends import onnxruntime_backend as orb
    from ksdiff_runtime.parallel import as_part

    monkeypatch.setattr(orb.os, "cpu_count", lambda: 2)
    backend = OnnxRuntimeBackend(shipped_export, threads=1)
    ran = spy_on_paths(backend, monkeypatch)
    feeds = denoiser_inputs(backend.constants.cfg, 1, 32, seed=3)
    inside = as_part(backend.denoise)(feeds)
    assert ran == []
    outside = backend.denoise(feeds)
    assert sorted(ran) == ["x0_expr", "x0_pose"]
    for name in DENOISER_OUTPUTS:
        np.testing.assert_allclose(inside[name], outside[name], atol=1e-5)
