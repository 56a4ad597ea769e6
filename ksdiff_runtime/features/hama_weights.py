"""hama's phoneme-recogniser weights file, read with numpy only (no torch, no hama import).

The network and its weights are hama's (https://github.com/hamanlp/hama, by Seongmin Park and
the hama contributors), licensed under the Apache License 2.0 as the hama 1.7.0 wheel declares
(the repository's LICENSE file reads MIT). They are not copied into this repository: they are
read at load time from the installed ``hama`` package's ``assets/asr_waveform.hama``. The file is
located through the package's installed metadata, so ``hama`` is never imported and its native
library (libhama, which has no Windows build) is never loaded.

File format (hama 1.7.0, format version 1): ``HAMAPK``, u8 format version, u8 model kind (2 for
this recogniser), u32 tensor count, then per tensor u16 name length, the UTF-8 name, u8 dtype
(0 float32, 1 float16, 2 int64, 3 int32, 4 uint8), u8 rank, u32 per dimension, u64 offset and u64
byte size; the data block starts at the next multiple of 16 bytes, offsets are relative to it.
Weights are float16 except the STFT kernels and the mel filterbank (float32). ONNX export left
some tensors unnamed: the ``onnx::MatMul_*`` tensors are each block's linear weights stored
transposed (in, out), in the order ffn1 fc1, ffn1 fc2, attention in-projection, attention
out-projection, ffn2 fc1, ffn2 fc2; the ``onnx::Conv_*`` tensors are the input convolution, then
each block's depthwise convolution (weight, bias).

``recogniser_weights()`` gives them as float32 arrays named as the PyTorch module's state dict
(``ksdiff_runtime.features.recogniser.Recogniser``), which are also the weight inputs of the
shipped parameter-free ONNX graph (``ksdiff_runtime.features.recogniser_onnx``).
"""

from __future__ import annotations

import importlib.metadata
import struct
from pathlib import Path

import numpy as np

N_BLOCKS = 4  # Conformer blocks

WEIGHTS_FILE = "asr_waveform.hama"
SUPPORTED_HAMA = "1.7.0"  # the hama release whose file this module reads (pyproject pins it)
MAGIC = b"HAMAPK"
SUPPORTED_FORMAT = 1
ASR_KIND = 2
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int64, 3: np.int32, 4: np.uint8}


class HamaFormatError(RuntimeError):
    """The recogniser's weights file is missing or is not the format this module reads."""


def hama_version() -> str | None:
    """The installed hama package's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("hama")
    except importlib.metadata.PackageNotFoundError:
        return None


def hama_weights_path() -> Path:
    """Path of the recogniser's weights inside the installed hama package, from the package's
    installed metadata: hama is not imported, so its native library is not loaded."""
    try:
        dist = importlib.metadata.distribution("hama")
    except importlib.metadata.PackageNotFoundError:
        raise HamaFormatError(
            f"the hama package is not installed: its {WEIGHTS_FILE} holds the phoneme recogniser's "
            f"weights (supported: hama {SUPPORTED_HAMA}; pip install hama=={SUPPORTED_HAMA})"
        ) from None
    return Path(str(dist.locate_file(f"hama/assets/{WEIGHTS_FILE}")))


def format_error(path: Path, problem: str) -> HamaFormatError:
    return HamaFormatError(
        f"{path}: {problem}; installed hama version {hama_version()}; supported: hama {SUPPORTED_HAMA}, "
        f"format version {SUPPORTED_FORMAT} (HAMAPK, kind {ASR_KIND})"
    )


def read_hama(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.hama`` named-tensor file, by name, in its stored dtype."""
    path = Path(path)
    if not path.is_file():
        raise HamaFormatError(
            f"{path}: the phoneme recogniser's weights file is missing; installed hama version "
            f"{hama_version()}; supported: hama {SUPPORTED_HAMA}"
        )
    data = path.read_bytes()
    if len(data) < 12 or data[:6] != MAGIC:
        raise format_error(path, f"not a hama tensor file (starts {data[:6]!r}, expected {MAGIC!r})")
    version, kind, count = struct.unpack_from("<BBI", data, 6)
    if version != SUPPORTED_FORMAT or kind != ASR_KIND:
        raise format_error(path, f"found format version {version}, kind {kind}")
    tensors: dict[str, np.ndarray] = {}
    try:
        pos = 12
        table = []
        for _ in range(count):
            (name_len,) = struct.unpack_from("<H", data, pos)
            name = data[pos + 2 : pos + 2 + name_len].decode("utf-8")
            pos += 2 + name_len
            dtype, rank = struct.unpack_from("<BB", data, pos)
            shape = struct.unpack_from(f"<{rank}I", data, pos + 2)
            offset, size = struct.unpack_from("<QQ", data, pos + 2 + 4 * rank)
            pos += 2 + 4 * rank + 16
            table.append((name, dtype, shape, offset, size))
        start = (pos + 15) // 16 * 16
        for name, dtype, shape, offset, size in table:
            array = np.frombuffer(data, dtype=_DTYPES[dtype], count=int(np.prod(shape)), offset=start + offset)
            if array.nbytes != size:
                raise ValueError(f"{name}: {size} bytes for shape {shape}")
            tensors[name] = array.reshape(shape)
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as e:
        raise format_error(path, f"damaged tensor table ({type(e).__name__}: {e})") from e
    return tensors


