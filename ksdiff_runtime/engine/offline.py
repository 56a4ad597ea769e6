"""Whole-clip animation: audio in, frames out, with the same sliding windows a stream uses.

The clip is cut into windows of N new frames; each window sees the C frames generated
before it (so consecutive windows join smoothly), the encoder's past context and the
model's lookahead, exactly as in training. Several clips are animated in one batch, on any
backend (a torch model through ``TorchBackend``), through the engine's one sampler.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.backends.base import Backend
from ksdiff_runtime.features.frontend import BlockwiseFrontEnd, make_front_end
from ksdiff_runtime.features.prosody import normalized_prosody, prosody
from ksdiff_runtime.features.streaming_frontend import StreamingPosteriorgramFrontEnd
from ksdiff_runtime.features.transcript import phoneme_tokens
from ksdiff_runtime.inputs.guards import sanitize
from ksdiff_runtime.motion import take_frames
from ksdiff_runtime.parallel import one_blas_thread, row_parts, run_parts, single_thread_cpu

from .closure import ClosureConfig
from .gate import GateConfig, gate_clip
from .liveliness import Liveliness, LivelinessConfig
from .sampling import Guidance, WindowBatch, sample_windows
from .stream import padded_samples


@dataclass
class ClipInputs:
    feats: np.ndarray  # [T, F]
    prosody: np.ndarray  # [T, 2]
    tokens: np.ndarray  # [P] transcript phoneme ids (empty: no transcript)
    audio: np.ndarray | None = None  # the 16 kHz audio they come from, sanitised and padded (for the voice gate)
    seed: int = 0  # the bake's seed when none is given: audio_seed of that audio before padding


@dataclass
class Animation:
    blendshapes: np.ndarray  # [T, 52] weights 0..1
    head: np.ndarray  # [T, 3] pitch, yaw, roll (radians)
    key_expr: np.ndarray  # [T] KEL keyframe probability
    key_pose: np.ndarray  # [T]
    fps: int = motion.FPS

    @property
    def gaze(self) -> np.ndarray:
        return motion.gaze_from_blendshapes(self.blendshapes)


_FRONT_ENDS: dict[str, BlockwiseFrontEnd] = {}


def clip_inputs(
    backend: Backend, audio16k: np.ndarray, text: str | None = None, schedule: str = "offline", fps: int = motion.FPS,
    streaming_recogniser: bool = True,
) -> ClipInputs:
    """Model inputs for a whole clip of 16 kHz audio (sanitised here: NaN/Inf zeroed, clipped).

    schedule "offline" runs the front-end once over the clip (fast); "stream" computes it block by
    block with the windowed recogniser. The clip is padded with silence, as a stream is at its end, so
    the frames reach its last partial frame period at output rate ``fps``. ``streaming_recogniser``:
    a posteriorgram model's offline features come from the streaming recogniser over the whole clip (the
    frames a live stream of it reads, features/streaming_frontend.py); False: from hama's full-context
    recogniser.
    """
    if schedule not in ("offline", "stream"):
        raise ValueError(f"schedule must be 'offline' or 'stream', not {schedule!r}")
    audio, _ = sanitize(audio16k)
    seed = audio_seed(audio)  # the audio as given, whatever the output rate pads it to
    audio = np.pad(audio, (0, padded_samples(audio.size, fps) - audio.size))
    cfg = backend.constants.cfg
    streaming = streaming_recogniser and cfg.front_end.name == "ppg"
    key = repr(cfg.front_end) + (" streaming" if streaming else "")
    if key not in _FRONT_ENDS:
        # the whole clip's recogniser call on every core (the model's calls stay on one thread each: `animate`)
        _FRONT_ENDS[key] = (StreamingPosteriorgramFrontEnd(cfg.front_end, recogniser_threads=os.cpu_count() or 1)
                            if streaming
                            else make_front_end(dataclasses.replace(cfg.front_end, recogniser="full-context")))
    front_end = _FRONT_ENDS[key]
    one_blas_thread()  # the log-mel's product: OpenBLAS's spinning threads would take a core from `animate`
    feats = front_end.offline(audio) if schedule == "offline" else front_end(audio)
    pros = normalized_prosody(prosody(audio))
    tokens = phoneme_tokens(text, cfg.max_text_tokens) if text else np.zeros(0, dtype=np.int64)
    return ClipInputs(feats.astype(np.float32), pros.astype(np.float32), tokens, audio, seed)


def gate_animation(anim: Animation, audio16k: np.ndarray, config: GateConfig) -> Animation:
    """The animation with its mouth resting where Silero VAD hears no voice (engine/gate.py): exactly
    what a stream of the same audio gets from the gate."""
    from ksdiff_runtime.features.vad import shared_vad

    values = np.concatenate([anim.blendshapes, anim.head], axis=1)
    gated = gate_clip(values, audio16k, config, shared_vad())
    D = anim.blendshapes.shape[1]
    return Animation(gated[:, :D], anim.head, anim.key_expr, anim.key_pose, anim.fps)


def close_animation(anim: Animation, inputs: ClipInputs, config: ClosureConfig) -> Animation:
    """The animation with the lips sealed where the recogniser hears /p b m/ in its features (engine/closure.py),
    before the voice gate, as a stream's; a ``low-latency`` stream reads its features 10 ms before each frame's
    period ends, so its recogniser may hear a bilabial a frame later than a bake's."""
    blendshapes = config.apply(anim.blendshapes, inputs.feats, 0)
    return Animation(blendshapes, anim.head, anim.key_expr, anim.key_pose, anim.fps)


