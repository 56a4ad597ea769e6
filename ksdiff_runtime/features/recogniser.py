"""hama's phoneme recogniser as a PyTorch module: 16 kHz waveform -> CTC log-probabilities.

The network and its weights are hama's (https://github.com/hamanlp/hama, by Seongmin Park and
the hama contributors), licensed under the Apache License 2.0 as the hama 1.7.0 wheel declares
(the repository's LICENSE file reads MIT). The weights are not copied into this repository: they
are read at load time from the installed ``hama`` package's ``assets/asr_waveform.hama``, a
named-tensor file that hama's native engine (libhama) runs. This module is a plain reading of that file, checked
against libhama in tests/test_recogniser.py:

- reflect-padded STFT as a strided convolution with the file's packed kernels (n_fft 400,
  hop 160, window folded in), power, the 80-band mel filterbank, ln(max(x, 1e-10)), rounded to
  float16 (where hama's ONNX graph casts to float16; without the floor and the rounding, quiet
  bands, as in 8 kHz telephone audio, move some frames' argmax);
- conv1d 80 -> 144 (kernel 3, stride 2, padding 1) and GELU: one output frame per 320 samples
  (20 ms), frame q centred on sample 320 q;
- 4 Conformer blocks: half-step feed-forward, 4-head self-attention over the whole input (no
  positional encoding), convolution module (pointwise to 288, GLU, depthwise kernel 31 with its
  batch norm folded in, SiLU, pointwise), second half-step feed-forward, LayerNorm;
- a 1x1 convolution to 191 classes (hama's phoneme inventory, ``<wb>`` and ``<blank>`` last) and
  log-softmax.

File format (hama 1.7.0, format version 1): ``HAMAPK``, u8 format version, u8 model kind (2 for
this recogniser), u32 tensor count, then per tensor u16 name length, the UTF-8 name, u8 dtype
(0 float32, 1 float16, 2 int64, 3 int32, 4 uint8), u8 rank, u32 per dimension, u64 offset and u64
byte size; the data block starts at the next multiple of 16 bytes, offsets are relative to it.
Weights are float16 except the STFT kernels and the mel filterbank (float32); the module
computes in float32. ONNX export left some tensors unnamed: the ``onnx::MatMul_*`` tensors are
each block's linear weights stored transposed (in, out), in the order ffn1 fc1, ffn1 fc2,
attention in-projection, attention out-projection, ffn2 fc1, ffn2 fc2; the ``onnx::Conv_*``
tensors are the input convolution, then each block's depthwise convolution (weight, bias).

Batches: ``forward(waveform [B, N], lengths [B])`` takes clips zero-padded at the end to a common
length N, with their true lengths in samples. Each clip is reflect-padded at its own ends, and
frames past a clip's end are masked out of attention and out of every convolution, so a clip's
log-probabilities do not depend on what it is batched with. ``out_lengths[b] = lengths[b] // 320
+ 1``; frames at or past it are padding and are set to 0.

Length: libhama reads at most 3000 STFT frames (30 s: at most 1500 output frames) and silently
drops the rest of a longer clip. This module has no cap, so the two agree on clips up to 30 s;
on longer ones libhama returns only the first 1500 frames, computed without the later audio.
Clips need more than 200 samples (the reflect padding; below that libhama matches no padding rule).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
STFT_HOP = 160
HOP = 2 * STFT_HOP  # samples per output frame (20 ms)
N_MELS = 80
WIDTH = 144
FFN = 576
HEADS = 4
CONV_KERNEL = 31
N_BLOCKS = 4
CLASSES = 191
MEL_FLOOR = 1e-10

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
    """Path of the recogniser's weights inside the installed hama package (hama is not imported,
    so its native library is not loaded)."""
    spec = importlib.util.find_spec("hama")
    if spec is None or not spec.submodule_search_locations:
        raise HamaFormatError(
            f"the hama package is not installed: its {WEIGHTS_FILE} holds the phoneme recogniser's "
            f"weights (supported: hama {SUPPORTED_HAMA}; pip install hama=={SUPPORTED_HAMA})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / WEIGHTS_FILE


def _format_error(path: Path, problem: str) -> HamaFormatError:
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
        raise _format_error(path, f"not a hama tensor file (starts {data[:6]!r}, expected {MAGIC!r})")
    version, kind, count = struct.unpack_from("<BBI", data, 6)
    if version != SUPPORTED_FORMAT or kind != ASR_KIND:
        raise _format_error(path, f"found format version {version}, kind {kind}")
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
        raise _format_error(path, f"damaged tensor table ({type(e).__name__}: {e})") from e
    return tensors


def _numbered(tensors: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The unnamed ONNX tensors ``prefix<N>`` in export order (by N)."""
    names = sorted((n for n in tensors if n.startswith(prefix)), key=lambda n: int(n[len(prefix) :]))
    return [tensors[n] for n in names]


