"""A reference take's style on the network's own style input, not only on the output.

A stream's style (engine/style.py) scales its regions' motion on the output by the take's profile over the
model's own. The network has a style input of its own, which a mood already uses (engine/sampling.py): a vector
from the model's style encoder that moves the articulation, the smile, the brows and, a little, the head toward a
take's (docs/STYLE.md, "The network's own style"). With the network style on, a take reaches it too:

- its style vector: the model's style encoder over the take's half-overlapping windows (``take_style``, the
  export's ``style_encoder.onnx``), once per take;
- its response: the profile of the model's motion with that vector over its profile with the null style, on
  the bundled sample line: baked (4 steps, seed 0), for lines and bakes; and, where the engine measures it
  (``LiveProfiles``), streamed live with the engine's preset and stages, for live streams. The output's gains
  are then measured against the model's profile scaled by it (``Style.gains``), so a take that already makes
  the network move its brows 1.5 times as much gets a brow gain 1.5 times smaller, and the output still aims
  at the take's profile (how closely: benchmarks/network_takes.json, docs/STYLE.md).

Takes are made ready before a stream uses them, several at once where they can be (the live measurement
streams them side by side): the configured one when the engine is made, the built-in ones as it warms up, a
file given through the Python API on the caller's thread. Never on the engine's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import numpy as np

from ksdiff_runtime import assets
from ksdiff_runtime.backends.base import Backend, take_style
from ksdiff_runtime.inputs.guards import load_audio

from .controls import Controls
from .offline import animate, clip_inputs
from .style import NetworkStyle, Style, StyleProfile

log = logging.getLogger("ksdiff_runtime.engine")

STEPS = 4  # DDIM steps of the bakes that measure a take's response
RESPONSE_BOUNDS = (0.25, 4.0)  # a response outside these is a measurement gone wrong, not a style: bounded
# The profiles of live streams of 16 kHz audio, one per network style vector (None: the null style), streamed
# side by side by an engine like the one that will use them (StreamingEngine.live_profiles)
LiveProfiles = Callable[[np.ndarray, list[np.ndarray | None]], list[StyleProfile]]


def response(styled: StyleProfile, null: StyleProfile) -> StyleProfile:
    """``styled`` over ``null``, quantity by quantity, bounded (``RESPONSE_BOUNDS``)."""

    def ratio(a: float, b: float) -> float:
        return float(np.clip(a / b if b > 0 else 1.0, *RESPONSE_BOUNDS))

    return StyleProfile(ratio(styled.head, null.head), ratio(styled.expression, null.expression),
                        ratio(styled.articulation, null.articulation))


class NetworkStyles:
    """The network's side of the takes streams use, made once per take and kept (thread-safe). ``live``: how the
    engine streams the sample line live (None: live streams use the baked response too)."""

    def __init__(self, backend: Backend, live: LiveProfiles | None = None) -> None:
        self.backend = backend
        self.live = live
        self._lock = threading.Lock()
        self._made: dict[tuple[str, StyleProfile], NetworkStyle] = {}
        self._audio: np.ndarray | None = None  # the sample line, and its model inputs, read on first use
        self._inputs = None
        self._null: tuple[StyleProfile, StyleProfile | None] | None = None  # its null-style profiles: baked, live

    def controls(self, controls: Controls) -> Controls:
        """``controls`` with its style's network side attached (the same object when there is nothing to do)."""
        style = self.attach(controls.style)
        return controls if style is controls.style else dataclasses.replace(controls, style=style)

    def attach(self, style: Style | None) -> Style | None:
        """``style`` with its ``NetworkStyle``; None, a style that has one, or one without its take's frames (it
        stays on the output only) as they are."""
        return self.attach_all([style])[0]

    def attach_all(self, styles: list[Style | None]) -> list[Style | None]:
        """``attach`` for each, the ones not made yet measured together."""
        todo = [s for s in styles if s is not None and s.network is None and s.take is not None]
        if any(_key(s) not in self._made for s in todo):
            # measuring takes seconds: only a caller with a new take waits on the lock, so a server thread looking
            # up a take made at warm-up never waits behind another caller's measurement
            with self._lock:
                new = list({_key(s): s for s in todo if _key(s) not in self._made}.values())
                if new:
                    for s, made in zip(new, self._make(new), strict=True):
                        self._made[_key(s)] = made
        return [s if s not in todo else dataclasses.replace(s, network=self._made[_key(s)]) for s in styles]

    def _make(self, styles: list[Style]) -> list[NetworkStyle]:
        vectors = [take_style(self.backend, *s.take) for s in styles]
        if self._inputs is None:
            self._audio, _ = load_audio(assets.SAMPLE_SPEECH)
            self._inputs = clip_inputs(self.backend, self._audio,
                                       assets.SAMPLE_SPEECH.with_suffix(".txt").read_text())
        first = self._null is None
        baked = self._baked([None] * first + vectors)
        live = None if self.live is None else self.live(self._audio, [None] * first + vectors)
        if first:
            self._null = (baked.pop(0), None if live is None else live.pop(0))
        null_baked, null_live = self._null
        made = []
        for s, v, b, i in zip(styles, vectors, baked, range(len(styles)), strict=True):
            rb = response(b, null_baked)
            rl = rb if live is None else response(live[i], null_live)
            log.info("style %s on the network: it moves the head %.2fx, the brows %.2fx and the jaw %.2fx by itself "
                     "live (%.2fx, %.2fx, %.2fx baked); the output's gains make up the rest", s.name, rl.head,
                     rl.expression, rl.articulation, rb.head, rb.expression, rb.articulation)
            made.append(NetworkStyle(v, rb, rl))
        return made

    def _baked(self, vectors: list[np.ndarray | None]) -> list[StyleProfile]:
        """The baked profiles of the sample line with each vector (None: the null style), in one batch."""
        if not vectors:
            return []
        null = self.backend.constants.style_null
        # on the calling thread: a take set live is measured beside the live streams' rounds
        anims = animate(self.backend, [self._inputs] * len(vectors), steps=STEPS, seeds=[0] * len(vectors),
                        style=np.stack([null if v is None else v for v in vectors]), parts=False)
        return [StyleProfile.of(a.blendshapes, a.head) for a in anims]


def _key(style: Style) -> tuple[str, StyleProfile]:
    return style.name, style.profile
