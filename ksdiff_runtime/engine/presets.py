"""Latency presets: how much audio a hop waits for and how much compute it spends.

A hop emits ``hop_frames`` new frames. It can run once the front-end features exist for
those frames plus ``model_lookahead_frames`` more; the front-end itself needs
``feature_lookahead_ms`` of audio past its last frame's period (negative: before that period
ends). The window the model denoises is ``window_frames`` long: the hop's frames, then
provisional frames past the audio (their features repeat the last known frame) that the next
hop crossfades into (the model was trained on 32-frame windows and gets much worse below ~6,
so a short hop still denoises a longer window). Latency budget for the first frame of a hop (the worst one):

    hop (hop_frames / fps) + feature lookahead + audio capture block + compute + transport
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ksdiff_runtime import motion
from ksdiff_runtime.features.frontend import FRAME_PERIOD_MS, FrontEndConfig

# The real-time bound: how far behind its audio (beyond the audio wait and one hop of compute) a
# live stream may fall before the engine sheds frames to stay current: 2 hops, and never less than
# MIN_LAG_MS (a 1-frame hop's 67 ms would shed on every scheduling hiccup of a busy machine).
MAX_LAG_HOPS = 2
MIN_LAG_MS = 100.0

# Lines (a stream in mode "line": its audio is already there, e.g. a TTS line pushed whole) are
# animated as a bake is: windows of the length the model was trained on, all of them hop frames, and
# LINE_STEPS DDIM steps; a line whose audio is all there gets the bake's features (one pass over the
# whole line). The face stops after LINE_EXPRESSION_STEPS: on 40 held-out clips (`ksdiff-runtime
# eval-stream --lines 1 --lines 2`, docs/ENGINE.md) one step was within 5 % of the 4-step bake on every
# mouth metric and two were not. The head takes all four: after one step (the x0 prediction from pure
# noise, a mean) it moved 0.22 degrees RMS, under a third of a bake's (docs/ENGINE.md, "Lines"); with four, 0.45.
LINE_STEPS = 4
LINE_EXPRESSION_STEPS = 1


@dataclass(frozen=True)
class Preset:
    name: str
    hop_frames: int  # H: frames emitted per hop
    window_frames: int  # frames denoised per hop (H + provisional)
    model_lookahead_frames: int  # feature frames past the hop the model waits for (0..cfg.lookahead_frames)
    steps: int  # DDIM steps
    crossfade_frames: int  # frames blended with the previous hop's provisional frames
    feature_block_frames: int  # frames per front-end call (3 = the 100 ms blocks the model was trained on)
    feature_lookahead_ms: int  # audio the front-end waits for past its last frame's period (may be < 0)
    # audio before a front-end group the recogniser hears (None: the model's training value);
    # the recogniser's cost grows with it, and it runs on every hop
    feature_left_context_ms: int | None = None
    # time constant of a causal low-pass on head rotation (0: off). Each hop's head motion is
    # sampled afresh, so hop boundaries add jitter at the hop rate that real heads do not have.
    head_smoothing_ms: float = 0.0
    # the expression keeps its prediction after this many of the steps (None: all; sampling.sample_windows)
    expression_steps: int | None = None

    def __post_init__(self) -> None:
        if self.hop_frames < 1 or self.window_frames < self.hop_frames:
            raise ValueError(f"preset {self.name}: need 1 <= hop_frames <= window_frames")
        if not 0 <= self.crossfade_frames <= self.window_frames - self.hop_frames:
            raise ValueError(f"preset {self.name}: crossfade_frames must be in 0..window_frames - hop_frames")
        if self.feature_block_frames < 1 or self.steps < 1 or self.model_lookahead_frames < 0:
            raise ValueError(f"preset {self.name}: feature_block_frames and steps must be >= 1")
        if self.feature_lookahead_ms <= -FRAME_PERIOD_MS:
            raise ValueError(f"preset {self.name}: feature_lookahead_ms must be > -{FRAME_PERIOD_MS:.1f} "
                             f"(a frame's period: the audio at a frame's instant must be there)")
        if self.head_smoothing_ms < 0:
            raise ValueError(f"preset {self.name}: head_smoothing_ms must be >= 0")
        if self.expression_steps is not None and not 1 <= self.expression_steps <= self.steps:
            raise ValueError(f"preset {self.name}: expression_steps must be in 1..steps ({self.steps})")

    def for_lines(self, window_frames: int, steps: int = LINE_STEPS,
                  expression_steps: int | None = LINE_EXPRESSION_STEPS) -> Preset:
        """This preset as lines use it: hops of whole ``window_frames`` windows (the model's training
        window) with the model's lookahead, ``steps`` DDIM steps (the expression's first
        ``expression_steps``, at most ``steps``), no crossfade. The front-end (its lookahead and context)
        stays this preset's: one recogniser configuration per engine."""
        expression_steps = None if expression_steps is None else min(expression_steps, steps)
        return dataclasses.replace(self, name=f"{self.name}/line", hop_frames=window_frames,
                                   window_frames=window_frames, crossfade_frames=0, steps=steps,
                                   expression_steps=expression_steps)

    def front_end_config(self, trained: FrontEndConfig) -> FrontEndConfig:
        """The model's front-end with this preset's lookahead (and context, when it sets one)."""
        fe = dataclasses.replace(trained, lookahead_ms=self.feature_lookahead_ms)
        if self.feature_left_context_ms is not None:
            fe = dataclasses.replace(fe, left_context_ms=self.feature_left_context_ms)
        return fe

    def lookahead_ms(self) -> float:
        """Audio after a frame's instant (``t_audio``) that the model had always heard when it made the frame
        (the last frame of a hop; earlier frames of a hop heard more): the L frames it looks ahead, the frame's
        own period, and the feature lookahead."""
        return 1000.0 * (self.model_lookahead_frames + 1) / motion.FPS + self.feature_lookahead_ms

    def max_lag_ms(self) -> float:
        """The stated bound: how far behind a live stream may fall (MAX_LAG_HOPS hops, at least MIN_LAG_MS)."""
        return max(MAX_LAG_HOPS * 1000.0 * self.hop_frames / motion.FPS, MIN_LAG_MS)

    def deadline_ms(self) -> float:
        """How long after its audio reached the runtime a frame may still be published: the audio wait,
        one hop of compute, and the bound ``max_lag_ms``. A frame that would be later is not computed at
        all (a gap in its stream's seq), so a stream under load stays current."""
        return self.latency_budget_ms() + 1000.0 * self.hop_frames / motion.FPS + self.max_lag_ms()

    def latency_budget_ms(self) -> float:
        """Worst-case wait for audio before a hop can run (compute and transport come on top)."""
        H, G, L = self.hop_frames, self.feature_block_frames, self.model_lookahead_frames
        # hop k starts at frame kH and waits for the front-end group holding frame kH + H + L - 1
        waited = max(-(-(k * H + H + L) // G) * G - k * H for k in range(G))
        return 1000.0 * waited / motion.FPS + self.feature_lookahead_ms


PRESETS: dict[str, Preset] = {
    # A VTuber's mic: a hop per frame, so every frame waits the same 90 ms for audio. The
    # model's full 2-frame lookahead is kept and the recogniser's dropped, and one DDIM step
    # (x0 straight from noise) is used: on held-out clips (docs/ENGINE.md) the model lookahead is
    # what keeps bilabial closures, and at short hops 1 step beat 2-4 on every mouth metric.
    # 150 ms of recogniser context (not 250) scored the same and costs a third less per hop.
    # A frame is read 10 ms before its period is all heard (23.3 ms after its instant), which hears one
    # more 10 ms log-mel frame than reading it 13 ms early and makes 1.5-1.8 points less mouth error. Audio
    # comes in 10 ms blocks (a sound card's, `serve --file`'s) and a frame waits for the block that holds
    # its last sample: read 13 ms early, 7 frames in 10 would wait for the same block and 3 for the one
    # before, so p50 and p95 latency are the same either way (docs/ENGINE.md, "10 ms early, as the audio comes").
    "low-latency": Preset("low-latency", hop_frames=1, window_frames=8, model_lookahead_frames=2, steps=1,
                          crossfade_frames=0, feature_block_frames=1, feature_lookahead_ms=-10,
                          feature_left_context_ms=150, head_smoothing_ms=100.0),
    # NPC dialogue and anything that can wait half a second: the model's full lookahead and the
    # front-end schedule it was trained on.
    "quality": Preset("quality", hop_frames=15, window_frames=19, model_lookahead_frames=2, steps=4,
                      crossfade_frames=4, feature_block_frames=3, feature_lookahead_ms=60),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