# --- the network --------------------------------------------------------------------------------
class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, FFN)
        self.fc2 = nn.Linear(FFN, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(self.norm(x))))


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.in_proj = nn.Linear(WIDTH, 3 * WIDTH)
        self.out_proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.in_proj(x).view(B, T, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        # valid [B, T]: padded frames are never attended to
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class ConvModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.pointwise1 = nn.Conv1d(WIDTH, 2 * WIDTH, 1)
        self.depthwise = nn.Conv1d(WIDTH, WIDTH, CONV_KERNEL, padding=CONV_KERNEL // 2, groups=WIDTH)
        self.pointwise2 = nn.Conv1d(WIDTH, WIDTH, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise1(self.norm(x).transpose(1, 2)), dim=1)
        h = h.masked_fill(~valid[:, None, :], 0.0)  # padded frames read as the convolution's zero padding
        return self.pointwise2(F.silu(self.depthwise(h))).transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ffn1 = FeedForward()
        self.attn_norm = nn.LayerNorm(WIDTH)
        self.attn = SelfAttention()
        self.conv = ConvModule()
        self.ffn2 = FeedForward()
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attn(self.attn_norm(x), valid)
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


def num_frames(lengths: torch.Tensor) -> torch.Tensor:
    """Output frames of clips of ``lengths`` samples (one per 320 samples, centred)."""
    return lengths // HOP + 1


class Recogniser(nn.Module):
    """hama's Conformer CTC phoneme recogniser: waveform [B, N] at 16 kHz -> log-probabilities
    [B, N // 320 + 1, 191] and their valid lengths [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stft_real", torch.zeros(N_FFT // 2 + 1, 1, N_FFT))
        self.register_buffer("stft_imag", torch.zeros(N_FFT // 2 + 1, 1, N_FFT))
        self.register_buffer("mel_fb", torch.zeros(N_FFT // 2 + 1, N_MELS))
        self.input_conv = nn.Conv1d(N_MELS, WIDTH, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(ConformerBlock() for _ in range(N_BLOCKS))
        self.proj = nn.Conv1d(WIDTH, CLASSES, 1)

    @classmethod
    def from_hama(cls, path: Path | None = None) -> Recogniser:
        """The recogniser with the weights of the installed hama package (or of ``path``)."""
        path = hama_weights_path() if path is None else Path(path)
        tensors = read_hama(path)
        model = cls()
        try:
            state = _state_dict(tensors)
            model.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as e:
            raise _format_error(path, f"tensors do not match the recogniser ({type(e).__name__}: {e})") from e
        return model.eval()

    def log_mel(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ln mel power [B, 80, N // 160 + 1] of each clip, reflect-padded at its own ends, rounded to float16."""
        N = waveform.shape[1]
        pad = N_FFT // 2
        # reflect index of every padded position inside its own clip: -i before the start,
        # 2 (n - 1) - i after the end; positions past a short clip's padding are masked below
        i = torch.arange(-pad, N + pad, device=waveform.device)[None, :]
        n = lengths[:, None]
        idx = torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i)).clamp(0, N - 1)
        padded = torch.gather(waveform, 1, idx)[:, None, :]
        real = F.conv1d(padded, self.stft_real, stride=STFT_HOP)
        imag = F.conv1d(padded, self.stft_imag, stride=STFT_HOP)
        mel = torch.einsum("bft,fm->bmt", real * real + imag * imag, self.mel_fb)
        return torch.log(mel.clamp_min(MEL_FLOOR)).half().float()

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = waveform.shape
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=waveform.device)
        if int(lengths.min()) <= N_FFT // 2:
            raise ValueError(f"clips need more than {N_FFT // 2} samples for the STFT's reflect padding")
        mel = self.log_mel(waveform, lengths)
        mel_valid = torch.arange(mel.shape[2], device=mel.device)[None, :] < (lengths // STFT_HOP + 1)[:, None]
        mel = mel.masked_fill(~mel_valid[:, None, :], 0.0)  # as the input convolution's zero padding
        x = F.gelu(self.input_conv(mel)).transpose(1, 2)  # [B, T, 144]
        out_lengths = num_frames(lengths)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < out_lengths[:, None]
        for block in self.blocks:
            x = block(x, valid)
        log_probs = F.log_softmax(self.proj(x.transpose(1, 2)).transpose(1, 2), dim=-1)
        return log_probs.masked_fill(~valid[:, :, None], 0.0), out_lengths


def _state_dict(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The module's state dict from the file's tensors (float16 widened to float32)."""
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
    return {name: torch.from_numpy(np.array(a, dtype=np.float32)) for name, a in state.items()}
