"""A streaming variant of hama's phoneme recogniser: chunked attention, bounded lookahead, cached state.

Same network and same weights as ``recogniser.Recogniser`` (it is a subclass: one state dict, the
same parameter names), run two ways:

- ``forward(waveform, lengths)``: the full-context recogniser, unchanged (whole-utterance attention,
  centred depthwise convolutions); the teacher of distillation and the reference of evaluation.
- ``forward_chunked(waveform, lengths, lookahead)``: the *chunked* recogniser over whole clips, and
  ``new_stream`` / ``stream`` / ``finish``: the same chunked recogniser fed audio piece by piece,
  computing only its new frames. A test shows the two give the same log-probabilities.

The chunked recogniser. Output frames (20 ms, frame q centred on sample 320 q) are grouped in
chunks of ``lookahead + 1`` frames, aligned to the stream start. Inside every block:

- self-attention: a frame in chunk [s, e] attends to frames s - left_frames .. e: its own chunk
  (so at most ``lookahead`` frames ahead, the chunk's first frame; its last frame 0) and a bounded
  left context, whose keys and values a stream caches;
- depthwise convolution (kernel 31): the 16 taps on the frame and before it as in the full model
  (a stream caches the last 15 inputs), and of the 15 taps after it only those that stay inside
  the frame's chunk (at most ``lookahead``); the others read as zeros.

Chunks are aligned in every block, so lookahead does not compound through the 4 blocks: a chunk's
frames depend on no audio after the chunk's last frame's input, which is the STFT's and the input
convolution's reach, 360 samples (22.5 ms) past that frame's centre. So frame q is final once the
stream holds 320 (e + 1) + 40 samples, e the last frame of q's chunk: at most
``20 * lookahead + 22.5`` ms after q's centre. The log-mel and the input convolution are per frame,
so a stream keeps only the audio the next STFT frames overlap (< 400 samples), the one mel frame
the input convolution overlaps, and frames waiting for their chunk to complete.

Initialised from hama's full-context weights the chunked recogniser is a different function (no
future beyond its chunk); ``ksdiff_runtime.training.streaming_distil`` distils it to the full
model's whole-utterance output, and benchmarks/streaming_recogniser.py measures both.

End of stream: ``finish`` computes the last frames as the whole clip does (the STFT's reflect
padding at the clip's end, the last chunk cut short), so a stream's frames are exactly the clip's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ksdiff_runtime.features.recogniser import (
    CONV_KERNEL,
    HEADS,
    HOP,
    MEL_FLOOR,
    N_FFT,
    N_MELS,
    STFT_HOP,
    WIDTH,
    ConformerBlock,
    Recogniser,
    export_without_weights,
    num_frames,
)

MAX_LOOKAHEAD = 3  # output frames (20 ms each)
DEFAULT_LEFT_FRAMES = 100  # attention left context: 2 s
CONV_LEFT = CONV_KERNEL // 2  # 15: depthwise taps before the frame (and after it in the full model)
DEPTHWISE_TAPS = CONV_LEFT + 1 + MAX_LOOKAHEAD  # 19: the taps a chunked frame can read (-15 .. +3)
PAD = N_FFT // 2  # the STFT's reflect padding at each end of a clip (200 samples)


@dataclass
class BlockCache:
    """One block's left context for the next frames: attention keys and values of up to
    ``left_frames`` past frames [B, heads, m, 36], and the depthwise convolution's last 15 inputs
    [B, 144, 15] (zeros before the stream start, as the full model's zero padding)."""

    keys: torch.Tensor
    values: torch.Tensor
    conv: torch.Tensor


@dataclass
class StreamState:
    """Everything one stream carries between calls (one per stream; never shared)."""

    lookahead: int
    left_frames: int
    samples: int = 0  # samples received so far
    audio: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # samples [audio_start, samples)
    audio_start: int = 0
    mel_next: int = 0  # next STFT frame to compute
    # STFT frames from index 2 * frames_in - 1 on ([80, k]; index -1 is the input conv's zero padding)
    mel: torch.Tensor = field(default_factory=lambda: torch.zeros(N_MELS, 1))
    frames_in: int = 0  # output frames through the input convolution
    pending: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 0, WIDTH))  # waiting for their chunk
    frames_out: int = 0  # output frames emitted (a whole number of chunks until finish)
    blocks: list[BlockCache] = field(default_factory=list)
    finished: bool = False


