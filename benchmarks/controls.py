"""Artists' controls, before and after: the bundled sample speech through the real engine with the default
controls and with an artist's setting, plotted (docs/controls.png) for docs/ENGINE.md "Controls".

    python -m benchmarks.controls [--out docs/controls.png]

The setting shows each kind of control once: a stronger jaw, calmer brows, a softened head, a smile
held by an offset, and anticipation (the animation 40 ms earlier)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.engine.controls import Controls
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.server.runtime import build_engine

ARTIST = {
    "strength": {"jaw": 1.4, "brows": 0.5},
    "smoothing_ms": {"head": 150},
    "shapes": {"mouthSmileLeft": {"offset": 0.15}, "mouthSmileRight": {"offset": 0.15}},
    "timing_offset_ms": -40,
}
SHOWN = ("jawOpen", "browInnerUp", "mouthSmileLeft")


def animate(engine: StreamingEngine, audio: np.ndarray, controls: Controls) -> tuple[np.ndarray, np.ndarray]:
    """Weights [T, 52] and head [T, 3] of one stream fed in 100 ms chunks, as a microphone would."""
    frames = engine.stream_clip(audio, chunks=[1600] * -(-audio.size // 1600), controls=controls)
    return np.stack([f.blendshapes for f in frames]), np.stack([f.head for f in frames])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.controls", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/controls.png"), help="the plot (PNG)")
    p.add_argument("--seconds", type=float, default=4.0, help="how much of the sample speech to plot")
    args = p.parse_args(argv)
    audio, sr = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert sr == motion.SAMPLE_RATE
    audio = audio[: int(args.seconds * sr)]
    engine = build_engine("onnxruntime", "low-latency")
    try:
        before = animate(engine, audio, Controls())
        after = animate(engine, audio, Controls.from_dict(ARTIST))
    finally:
        engine.close()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(before[0])) / motion.FPS
    fig, axes = plt.subplots(len(SHOWN) + 1, 1, figsize=(9, 9), sharex=True)
    for ax, name in zip(axes, SHOWN, strict=False):
        k = motion.BLENDSHAPE_INDEX[name]
        ax.plot(t, before[0][:, k], color="0.55", label="default controls")
        ax.plot(t, after[0][:, k], color="C3", label="artist's controls")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, max(0.3, float(max(before[0][:, k].max(), after[0][:, k].max())) * 1.1))
    axes[-1].plot(t, np.degrees(before[1][:, 1]), color="0.55")
    axes[-1].plot(t, np.degrees(after[1][:, 1]), color="C3")
    axes[-1].set_ylabel("head yaw (deg)")
    axes[-1].set_xlabel("audio time (s); the last 150 ms: the ease to rest")
    axes[0].legend(loc="upper right")
    setting = "\n".join(f"{k} = {v}" for k, v in ARTIST.items())
    fig.suptitle(f"Controls before/after on the bundled sample speech\n{setting}", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    jaw = motion.BLENDSHAPE_INDEX["jawOpen"]
    print(f"jawOpen peak {before[0][:, jaw].max():.3f} -> {after[0][:, jaw].max():.3f}; browInnerUp std "
          f"{before[0][:, motion.BLENDSHAPE_INDEX['browInnerUp']].std():.4f} -> "
          f"{after[0][:, motion.BLENDSHAPE_INDEX['browInnerUp']].std():.4f}; head yaw std "
          f"{np.degrees(before[1][:, 1]).std():.2f} -> {np.degrees(after[1][:, 1]).std():.2f} deg; plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
