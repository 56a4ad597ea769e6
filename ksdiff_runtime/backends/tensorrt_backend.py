"""The TensorRT backend: engines built from an export's ONNX graphs, cached on disk, run with cuda-python.

Engines are specific to a GPU model, a TensorRT version, the exported graphs and the builder
settings, so each engine file is named by a key over exactly those:

    <cache>/conditioner-<key16>.engine   the serialized engine
    <cache>/conditioner-<key16>.json     sidecar: what the key was computed from, the engine's sha256
    <cache>/timing-<gpu key16>.cache     TensorRT's timing cache, shared by builds on this GPU + version

A missing, corrupt (deserialisation fails or returns None, sha256 differs), foreign or stale
(sidecar disagrees) engine is logged and rebuilt, never a crash. The first part of this module
(key, sidecar, profile shapes, the load-or-build decision) is plain Python and imports neither
tensorrt nor cuda-python, so it is unit-tested on machines without a GPU; importing the module
never fails, constructing the backend without those packages raises BackendError.

This code is written against the TensorRT 10 Python API and cuda-python 12; it has not been run in
the workplace it was written in (no GPU, no TensorRT there): see docs/BACKENDS.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.io import (
    CONDITIONER_OUTPUTS,
    DENOISER_OUTPUTS,
    STREAM_CONDITIONER_OUTPUTS,
    STYLE_ENCODER_INPUTS,
    STYLE_ENCODER_OUTPUTS,
)

from .artifact import (
    CONDITIONER_FILE,
    DENOISER_FILE,
    STREAM_CONDITIONER_FILE,
    STYLE_ENCODER_FILE,
    default_cache_dir,
    load_export,
    sha256_file,
)
from .base import BackendError

log = logging.getLogger("ksdiff_runtime.backends")

GRAPHS = {"conditioner": CONDITIONER_FILE, "denoiser": DENOISER_FILE, "stream_conditioner": STREAM_CONDITIONER_FILE}
OUTPUTS = {"conditioner": CONDITIONER_OUTPUTS, "denoiser": DENOISER_OUTPUTS,
           "stream_conditioner": STREAM_CONDITIONER_OUTPUTS}
SIDECAR_FORMAT = "ksdiff-tensorrt-engine"
SIDECAR_VERSION = 1
DEFAULT_MAX_BATCH = 256  # streams x CFG variants (up to 4) in one call


def default_engine_cache() -> Path:
    return default_cache_dir() / "tensorrt"


# --- pure Python: settings, profiles, cache keys, sidecars (tested without TensorRT) ---------------
@dataclass(frozen=True)
class BuildSettings:
    """What an engine is built for; part of the cache key (change any field, get another engine)."""

    fp16: bool = True
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int = 4  # one or a few streams with CFG: the common case TensorRT tunes kernels for
    new_frames: tuple[int, int, int] = (1, 32, 128)  # N, new frames per window: min, opt, max
    text_tokens: tuple[int, int, int] = (1, 32, 96)  # P, transcript tokens: min, opt, max
    workspace_mb: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got {self.opt_batch}, {self.max_batch}")
        for name in ("new_frames", "text_tokens"):
            lo, opt, hi = getattr(self, name)
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"{name} must be (min, opt, max) with 1 <= min <= opt <= max, got {(lo, opt, hi)}")

    @classmethod
    def for_config(cls, cfg: ModelConfig, max_batch: int = DEFAULT_MAX_BATCH, fp16: bool = True) -> BuildSettings:
        """Windows from 1 frame (the smallest streaming hop) to 4 training windows (offline clips use one
        training window, cfg.train_window_frames, which is the tuned size); transcripts up to the cap."""
        N = cfg.train_window_frames
        P = cfg.max_text_tokens
        return cls(fp16=fp16, max_batch=max_batch, opt_batch=min(4, max_batch), new_frames=(1, N, 4 * N),
                   text_tokens=(1, min(32, P), P))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


Shape = tuple[int, ...]


def profile_shapes(cfg: ModelConfig, graph: str, s: BuildSettings) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input of ``graph`` for one TensorRT optimisation profile.

    The time axes follow the window: the conditioner sees S = encoder context + N + lookahead feature
    frames, the denoiser T = C + N motion frames (C = motion context). The stream conditioner sees a
    live hop's new frames: K committed (1 a hop; up to a window's S at a stream's first hop or a restart)
    then the provisional tail, W = K + N - H of them; its state inputs have fixed shapes."""
    b = (1, s.opt_batch, s.max_batch)
    n = s.new_frames
    C = cfg.motion_context_frames
    S = tuple(cfg.encoder_context_frames + x + cfg.lookahead_frames for x in n)
    T = tuple(C + x for x in n)

    def shapes(*dims: tuple[int, ...] | int) -> tuple[Shape, Shape, Shape]:
        # each dim is a (min, opt, max) triple or a fixed size
        lo, opt, hi = (tuple(d[i] if isinstance(d, tuple) else d for d in dims) for i in range(3))
        return lo, opt, hi

    if graph == "conditioner":
        return {
            "feats": shapes(b, S, cfg.feature_dim), "prosody": shapes(b, S, cfg.prosody_dim),
            "text": shapes(b, s.text_tokens), "audio_keep": shapes(b), "text_keep": shapes(b),
            "prev_expr": shapes(b, C, cfg.expr_dim), "prev_pose": shapes(b, C, cfg.pose_dim), "known": shapes(b, C),
            "n_new": shapes(n),
        }
    if graph == "stream_conditioner":
        K = (1, 1, S[2])  # a hop commits one frame (opt); a first hop the whole windowed span
        W = (1, n[1], S[2])
        state = {name: shapes(b, *shape) for name, shape in cfg.stream_state_shapes().items()}
        return {
            "feats": shapes(b, W, cfg.feature_dim), "prosody": shapes(b, W, cfg.prosody_dim),
            "text": shapes(b, s.text_tokens), "audio_keep": shapes(b), "text_keep": shapes(b),
            "prev_expr": shapes(b, C, cfg.expr_dim), "prev_pose": shapes(b, C, cfg.pose_dim), "known": shapes(b, C),
            "n_new": shapes(n), "n_commit": shapes(K),
        } | state
    if graph == "denoiser":
        return {
            "x_expr": shapes(b, T, cfg.expr_dim), "x_pose": shapes(b, T, cfg.pose_dim), "known": shapes(b, T),
            "key_prob_e": shapes(b, T), "key_value_e": shapes(b, T, cfg.expr_dim), "key_prob_p": shapes(b, T),
            "key_value_p": shapes(b, T, cfg.pose_dim), "f_e": shapes(b, T, cfg.d_model),
            "f_h": shapes(b, T, cfg.d_model), "t": shapes(b), "style": shapes(b, cfg.style_dim),
        }
    raise ValueError(f"unknown graph {graph!r}; expected one of {', '.join(GRAPHS)}")


@dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"


def key_fields(graph: str, gpu: GpuInfo, trt_version: str, model_hash: str, settings: BuildSettings) -> dict:
    """Everything an engine depends on; the cache key is a hash of it and the sidecar records it."""
    return {"graph": graph, "gpu": gpu.name, "compute_capability": gpu.compute_capability,
            "tensorrt": trt_version, "model_hash": model_hash, "settings": settings.to_dict()}


def engine_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def timing_cache_path(cache_dir: Path, gpu: GpuInfo, trt_version: str) -> Path:
    # timings depend on the GPU and the TensorRT version only, so every graph and model shares them
    key = hashlib.sha256(json.dumps([gpu.name, gpu.compute_capability, trt_version]).encode()).hexdigest()
    return Path(cache_dir) / f"timing-{key[:16]}.cache"


@dataclass(frozen=True)
class EnginePlan:
    engine: Path
    sidecar: Path
    fields: dict = field(hash=False)
    build: bool  # False: load the cached engine
    reason: str  # why it is (re)built, or "cached"


def engine_paths(cache_dir: Path, fields: dict) -> tuple[Path, Path]:
    stem = f"{fields['graph']}-{engine_key(fields)[:16]}"
    return Path(cache_dir) / f"{stem}.engine", Path(cache_dir) / f"{stem}.json"