def liven_animation(anim: Animation, seed: int, config: LivelinessConfig) -> Animation:
    """The animation with blinks, gaze micro-saccades and a centred head (engine/liveliness.py): what a
    stream with the same seed gets (after the voice gate, which goes first)."""
    values = Liveliness(config, seed).apply(np.concatenate([anim.blendshapes, anim.head], axis=1))
    D = anim.blendshapes.shape[1]
    return Animation(values[:, :D], values[:, D:], anim.key_expr, anim.key_pose, anim.fps)


def audio_seed(audio: np.ndarray) -> int:
    """A bake's seed when none is given: from its samples, so the same audio bakes the same and different
    lines differ (with one seed for all, every line's head would sway the same way: engine/liveliness.py)."""
    return zlib.crc32(np.ascontiguousarray(audio, np.float32).tobytes())


def bake_animations(
    backend: Backend,
    clips: list[ClipInputs],
    steps: int = 4,
    seeds: list[int] | None = None,
    style: np.ndarray | None = None,
    guidance: Guidance | None = None,
    closure: ClosureConfig | None = None,
    gate: GateConfig | None = None,
    liveliness: LivelinessConfig | None = None,
) -> list[Animation]:
    """What ``bake`` makes of clips, in one batch: the network (``animate``), then the stages it applies after
    it in a stream's order, each when given: the bilabial closure, the voice gate (on each clip's own
    sanitised audio) and liveliness (with the clip's seed; ``seeds`` None: each clip's own, ``ClipInputs.seed``,
    as `bake` gives it)."""
    seeds = seeds or [c.seed for c in clips]
    anims = animate(backend, clips, steps=steps, seeds=seeds, style=style, guidance=guidance)
    if closure is not None:
        anims = [close_animation(a, c, closure) for a, c in zip(anims, clips, strict=True)]
    if gate is not None:
        anims = [gate_animation(a, c.audio, gate) for a, c in zip(anims, clips, strict=True)]
    if liveliness is not None:
        anims = [liven_animation(a, s, liveliness) for a, s in zip(anims, seeds, strict=True)]
    return anims


