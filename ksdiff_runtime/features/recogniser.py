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

The weights file, its format and the layout of its tensors: ``ksdiff_runtime.features.hama_weights``
(numpy only). The runtime runs this module as a parameter-free ONNX graph
(``ksdiff_runtime/assets/recogniser.onnx``, written by ``export_onnx``) whose weights are external
initializers with no data, supplied from the same file at load time:
``ksdiff_runtime.features.recogniser_onnx``.

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

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ksdiff_runtime.features.hama_weights import N_BLOCKS, format_error, hama_weights_path, recogniser_weights

SAMPLE_RATE = 16000
N_FFT = 400
STFT_HOP = 160
HOP = 2 * STFT_HOP  # samples per output frame (20 ms)
N_MELS = 80
WIDTH = 144
FFN = 576
HEADS = 4
CONV_KERNEL = 31
CLASSES = 191
MEL_FLOOR = 1e-10

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
        state = {name: torch.from_numpy(a) for name, a in recogniser_weights(path).items()}
        model = cls()
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # shapes or names that are not this network
            raise format_error(path, f"tensors do not match the recogniser ({type(e).__name__}: {e})") from e
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
        if not torch.jit.is_tracing() and int(lengths.min()) <= N_FFT // 2:
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


# --- the parameter-free ONNX graph the runtime runs ---------------------------------------------
GRAPH_INPUTS = ("waveform", "lengths")
GRAPH_OUTPUTS = ("log_probs", "out_lengths")
GRAPH_OPSET = 17
# Where the graph says its weights live: nowhere a file could be. The runtime supplies every one from
# hama's file (ONNX Runtime's add_external_initializers); a weight it does not supply fails the load.
WEIGHTS_LOCATION = "supplied-at-load:hama/assets/asr_waveform.hama"


def export_onnx(path: Path) -> None:
    """Write the recogniser as an ONNX graph without its weights: every weight is an initializer
    named as the state dict, marked as external data with no data anywhere, which the runtime
    supplies from hama's file at load time (``ksdiff_runtime.features.recogniser_onnx``). Constant
    weights (not graph inputs) let ONNX Runtime fold and pre-pack them once per session. Inputs
    ``waveform`` [B, N] float32 and ``lengths`` [B] int64, outputs ``log_probs`` [B, T, 191] and
    ``out_lengths`` [B], with dynamic B, N and T. The same torch and onnx versions write the same
    bytes (tests/test_recogniser.py checks the shipped graph against a fresh export)."""
    model = Recogniser().eval()
    waveform = torch.zeros(2, 16000)
    lengths = torch.tensor([16000, 12000])
    axes = {"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
            "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}}
    export_without_weights(model, (waveform, lengths), path, GRAPH_INPUTS, GRAPH_OUTPUTS, axes)


def export_without_weights(module: nn.Module, args: tuple, path: Path, input_names: tuple[str, ...],
                           output_names: tuple[str, ...], axes: dict, weights_prefix: str = "") -> None:
    """Export ``module`` to ONNX with every weight an empty external initializer named as its state dict
    entry (less ``weights_prefix``), for the runtime to supply at load time. Legacy exporter, opset 17."""
    import warnings

    import onnx

    # weights are not exported, but equal ones would be merged into one input: make each distinct
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=axes, opset_version=GRAPH_OPSET,
                          dynamo=False, export_params=False, do_constant_folding=False)
    # torch writes the weights as graph inputs; make each an external initializer without data
    proto = onnx.load(str(path), load_external_data=False)
    inputs = list(proto.graph.input)
    del proto.graph.input[:]
    renamed = {}
    for value in inputs:
        if value.name in input_names:
            proto.graph.input.append(value)
            continue
        if not value.name.startswith(weights_prefix):
            raise ValueError(f"graph input {value.name!r} is neither an input nor a weight under {weights_prefix!r}")
        name = value.name[len(weights_prefix):]
        renamed[value.name] = name
        tensor_type = value.type.tensor_type
        weight = onnx.TensorProto(name=name, data_type=tensor_type.elem_type,
                                  dims=[d.dim_value for d in tensor_type.shape.dim])
        weight.data_location = onnx.TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=WEIGHTS_LOCATION)
        proto.graph.initializer.append(weight)
    if weights_prefix:
        for node in proto.graph.node:
            node.input[:] = [renamed.get(name, name) for name in node.input]
    onnx.save(proto, str(path))


# --- libhama, the reference -------------------------------------------------------------------------
class LibHamaReference:
    """hama's own engine (libhama, through ``hama.ASRModel``) behind the runtime recogniser's
    ``log_probs``: the reference the port is checked and benchmarked against (tests/test_recogniser.py,
    benchmarks/recogniser.py); never on the serving or bake path. One hama handle per thread (it
    is not shared). libhama reads at most 30 s of a clip (1500 frames)."""

    def __init__(self) -> None:
        import threading

        import hama

        self._hama = hama
        self._local = threading.local()

    def log_probs(self, segment: np.ndarray) -> np.ndarray:
        if not hasattr(self._local, "asr"):
            self._local.asr = self._hama.ASRModel()
        wav = np.ascontiguousarray(segment, dtype=np.float32).reshape(1, -1)
        log_probs, out_lengths = self._local.asr.session.run(
            ["log_probs", "out_lengths"], {"waveform": wav, "waveform_lengths": np.array([wav.shape[1]])}
        )
        return np.asarray(log_probs[0, : int(np.asarray(out_lengths).reshape(-1)[0])], dtype=np.float32)