def sidecar_problem(engine: Path, sidecar: Path, fields: dict) -> str | None:
    """Why the cached engine cannot be used (None: it can): missing files, an unreadable sidecar, a
    sidecar recorded for other key fields (foreign or stale), or engine bytes that changed since."""
    if not engine.is_file():
        return f"no cached engine {engine.name}"
    if not sidecar.is_file():
        return f"{engine.name} has no sidecar {sidecar.name}"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"sidecar {sidecar.name} is unreadable: {exc}"
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or meta.get("version") != SIDECAR_VERSION:
        return f"sidecar {sidecar.name} is not a {SIDECAR_FORMAT} v{SIDECAR_VERSION} sidecar"
    recorded = meta.get("fields", {})
    differ = sorted(k for k in set(fields) | set(recorded) if fields.get(k) != recorded.get(k))
    if differ:
        return f"{engine.name} was built for another {', '.join(differ)} (stale or foreign)"
    if meta.get("engine_sha256") != sha256_file(engine):
        return f"{engine.name} does not match its sidecar's sha256 (corrupt or truncated)"
    return None


def plan_engine(cache_dir: Path, fields: dict, rebuild: bool = False) -> EnginePlan:
    """Load the cached engine for ``fields`` or build it, and why."""
    engine, sidecar = engine_paths(cache_dir, fields)
    problem = "rebuild requested" if rebuild else sidecar_problem(engine, sidecar, fields)
    return EnginePlan(engine, sidecar, fields, build=problem is not None, reason=problem or "cached")


def write_sidecar(plan: EnginePlan) -> None:
    meta = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "fields": plan.fields,
            "engine_sha256": sha256_file(plan.engine), "key": engine_key(plan.fields)}
    _atomic_write(plan.sidecar, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())



def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    # another process may be loading this cache: it sees the old file or the new one, never half
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- TensorRT + cuda-python ---------------------------------------------------------------------
def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("tensorrt: the tensorrt Python package is not installed (pip install "
                           "'ksdiff-runtime[gpu]' on a machine with an NVIDIA GPU and driver)") from exc
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise BackendError("tensorrt: the cuda-python package is not installed (pip install "
                               "'ksdiff-runtime[gpu]')") from exc
    return trt, cudart


class _Cuda:
    """The few CUDA runtime calls the backend needs; every returned error code is checked."""

    def __init__(self, cudart) -> None:
        self.rt = cudart

    def call(self, name: str, result) -> Any:
        # cuda-python returns (error, *values) for every call
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, err_name = self.rt.cudaGetErrorName(err)
            err_name = err_name.decode() if isinstance(err_name, bytes) else str(err_name)
            raise BackendError(f"tensorrt: {name} failed with {err_name}")
        return values[0] if len(values) == 1 else (tuple(values) or None)