def _numbered(tensors: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The unnamed ONNX tensors ``prefix<N>`` in export order (by N)."""
    names = sorted((n for n in tensors if n.startswith(prefix)), key=lambda n: int(n[len(prefix) :]))
    return [tensors[n] for n in names]


def _state(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The file's tensors under the module's state-dict names, in their stored dtypes."""
    prefix = "acoustic_model.model."
    state = {
        "stft_real": tensors["stft_real_kernel"],
        "stft_imag": tensors["stft_imag_kernel"],
        "mel_fb": tensors["mel_fb"],
        "proj.weight": tensors[prefix + "proj.weight"],
        "proj.bias": tensors[prefix + "proj.bias"],
    }
    convs = _numbered(tensors, "onnx::Conv_")
    matmuls = _numbered(tensors, "onnx::MatMul_")
    if len(convs) != 2 + 2 * N_BLOCKS or len(matmuls) != 6 * N_BLOCKS:
        raise ValueError(f"{len(convs)} onnx::Conv_* and {len(matmuls)} onnx::MatMul_* tensors")
    state["input_conv.weight"], state["input_conv.bias"] = convs[0], convs[1]
    linears = ["ffn1.fc1", "ffn1.fc2", "attn.in_proj", "attn.out_proj", "ffn2.fc1", "ffn2.fc2"]
    for b in range(N_BLOCKS):
        named = f"{prefix}blocks.{b}."
        for part in ["ffn1.norm", "attn_norm", "conv.norm", "conv.pointwise1", "conv.pointwise2", "ffn2.norm", "norm"]:
            state[f"blocks.{b}.{part}.weight"] = tensors[f"{named}{part}.weight"]
            state[f"blocks.{b}.{part}.bias"] = tensors[f"{named}{part}.bias"]
        for j, linear in enumerate(linears):
            state[f"blocks.{b}.{linear}.weight"] = matmuls[6 * b + j].T  # stored (in, out)
        for linear in ["ffn1.fc1", "ffn1.fc2", "ffn2.fc1", "ffn2.fc2", "attn.out_proj"]:
            state[f"blocks.{b}.{linear}.bias"] = tensors[f"{named}{linear}.bias"]
        state[f"blocks.{b}.attn.in_proj.bias"] = tensors[f"{named}attn.in_proj_bias"]
        state[f"blocks.{b}.conv.depthwise.weight"] = convs[2 + 2 * b]
        state[f"blocks.{b}.conv.depthwise.bias"] = convs[3 + 2 * b]
    return state


def recogniser_weights(path: Path | None = None) -> dict[str, np.ndarray]:
    """The recogniser's weights from the installed hama (or ``path``), float32 and contiguous,
    named as the PyTorch module's state dict. Their shapes are checked by the consumer (the
    module's ``load_state_dict``, the ONNX graph's input shapes)."""
    path = hama_weights_path() if path is None else Path(path)
    tensors = read_hama(path)
    try:
        state = _state(tensors)
    except (KeyError, ValueError) as e:
        raise format_error(path, f"tensors do not match the recogniser ({type(e).__name__}: {e})") from e
    return {name: np.array(a, dtype=np.float32, order="C") for name, a in state.items()}  # copies: writable
