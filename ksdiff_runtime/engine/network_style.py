"""A reference take's style on the network's own style input, not only on the output.

A stream's style (engine/style.py) scales its regions' motion on the output by the take's profile over the
model's own. The network has a style input of its own, which a mood already uses (engine/sampling.py): a vector
from the model's style encoder that moves the articulation, the smile, the brows and, a little, the head toward a
take's (docs/STYLE.md, "The network's own style"). With the network style on, a take reaches it too:

- its style vector: the model's style encoder over the take's half-overlapping windows (``take_style``, the
  export's ``style_encoder.onnx``), once per take;
- its response: the profile of the model's motion with that vector over its profile with the null style, both
  baked (4 steps, seed 0) from the bundled sample line. The output's gains are then measured against the
  model's profile scaled by it (``Style.gains``), so a take that already makes the network move its brows
  1.5 times as much gets a brow gain 1.5 times smaller, and the output aims at the take's profile still. One
  baked line predicts a live stream's response roughly: benchmarks/network_takes.json, docs/STYLE.md.

A take costs a style encoder call and a bake of the 6.8 s sample line, 0.08 s on a 2-core CPU (the first 0.9 s:
the line's features and its bake with the null style): the runtime does it before a stream uses the take (the
configured one when the engine is made, the built-in ones as it warms up, a file given through the Python API on
the caller's thread), never on the engine's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

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


class NetworkStyles:
    """The network's side of the takes streams use, made once per take and kept (thread-safe)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._made: dict[tuple[str, StyleProfile], NetworkStyle] = {}
        self._inputs = None  # the sample line's model inputs, made on first use
        self._null: StyleProfile | None = None  # the model's profile on it with the null style

    def controls(self, controls: Controls) -> Controls:
        """``controls`` with its style's network side attached (the same object when there is nothing to do)."""
        style = self.attach(controls.style)
        return controls if style is controls.style else dataclasses.replace(controls, style=style)

    def attach(self, style: Style | None) -> Style | None:
        """``style`` with its ``NetworkStyle``; None, a style that has one, or one without its take's frames (it
        stays on the output only) as they are."""
        if style is None or style.network is not None or style.take is None:
            return style
        key = (style.name, style.profile)
        with self._lock:
            made = self._made.get(key)
            if made is None:
                made = self._made[key] = self._make(style)
        return dataclasses.replace(style, network=made)

    def _make(self, style: Style) -> NetworkStyle:
        vector = take_style(self.backend, *style.take)
        if self._inputs is None:
            audio, _ = load_audio(assets.SAMPLE_SPEECH)
            self._inputs = clip_inputs(self.backend, audio, assets.SAMPLE_SPEECH.with_suffix(".txt").read_text())
            self._null = self._profile(None)
        styled = self._profile(vector)
        null = self._null

        def ratio(a: float, b: float) -> float:
            return float(np.clip(a / b if b > 0 else 1.0, *RESPONSE_BOUNDS))

        response = StyleProfile(ratio(styled.head, null.head), ratio(styled.expression, null.expression),
                                ratio(styled.articulation, null.articulation))
        log.info("style %s on the network: it moves the head %.2fx, the brows %.2fx and the jaw %.2fx by itself; the "
                 "output's gains make up the rest", style.name, response.head, response.expression,
                 response.articulation)
        return NetworkStyle(vector, response)

    def _profile(self, vector: np.ndarray | None) -> StyleProfile:
        anim = animate(self.backend, [self._inputs], steps=STEPS, seeds=[0],
                       style=None if vector is None else vector[None])[0]
        return StyleProfile.of(anim.blendshapes, anim.head)