class _Engine:
    """One deserialized engine, its execution context and device buffers (grown on demand, reused)."""

    def __init__(self, trt, cuda: _Cuda, engine, graph: str, outputs: tuple[str, ...]) -> None:
        self.trt, self.cuda, self.engine, self.graph, self.outputs = trt, cuda, engine, graph, outputs
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"tensorrt: cannot create an execution context for the {graph} engine")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        missing = [n for n in outputs if n not in names]
        if missing:
            raise BackendError(f"tensorrt: the {graph} engine lacks outputs {missing}")
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self.cuda.call("cudaFree", self.cuda.rt.cudaFree(ptr))
            cap = max(nbytes, 2 * cap, 256)  # grow geometrically: window shapes vary from call to call
            ptr = int(self.cuda.call("cudaMalloc", self.cuda.rt.cudaMalloc(cap)))
            self.buffers[name] = (ptr, cap)
        return ptr

    def run(self, feeds: dict[str, np.ndarray], stream) -> dict[str, np.ndarray]:
        rt = self.cuda.rt
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host_inputs = []  # kept alive until the stream is synchronised
        for name in self.inputs:
            if name not in feeds:
                raise KeyError(f"missing {self.graph} input {name}")
            arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, arr.shape):
                raise BackendError(f"tensorrt: {self.graph} input {name} of shape {arr.shape} is outside the "
                                   f"engine's optimisation profile {self.engine.get_tensor_profile_shape(name, 0)}")
            ptr = self._buffer(name, arr.nbytes)
            if arr.nbytes:
                self.cuda.call("cudaMemcpyAsync", rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream))
            self.context.set_tensor_address(name, ptr)
            host_inputs.append(arr)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"tensorrt: {self.graph} output {name} has unresolved shape {shape}")
            results[name] = np.empty(shape, self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(int(stream)):
            raise BackendError(f"tensorrt: executing the {self.graph} engine failed (see TensorRT's log)")
        for name, out in results.items():
            if out.nbytes:
                ptr = self.buffers[name][0]
                self.cuda.call("cudaMemcpyAsync", rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, stream))
        self.cuda.call("cudaStreamSynchronize", rt.cudaStreamSynchronize(stream))
        del host_inputs
        return {n: a.astype(np.float32, copy=False) for n, a in results.items()}

    def free(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cuda.rt.cudaFree(ptr)  # best effort at teardown: no raising from __del__
        self.buffers.clear()


class TensorRTBackend:
    """TensorRT engines for an export's three per-hop graphs, built once per GPU / TensorRT version / model /
    settings (the style encoder, once per reference take, runs in ONNX Runtime)."""

    name = "tensorrt"

    def __init__(self, export_dir: str | Path, device_index: int = 0, cache_dir: str | Path | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, fp16: bool = True, settings: BuildSettings | None = None,
                 rebuild: bool = False) -> None:
        trt, cudart = _import_trt()
        self.trt = trt
        self.cuda = _Cuda(cudart)
        self.export_dir = Path(export_dir)
        self.cfg, self.constants, self.manifest = load_export(self.export_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_engine_cache()
        self.settings = settings or BuildSettings.for_config(self.cfg, max_batch=max_batch, fp16=fp16)
        # the largest graph batch the engines accept: streams x CFG variants per call (callers batching
        # streams must split at max_batch // variants)
        self.max_batch = self.settings.max_batch
        self.device_index = device_index
        self._engines: dict[str, _Engine] = {}
        self._stream = None
        self._style_encoder = None  # made on first use (encode_style)

        count = self.cuda.call("cudaGetDeviceCount", cudart.cudaGetDeviceCount())
        if not 0 <= device_index < count:
            raise BackendError(f"tensorrt: no CUDA device {device_index} ({count} visible)")
        self.cuda.call("cudaSetDevice", cudart.cudaSetDevice(device_index))
        props = self.cuda.call("cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device_index))
        gpu_name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        self.gpu = GpuInfo(gpu_name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self._stream = self.cuda.call("cudaStreamCreate", cudart.cudaStreamCreate())
        for graph in GRAPHS:
            fields = key_fields(graph, self.gpu, trt.__version__, self.manifest["model_hash"], self.settings)
            engine = self._load_or_build(plan_engine(self.cache_dir, fields, rebuild=rebuild))
            self._engines[graph] = _Engine(trt, self.cuda, engine, graph, OUTPUTS[graph])

    # --- engines ---
    def _load_or_build(self, plan: EnginePlan):
        graph = plan.fields["graph"]
        if not plan.build:
            engine = None
            try:
                engine = self.runtime.deserialize_cuda_engine(plan.engine.read_bytes())
            except Exception as exc:  # TensorRT raises RuntimeError/TypeError on bad bytes in some versions
                log.warning("tensorrt: cached %s engine %s does not load (%s); rebuilding", graph, plan.engine, exc)
            else:
                if engine is None:
                    log.warning("tensorrt: cached %s engine %s does not deserialize; rebuilding", graph, plan.engine)
            if engine is not None:
                log.info("tensorrt: loaded cached %s engine %s", graph, plan.engine)
                return engine
        else:
            log.info("tensorrt: building the %s engine (%s); this takes a while once, then it is cached in %s",
                     graph, plan.reason, self.cache_dir)
        serialized = self._build(graph)
        try:
            _atomic_write(plan.engine, memoryview(serialized))
            write_sidecar(plan)
        except OSError as exc:  # a read-only or full cache: this run goes on with the engine it built
            log.warning("tensorrt: cannot cache the %s engine in %s (%s); it is built again on the next start",
                        graph, self.cache_dir, exc.strerror or exc)
        engine = self.runtime.deserialize_cuda_engine(bytes(memoryview(serialized)))
        if engine is None:
            raise BackendError(f"tensorrt: the freshly built {graph} engine does not deserialize")
        return engine

    def _build(self, graph: str):
        trt = self.trt
        builder = trt.Builder(self.logger)
        # TensorRT 10 networks are always explicit-batch (flag 0); 8.x needs the flag spelled out
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        onnx_path = self.export_dir / GRAPHS[graph]
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"tensorrt: cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.settings.workspace_mb << 20)
        if self.settings.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shapes = profile_shapes(self.cfg, graph, self.settings)
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            if name not in shapes:
                raise BackendError(f"tensorrt: {onnx_path} has an input {name!r} this code has no profile for")
            profile.set_shape(name, *shapes[name])
        config.add_optimization_profile(profile)

        timing_path = timing_cache_path(self.cache_dir, self.gpu, trt.__version__)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        if timing is None or not config.set_timing_cache(timing, False):
            log.warning("tensorrt: timing cache %s is unusable; starting a fresh one", timing_path)
            config.set_timing_cache(config.create_timing_cache(b""), False)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"tensorrt: building the {graph} engine from {onnx_path} failed (see TensorRT's log)")
        try:
            _atomic_write(timing_path, memoryview(config.get_timing_cache().serialize()))
        except OSError as exc:  # only later builds are slower without it
            log.warning("tensorrt: cannot save the timing cache %s (%s)", timing_path, exc.strerror or exc)
        return serialized

    # --- Backend ---
    def condition(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.cuda.call("cudaSetDevice", self.cuda.rt.cudaSetDevice(self.device_index))
        return self._engines["conditioner"].run(feeds, self._stream)

    def denoise(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.cuda.call("cudaSetDevice", self.cuda.rt.cudaSetDevice(self.device_index))
        return self._engines["denoiser"].run(feeds, self._stream)

    def condition_stream(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.cuda.call("cudaSetDevice", self.cuda.rt.cudaSetDevice(self.device_index))
        return self._engines["stream_conditioner"].run(feeds, self._stream)

    def encode_style(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The style encoder runs once per reference take, not per hop: ONNX Runtime on the CPU, no engine."""
        if self._style_encoder is None:
            import onnxruntime as ort

            from .onnxruntime_backend import as_feeds

            sess = ort.InferenceSession(str(self.export_dir / STYLE_ENCODER_FILE), providers=["CPUExecutionProvider"])
            self._style_encoder = lambda f: sess.run(list(STYLE_ENCODER_OUTPUTS), as_feeds(f, STYLE_ENCODER_INPUTS))
        return dict(zip(STYLE_ENCODER_OUTPUTS, self._style_encoder(feeds), strict=True))

    def close(self) -> None:
        for engine in self._engines.values():
            engine.free()
        self._engines.clear()
        if self._stream is not None:
            self.cuda.rt.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter teardown: CUDA may already be gone
            self.close()