def animate(
    backend: Backend,
    clips: list[ClipInputs],
    steps: int = 4,
    seeds: list[int] | None = None,
    style: np.ndarray | None = None,  # [B, style_dim] or None (the null style)
    guidance: Guidance | None = None,
    use_kel: bool = True,
    window: int | None = None,
    parts: bool = True,
) -> list[Animation]:
    """Animate clips in one batch; each clip's noise comes from its own seed (default 0).

    With ``parts``, on a CPU backend whose calls use one thread (as `bake` loads ONNX Runtime:
    ``parallel.single_thread_cpu``), the clips are cut into one part per core, each part's windows run at once
    on its own thread: a clip's frames do not depend on the clips beside it, so they are the same either way.
    Without (a measurement beside live streams, which need the cores), the batch runs on the calling thread."""
    seeds = seeds or [0] * len(clips)
    if len(seeds) != len(clips) or (style is not None and len(style) != len(clips)):
        raise ValueError(f"{len(clips)} clips need as many seeds and style rows, got {len(seeds)} seeds and "
                         f"{'no style' if style is None else f'{len(style)} style rows'}")
    empty = [i for i, c in enumerate(clips) if len(c.feats) == 0]
    if empty and len(empty) < len(clips):  # no frames to make (audio shorter than a sample): the others alone
        keep = [i for i, c in enumerate(clips) if len(c.feats)]
        made = iter(animate(backend, [clips[i] for i in keep], steps, [seeds[i] for i in keep],
                            None if style is None else style[keep], guidance, use_kel, window, parts))
        cfg = backend.constants.cfg
        none = Animation(np.zeros((0, cfg.expr_dim), np.float32), np.zeros((0, cfg.pose_dim), np.float32),
                         np.zeros(0, np.float32), np.zeros(0, np.float32))
        return [none if i in empty else next(made) for i in range(len(clips))]
    cut = parts and single_thread_cpu(backend)
    pieces = row_parts(len(clips), os.cpu_count() or 1, min_rows=1) if cut else []
    if len(pieces) < 2:
        return _animate_batch(backend, clips, steps, seeds, style, guidance, use_kel, window)

    def part(a: int, b: int) -> list[Animation]:
        rows = None if style is None else style[a:b]
        return _animate_batch(backend, clips[a:b], steps, seeds[a:b], rows, guidance, use_kel, window)

    return [anim for anims in run_parts(part, pieces) for anim in anims]


def _animate_batch(
    backend: Backend, clips: list[ClipInputs], steps: int, seeds: list[int], style: np.ndarray | None,
    guidance: Guidance | None, use_kel: bool, window: int | None,
) -> list[Animation]:
    """``animate`` of clips in one batch on the calling thread."""
    cfg = backend.constants.cfg
    B = len(clips)
    N = window or cfg.train_window_frames
    C, E, L = cfg.motion_context_frames, cfg.encoder_context_frames, cfg.lookahead_frames
    lengths = [len(c.feats) for c in clips]
    T = max(lengths) if lengths else 0
    expr = np.zeros((B, T, cfg.expr_dim), dtype=np.float32)
    pose = np.zeros((B, T, cfg.pose_dim), dtype=np.float32)
    keys = np.zeros((B, T, 2), dtype=np.float32)
    if T == 0:
        return [Animation(expr[i, :0], pose[i, :0], keys[i, :0, 0], keys[i, :0, 1]) for i in range(B)]
    # any integer seed, taken as a uint64 as a stream takes the protocol's int64 (engine.py, liveliness.py)
    rngs = [np.random.default_rng(int(s) & 0xFFFF_FFFF_FFFF_FFFF) for s in seeds]
    P = max(1, max(len(c.tokens) for c in clips))
    text = np.zeros((B, P), dtype=np.int64)
    for i, c in enumerate(clips):
        text[i, : len(c.tokens)] = c.tokens
    text_keep = np.array([float(len(c.tokens) > 0) for c in clips], dtype=np.float32)
    # clips shorter than the batch's longest repeat their last feature frame (trimmed after)
    for w0 in range(0, T, N):
        frames = np.arange(w0 - C, w0)
        known = np.repeat((frames >= 0)[None].astype(np.float32), B, axis=0)
        # the C frames generated before this window (zeros, flagged unknown, before the clip starts)
        noise = np.stack([rng.standard_normal((N, cfg.expr_dim + cfg.pose_dim), np.float32) for rng in rngs])
        batch = WindowBatch(
            feats=np.stack([take_frames(c.feats, w0 - E, E + N + L) for c in clips]),
            prosody=np.stack([take_frames(c.prosody, w0 - E, E + N + L) for c in clips]),
            prev_expr=np.stack([take_frames(expr[i], w0 - C, C) for i in range(B)]) * known[..., None],
            prev_pose=np.stack([take_frames(pose[i], w0 - C, C) for i in range(B)]) * known[..., None],
            known=known, noise=noise, style=style, text=text, text_keep=text_keep,
        )
        out = sample_windows(backend, batch, steps, guidance, use_kel)
        n = min(N, T - w0)
        expr[:, w0 : w0 + n] = out.expr[:, :n]
        pose[:, w0 : w0 + n] = out.pose[:, :n]
        keys[:, w0 : w0 + n, 0] = out.key_expr[:, :n]
        keys[:, w0 : w0 + n, 1] = out.key_pose[:, :n]
    return [
        Animation(expr[i, : lengths[i]], pose[i, : lengths[i]], keys[i, : lengths[i], 0], keys[i, : lengths[i], 1])
        for i in range(B)
    ]