def chunk_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, chunk: int, left_frames: int) -> torch.Tensor:
    """[n_q, n_k] True where a query frame may attend to a key frame (absolute frame indices)."""
    start = torch.div(query_pos, chunk, rounding_mode="floor") * chunk
    k = key_pos[None, :]
    return (k >= (start - left_frames)[:, None]) & (k <= (start + chunk - 1)[:, None])


def chunked_depthwise(g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos0: int, chunk: int) -> torch.Tensor:
    """Depthwise convolution (kernel 31) of frames pos0.. with the taps after a frame cut at its chunk's end.

    ``g`` [B, C, 15 + n]: the 15 frames before pos0, then frames pos0 .. pos0 + n - 1. Returns [B, C, n].
    """
    n = g.shape[2] - CONV_LEFT
    y = F.conv1d(g, weight[:, :, : CONV_LEFT + 1], bias, groups=g.shape[1])  # taps -15 .. 0
    pos = torch.arange(pos0, pos0 + n, device=g.device)
    end = torch.div(pos, chunk, rounding_mode="floor") * chunk + chunk - 1
    for t in range(1, min(chunk, n)):  # tap +t: the frame t ahead, when it is in the same chunk
        inside = (pos[: n - t] + t <= end[: n - t]).to(g.dtype)
        ahead = g[:, :, CONV_LEFT + t :] * weight[None, :, 0, CONV_LEFT + t, None] * inside
        y = y + F.pad(ahead, (0, t))
    return y


def block_chunked(
    block: ConformerBlock,
    x: torch.Tensor,
    pos0: int,
    valid: torch.Tensor,
    cache: BlockCache,
    chunk: int,
    left_frames: int,
) -> tuple[torch.Tensor, BlockCache]:
    """One Conformer block over frames pos0 .. pos0 + n - 1 (``x`` [B, n, 144], ``valid`` [B, n]),
    with ``cache`` holding the frames before pos0. Returns the block's output and the cache for the
    frames after these (pos0 must be a chunk start)."""
    B, n, C = x.shape
    x = x + 0.5 * block.ffn1(x)

    attn = block.attn
    q, k, v = attn.in_proj(block.attn_norm(x)).view(B, n, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
    keys = torch.cat([cache.keys, k], dim=2)
    values = torch.cat([cache.values, v], dim=2)
    m = cache.keys.shape[2]
    query_pos = torch.arange(pos0, pos0 + n, device=x.device)
    key_pos = torch.arange(pos0 - m, pos0 + n, device=x.device)
    key_valid = torch.cat([torch.ones(B, m, dtype=torch.bool, device=x.device), valid], dim=1)
    mask = chunk_mask(query_pos, key_pos, chunk, left_frames)[None] & key_valid[:, None, :]
    mask = mask | (query_pos[:, None] == key_pos[None, :])[None]  # a padded frame still attends to itself
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
    x = x + attn.out_proj(y.transpose(1, 2).reshape(B, n, C))

    conv = block.conv
    g = F.glu(conv.pointwise1(conv.norm(x).transpose(1, 2)), dim=1)
    g = g.masked_fill(~valid[:, None, :], 0.0)
    g = torch.cat([cache.conv, g], dim=2)
    h = chunked_depthwise(g, conv.depthwise.weight, conv.depthwise.bias, pos0, chunk)
    x = x + conv.pointwise2(F.silu(h)).transpose(1, 2)

    x = x + 0.5 * block.ffn2(x)
    x = block.norm(x)
    return x, BlockCache(keys[:, :, keys.shape[2] - min(left_frames, keys.shape[2]) :],
                         values[:, :, values.shape[2] - min(left_frames, values.shape[2]) :],
                         g[:, :, g.shape[2] - CONV_LEFT :])


class StreamingRecogniser(Recogniser):
    """hama's recogniser with a chunked (streaming) mode sharing its weights; see the module docstring."""

    def __init__(self, lookahead: int = 2, left_frames: int = DEFAULT_LEFT_FRAMES) -> None:
        super().__init__()
        check_lookahead(lookahead)
        if left_frames < 1:
            raise ValueError(f"left_frames must be >= 1, got {left_frames}")
        self.lookahead = lookahead
        self.left_frames = left_frames

    @classmethod
    def from_hama_streaming(cls, lookahead: int = 2, left_frames: int = DEFAULT_LEFT_FRAMES) -> StreamingRecogniser:
        """Initialised from the installed hama's full-context weights."""
        model = cls(lookahead, left_frames)
        model.load_state_dict(Recogniser.from_hama().state_dict())
        return model.eval()

    def empty_caches(self, batch: int) -> list[BlockCache]:
        p = self.proj.weight
        d = WIDTH // HEADS
        return [
            BlockCache(p.new_zeros(batch, HEADS, 0, d), p.new_zeros(batch, HEADS, 0, d),
                       p.new_zeros(batch, WIDTH, CONV_LEFT))
            for _ in self.blocks
        ]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.proj(x.transpose(1, 2)).transpose(1, 2), dim=-1)

    # --- whole clips ------------------------------------------------------------------------------
    def forward_chunked(
        self, waveform: torch.Tensor, lengths: torch.Tensor | None = None, lookahead: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunked recogniser over whole clips: [B, N] (zero-padded, ``lengths`` in samples) ->
        log-probabilities [B, N // 320 + 1, 191] and their lengths, as ``forward``."""
        lookahead = self.lookahead if lookahead is None else lookahead
        check_lookahead(lookahead)
        B, N = waveform.shape
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=waveform.device)
        if int(lengths.min()) <= PAD:
            raise ValueError(f"clips need more than {PAD} samples for the STFT's reflect padding")
        # each clip reflect-padded at its own ends (as ``log_mel``); positions past a short clip are masked below
        i = torch.arange(-PAD, N + PAD, device=waveform.device)[None, :]
        n = lengths[:, None]
        idx = torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i)).clamp(0, N - 1)
        mel = self._log_mel_frames(torch.gather(waveform, 1, idx))
        mel_valid = torch.arange(mel.shape[2], device=mel.device)[None, :] < (lengths // STFT_HOP + 1)[:, None]
        mel = mel.masked_fill(~mel_valid[:, None, :], 0.0)
        x = F.gelu(self.input_conv(mel)).transpose(1, 2)
        out_lengths = num_frames(lengths)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < out_lengths[:, None]
        for block, cache in zip(self.blocks, self.empty_caches(B), strict=True):
            x, _ = block_chunked(block, x, 0, valid, cache, lookahead + 1, self.left_frames)
        return self._head(x).masked_fill(~valid[:, :, None], 0.0), out_lengths

    # --- streams ----------------------------------------------------------------------------------
    def new_stream(self, lookahead: int | None = None) -> StreamState:
        """A fresh stream's state (the stream starts at its first sample)."""
        lookahead = self.lookahead if lookahead is None else lookahead
        check_lookahead(lookahead)
        p = self.proj.weight
        return StreamState(lookahead=lookahead, left_frames=self.left_frames, audio=p.new_zeros(0),
                           mel=p.new_zeros(N_MELS, 1), pending=p.new_zeros(1, 0, WIDTH), blocks=self.empty_caches(1))

    @torch.no_grad()
    def stream(self, state: StreamState, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Feed a stream its next samples (16 kHz mono, any count); returns the log-probabilities
        [n, 191] of the frames that became final (whole chunks; n may be 0)."""
        if state.finished:
            raise ValueError("the stream has finished")
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32)).to(state.audio.device).reshape(-1)
        state.audio = torch.cat([state.audio, audio])
        state.samples += audio.numel()
        return self._advance(state, final=False)

    @torch.no_grad()
    def finish(self, state: StreamState) -> torch.Tensor:
        """End a stream: the log-probabilities [n, 191] of its remaining frames, computed as the
        whole clip's last frames are (reflect padding at the end, a last chunk cut short)."""
        if state.finished:
            raise ValueError("the stream has finished")
        if state.samples <= PAD:
            raise ValueError(f"clips need more than {PAD} samples for the STFT's reflect padding")
        out = self._advance(state, final=True)
        state.finished = True
        return out

    def _advance(self, state: StreamState, final: bool) -> torch.Tensor:
        n = state.samples
        # 1. STFT frames: frame m spans padded samples [160 m, 160 m + 400), audio [160 m - 200, 160 m + 200);
        # before the end it needs all of them (and sample 200 for the start's reflection)
        ready_mel = (n - PAD) // STFT_HOP + 1 if n > PAD else 0
        mel_total = n // STFT_HOP + 1 if final else ready_mel
        if mel_total > state.mel_next:
            idx = torch.arange(STFT_HOP * state.mel_next, STFT_HOP * (mel_total - 1) + N_FFT) - PAD
            idx = idx.abs()  # reflect at the start
            if final:
                idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)  # reflect at the end
            segment = state.audio[idx - state.audio_start]
            state.mel = torch.cat([state.mel, self._log_mel_frames(segment[None])[0]], dim=1)
            state.mel_next = mel_total
        # keep only the audio later STFT frames can read (the end's reflection reads the last 201 samples)
        keep_from = max(0, min(STFT_HOP * state.mel_next - PAD, n - PAD - 1))
        state.audio = state.audio[keep_from - state.audio_start :]
        state.audio_start = keep_from

        # 2. input convolution (kernel 3, stride 2): frame q reads STFT frames 2q - 1 .. 2q + 1
        total = n // HOP + 1 if final else (state.mel_next - 2) // 2 + 1
        new = total - state.frames_in
        if new > 0:
            mel = state.mel
            need = 2 * new + 1
            if mel.shape[1] < need:  # past the clip's last STFT frame: the convolution's zero padding
                mel = F.pad(mel, (0, need - mel.shape[1]))
            x = F.gelu(F.conv1d(mel[None, :, :need], self.input_conv.weight, self.input_conv.bias, stride=2))
            state.pending = torch.cat([state.pending, x.transpose(1, 2)], dim=1)
            state.mel = mel[:, 2 * new :]
            state.frames_in = total

        # 3. the blocks, over whole chunks (at the end, over what is left)
        chunk = state.lookahead + 1
        ready = state.pending.shape[1] if final else state.pending.shape[1] // chunk * chunk
        if ready == 0:
            return state.pending.new_zeros(0, self.proj.out_channels)
        x, state.pending = state.pending[:, :ready], state.pending[:, ready:]
        valid = torch.ones(1, ready, dtype=torch.bool, device=x.device)
        caches = []
        for block, cache in zip(self.blocks, state.blocks, strict=True):
            x, cache = block_chunked(block, x, state.frames_out, valid, cache, chunk, state.left_frames)
            caches.append(cache)
        state.blocks = caches
        state.frames_out += ready
        return self._head(x)[0]

    def _log_mel_frames(self, padded: torch.Tensor) -> torch.Tensor:
        """ln mel power [B, 80, k] of already padded audio [B, 160 (k - 1) + 400], rounded to float16.

        As ``log_mel``, but computed in float64: float32 sums come out a little different for
        segments of other lengths, and the float16 rounding turns that into steps of ~0.008 on
        some frames; in float64 a frame's value no longer depends on the segment it is cut from,
        so a stream's STFT frames are the whole clip's. (It differs from ``log_mel`` by such a
        rounding step on a few bands of a few frames.)"""
        x = padded.double()[:, None, :]
        real = F.conv1d(x, self.stft_real.double(), stride=STFT_HOP)
        imag = F.conv1d(x, self.stft_imag.double(), stride=STFT_HOP)
        mel = torch.einsum("bft,fm->bmt", real * real + imag * imag, self.mel_fb.double())
        return torch.log(mel.clamp_min(MEL_FLOOR)).half().float()


def check_lookahead(lookahead: int) -> None:
    if not 0 <= lookahead <= MAX_LOOKAHEAD:
        raise ValueError(f"lookahead must be 0..{MAX_LOOKAHEAD} output frames, got {lookahead}")


def stream_latency_ms(lookahead: int) -> float:
    """Worst-case audio after a frame's centre the chunked recogniser needs before the frame is final:
    the rest of its chunk plus the STFT's and input convolution's reach (360 samples)."""
    return 1000.0 * (lookahead * HOP + (STFT_HOP + PAD)) / 16000


# --- one chunk of many streams: the graph the runtime runs --------------------------------------
# The stream step's inputs and outputs (one row per stream). State: per block the attention keys and
# values of the last ``left_frames`` frames and the depthwise convolution's last 15 inputs, and which
# of the cached frames are real (a new stream's cache is zeros, none real).
STEP_INPUTS = ("audio", "mel_mask", "frame_mask", "chunk", "keys", "values", "conv", "cache_valid")
STEP_OUTPUTS = ("log_probs", "keys_out", "values_out", "conv_out", "cache_valid_out")


def step_audio_samples(frames: int) -> int:
    """Samples of audio a call over ``frames`` output frames reads: its 2 frames + 1 STFT frames."""
    return HOP * frames + N_FFT


class StreamStep(torch.nn.Module):
    """K output frames of B streams, in chunks of ``chunk`` frames, the chunked recogniser's state explicit.

    Inputs (B streams, frames q0 .. q0 + K - 1 of each, q0 a chunk start; K a whole number of chunks but
    at a stream's end; a live round: one chunk; a whole clip: all its frames):
    - ``audio`` [B, 320 K + 400]: samples 320 q0 - 360 .. 320 (q0 + K) + 40 of each stream, the reflect
      padding at the stream's ends already applied (the host's job: it knows where a stream starts and ends);
    - ``mel_mask`` [B, 2 K + 1]: 1 for the STFT frames 2 q0 - 1 .. 2 q0 + 2 K - 1 that exist, 0 for those
      before the start or past the end (the input convolution's zero padding);
    - ``frame_mask`` [B, K]: 1 for the output frames that exist (all but past a finished stream's end);
    - ``chunk`` []: int64, frames per chunk (lookahead + 1);
    - ``keys``, ``values`` [B, blocks, heads, left_frames, 36], ``conv`` [B, blocks, 15, 144],
      ``cache_valid`` [B, left_frames]: the state after the previous frames (zeros for a new stream).

    Outputs: ``log_probs`` [B, K, 191] and the state after these frames (``*_out``).
    The arithmetic of ``block_chunked`` (a frame sees its chunk and ``left_frames`` before the chunk; the
    depthwise taps after it stop at its chunk's end) with every shape but B and K fixed: a graph with no
    data-dependent shapes, for ONNX Runtime, TensorRT or a sequence batcher."""

    def __init__(self, model: StreamingRecogniser) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, mel_mask: torch.Tensor, frame_mask: torch.Tensor, chunk: torch.Tensor,
                keys: torch.Tensor, values: torch.Tensor, conv: torch.Tensor,
                cache_valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        B, K = frame_mask.shape
        C, d = WIDTH, WIDTH // HEADS
        dev = audio.device  # index tensors on the inputs' device (a CUDA run of the module)
        # Frames in rows ([B, frames, channels]) throughout: the STFT, the input convolution and the 1x1
        # convolutions are matrix products over all rows at once, and the depthwise convolution gathers each
        # frame's taps, weighs them and sums them by a product with ones. ONNX Runtime's Conv runs a grouped or
        # batched 1-D convolution a channel and a row at a time, so a live call took 1.4-1.8x as long (docs/
        # STREAMING_RECOGNISER.md); and its ReduceSum adds in another order when the rows are one frame of one
        # stream, so a stream's frames would depend on the streams beside it.
        stft = torch.arange(2 * K + 1, device=dev)[:, None] * STFT_HOP + torch.arange(N_FFT, device=dev)[None, :]
        frames = audio[:, stft]  # [B, 2 K + 1, 400]
        real = torch.matmul(frames, m.stft_real[:, 0, :].t())
        imag = torch.matmul(frames, m.stft_imag[:, 0, :].t())
        mel = torch.matmul(real * real + imag * imag, m.mel_fb)  # [B, 2 K + 1, 80]
        mel = torch.log(mel.clamp_min(MEL_FLOOR)).half().float() * mel_mask[:, :, None]
        # input convolution (kernel 3, stride 2): output frame j reads STFT frames 2 j .. 2 j + 2 of the call
        rows_in = torch.arange(K, device=dev)[:, None] * 2 + torch.arange(3, device=dev)[None, :]  # [K, 3]
        taps_in = mel[:, rows_in].reshape(B, K, 3 * N_MELS)
        w_in = m.input_conv.weight.permute(0, 2, 1).reshape(C, 3 * N_MELS)
        x = F.gelu(F.linear(taps_in, w_in, m.input_conv.bias))  # [B, K, 144]
        W = cache_valid.shape[1]
        valid = frame_mask > 0.5
        # frame i (of this call) is in chunk [start_i, start_i + chunk); the cached frames sit at -W .. -1
        i = torch.arange(K, device=dev)
        start = torch.div(i, chunk, rounding_mode="floor") * chunk
        pos = torch.arange(W + K, device=dev) - W
        sees = (pos[None, :] >= start[:, None] - W) & (pos[None, :] < start[:, None] + chunk)  # [K, W + K]
        key_valid = torch.cat([cache_valid > 0.5, valid], dim=1)  # [B, W + K]
        itself = pos[None, :] == i[:, None]  # a frame that does not exist still sees itself (no empty row)
        mask = ((sees[None] & key_valid[:, None, :]) | itself[None])[:, None]  # [B, 1, K, W + K]
        # depthwise taps -15 .. +3 of frame i: rows i .. i + 18 of g (the 15 cached frames, then the K new ones);
        # a tap after the frame is on only inside the frame's chunk and the call, and one that is off reads the
        # row of zeros after them
        offset = torch.arange(DEPTHWISE_TAPS, device=dev) - CONV_LEFT
        tap_on = (offset[None, :] <= 0) | ((i[:, None] + offset[None, :] < start[:, None] + chunk)
                                          & (i[:, None] + offset[None, :] < K))  # [K, 19]
        tap_rows = torch.where(tap_on, i[:, None] + CONV_LEFT + offset[None, :], CONV_LEFT + K)  # [K, 19]
        ones = torch.ones(1, DEPTHWISE_TAPS, device=dev)
        keys_out, values_out, conv_out = [], [], []
        for b, block in enumerate(m.blocks):
            x = x + 0.5 * block.ffn1(x)
            q, k, v = block.attn.in_proj(block.attn_norm(x)).view(B, K, 3, HEADS, d).permute(2, 0, 3, 1, 4)
            k_all = torch.cat([keys[:, b], k], dim=2)
            v_all = torch.cat([values[:, b], v], dim=2)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
            x = x + block.attn.out_proj(y.transpose(1, 2).reshape(B, K, C))
            cm = block.conv
            g = F.glu(F.linear(cm.norm(x), cm.pointwise1.weight[:, :, 0], cm.pointwise1.bias), dim=-1)
            g = torch.cat([conv[:, b], g * valid[:, :, None].to(x.dtype), torch.zeros_like(g[:, :1])], dim=1)
            # g: [B, 15 + K + 1, 144]
            taps = g[:, tap_rows] * cm.depthwise.weight[:, 0, :DEPTHWISE_TAPS].t()  # [B, K, 19, 144]
            h = torch.matmul(ones, taps)[:, :, 0] + cm.depthwise.bias  # [B, K, 144]
            x = x + F.linear(F.silu(h), cm.pointwise2.weight[:, :, 0], cm.pointwise2.bias)
            x = x + 0.5 * block.ffn2(x)
            x = block.norm(x)
            keys_out.append(k_all[:, :, K:])
            values_out.append(v_all[:, :, K:])
            conv_out.append(g[:, K:-1])
        log_probs = F.log_softmax(F.linear(x, m.proj.weight[:, :, 0], m.proj.bias), dim=-1)
        return (log_probs * frame_mask[:, :, None], torch.stack(keys_out, 1), torch.stack(values_out, 1),
                torch.stack(conv_out, 1), torch.cat([cache_valid, frame_mask], dim=1)[:, K:])


def export_stream_step(path: Path, left_frames: int = DEFAULT_LEFT_FRAMES) -> None:
    """Write ``StreamStep`` as an ONNX graph without weights (as ``recogniser.export_onnx``: every weight an
    empty external initializer named as the recogniser's state dict), with dynamic batch and frames."""
    step = StreamStep(StreamingRecogniser(lookahead=MAX_LOOKAHEAD, left_frames=left_frames)).eval()
    B, K = 2, 3
    d = WIDTH // HEADS
    n_blocks = len(step.model.blocks)
    state = torch.zeros(B, n_blocks, HEADS, left_frames, d)
    args = (torch.zeros(B, step_audio_samples(K)), torch.ones(B, 2 * K + 1), torch.ones(B, K),
            torch.tensor(K, dtype=torch.long), state, state.clone(),
            torch.zeros(B, n_blocks, CONV_LEFT, WIDTH), torch.zeros(B, left_frames))
    axes = {name: {0: "batch"} for name in STEP_INPUTS + STEP_OUTPUTS if name != "chunk"}
    axes["audio"][1] = "samples"
    axes["mel_mask"][1] = "mel_frames"
    axes["frame_mask"][1] = "frames"
    axes["log_probs"][1] = "frames"
    export_without_weights(step, args, path, STEP_INPUTS, STEP_OUTPUTS, axes, weights_prefix="model.")
