"""A stream's mood on real voices: what each mood puts on the face, how the network speaks in it at each mood
guidance, and what that does to closures.

    python -m benchmarks.moods [--prompts 80] [--guidance 0 1 2]

Held-out recorded English prompts (the real-voice evaluation's, aligned by PocketSphinx:
training/real_eval.py) are streamed live through the engine (ONNX Runtime, low-latency preset, bilabial
closure, voice gate and liveliness on as `serve` runs them, 33 ms pushes; the committed figures were measured
before the closure). A mood is two things (docs/ENGINE.md): the controls' expression
layer (motion.MOOD_EXPRESSIONS) and, at a mood guidance above 0, the network given the mood's style
(engine/sampling.py). At guidance 0 the prompts are streamed once, neutral, and each mood's layer is
applied to those frames by the controls stage, as the engine applies it (its output does not feed back
into the model); at each other guidance every mood's stream (neutral too) is run in that mood. Reported
per mood and guidance: medial /p b m/ closure with its 95 % interval, rest in silence, jawOpen correlation with the
neutral face, the lip aperture's largest increase over the neutral face, the mean weight of the mood's
own shapes while speaking, the mean head pitch, the motion profile (engine/style.py: head RMS, brow
activity, jawOpen p95), and the stage's cost per frame; per guidance, what a live stream costs (the
engine's capacity as it measures it warming up: a guidance above 1 adds a denoiser row per stream).

Writes benchmarks/moods.json and docs/moods.png; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.engine.controls import Controls, ControlStage
from ksdiff_runtime.engine.style import StyleProfile
from ksdiff_runtime.server.runtime import build_engine
from ksdiff_runtime.training import real_eval

from .live import machine

ROOT = Path(__file__).resolve().parent.parent
D = motion.NUM_BLENDSHAPES
# every mood's shapes, and the jaw: the plot shows each mood's face on all of them
SHOWN = sorted({n for m in motion.MOOD_EXPRESSIONS.values() for n in m.pose} | {"jawOpen"})


def with_mood(values: list[np.ndarray], mood: str) -> tuple[list[np.ndarray], float]:
    """Each clip's [T, 55] frames through a stage with ``mood``; and the stage's seconds per frame."""
    controls = Controls.from_dict({"mood": mood})
    started = time.perf_counter()
    out = [ControlStage(controls, motion.FPS).shape(v) for v in values]
    return out, (time.perf_counter() - started) / sum(len(v) for v in values)


def figures(neutral: list[np.ndarray], moody: list[np.ndarray], prompts: list[real_eval.Prompt],
            mood: str) -> dict[str, Any]:
    blend = [v[:, :D] for v in moody]
    scores = real_eval.score_speech(blend, prompts)
    speaking = [~real_eval.silent_frames(p.phones, len(v)) for v, p in zip(moody, prompts, strict=True)]
    speaking_frames = np.concatenate([v[s][:, :D] for v, s in zip(moody, speaking, strict=True)])
    rise = max(float(np.max(motion.lip_aperture(m[:, :D]) - motion.lip_aperture(n[:, :D])))
               for m, n in zip(moody, neutral, strict=True))
    return {
        "closure_medial": scores["closure_medial"],
        "closure_medial_by_phone": {b: scores[f"closure_medial_{b}"]["rate"] for b in real_eval.BILABIALS},
        "rest_in_silence": scores["rest_in_silence"],
        "jaw_r_with_neutral": real_eval.jaw_correlation(blend, [n[:, :D] for n in neutral]),
        "lip_aperture_largest_rise": round(rise, 6),
        "shapes_speaking": {n: round(float(speaking_frames[:, motion.BLENDSHAPE_INDEX[n]].mean()), 3) for n in SHOWN},
        "head_pitch_deg": round(float(np.rad2deg(np.mean(np.concatenate([v[:, D] for v in moody])))), 2),
        "profile": {q: round(float(np.mean([getattr(StyleProfile.of(v[:, :D], v[:, D:]), q) for v in moody])), 4)
                    for q in ("head", "expression", "articulation")},
    }


def stream(prompts: list[real_eval.Prompt], guidance: float, mood: str, desc: str) -> list[np.ndarray]:
    """Each prompt's [T, 55] frames, streamed live in ``mood`` at this mood guidance."""
    from tqdm import tqdm

    controls = Controls.from_dict({"mood": mood})
    engine = build_engine("onnxruntime", "low-latency", mood_guidance=guidance)
    try:
        return [np.stack([np.concatenate([f.blendshapes, f.head])
                          for f in engine.stream_clip(pr.audio, controls=controls)]).astype(np.float32)
                for pr in tqdm(prompts, desc=desc, unit="prompt")]
    finally:
        engine.close()


def live_stream_cost(guidances: list[float], repeats: int) -> dict[str, dict[str, Any]]:
    """What a live stream costs at each mood guidance: the engine's capacity as it measures it warming up, an
    engine per guidance in turn, ``repeats`` times (the medians, and every reading)."""
    readings: dict[str, list[tuple[float, float, int]]] = {f"{g:g}": [] for g in guidances}
    for _ in range(repeats):
        for g in guidances:
            engine = build_engine("onnxruntime", "low-latency", mood_guidance=g)
            r = engine.capacity.reading()
            readings[f"{g:g}"].append((round(r.stream_cores, 3), round(r.fixed_cores, 3), r.streams_that_fit()))
            engine.close()
    return {g: {"stream_cores": float(np.median([x[0] for x in rs])),
                "round_cores": float(np.median([x[1] for x in rs])),
                "streams_that_fit": int(np.median([x[2] for x in rs])), "readings": rs} for g, rs in readings.items()}


def plot(result: dict[str, Any], path: Path) -> None:
    from ksdiff_runtime.cli.plots import pyplot

    plt = pyplot()
    moods = list(motion.MOODS)
    scales = list(result["guidance"])
    layer = result["guidance"][scales[0]]
    grid = np.array([[layer[m]["shapes_speaking"][n] for n in SHOWN] for m in moods])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    im = a.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    a.set_xticks(range(len(SHOWN)), SHOWN, rotation=60, ha="right", fontsize=7)
    a.set_yticks(range(len(moods)), moods)
    a.set_title(f"mean weight while speaking, live, mood guidance {scales[0]} (the moods' shapes and the jaw)",
                fontsize=9)
    fig.colorbar(im, ax=a, fraction=0.03)
    height = 0.8 / len(scales)
    for k, g in enumerate(scales):
        rates = [result["guidance"][g][m]["closure_medial"] for m in moods]
        y = np.arange(len(moods)) + (k - (len(scales) - 1) / 2) * height
        err = np.array([[r["rate"] - r["ci95"][0], r["ci95"][1] - r["rate"]] for r in rates]).T * 100
        b.barh(y, [r["rate"] * 100 for r in rates], height, xerr=err, capsize=2, label=f"guidance {g}")
        c.barh(y, [result["guidance"][g][m]["profile"]["articulation"] for m in moods], height,
               label=f"guidance {g}")
    for ax in (b, c):
        ax.set_yticks(range(len(moods)), moods)
        ax.invert_yaxis()
        ax.legend(fontsize=7, loc="lower left", framealpha=0.9)
    b.set_xlim(50, 100)
    b.set_xlabel("medial /p b m/ closed, live (%), 95 % interval")
    b.set_title(f"{result['prompts']} held-out recorded prompts", fontsize=9)
    c.set_xlabel("jawOpen p95, live")
    c.set_title("how far the jaw goes, by mood guidance", fontsize=9)
    a.grid(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.moods", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=80, help="held-out recorded prompts (0: all 232)")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                   help="mood guidance scales (default 0 1 2; 0: the expression layer alone)")
    p.add_argument("--cost-repeats", type=int, default=3,
                   help="engines built per guidance to read a live stream's cost (default 3: the medians)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "moods.json", help="the figures (JSON)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "moods.png", help="the plot (PNG)")
    args = p.parse_args(argv)

    prompts, _ = real_eval.held_out_prompts(args.prompts)
    neutral = stream(prompts, 0.0, motion.DEFAULT_MOOD, "neutral")
    result: dict[str, Any] = {"machine": machine(), "prompts": len(prompts),
                              "seconds": round(sum(pr.audio.size for pr in prompts) / motion.SAMPLE_RATE, 1),
                              "guidance": {}}
    for g in args.guidance:
        moods = result["guidance"][f"{g:g}"] = {}
        for mood in motion.MOODS:
            moody, per_frame = with_mood(neutral, mood)  # the layer's cost, on the neutral frames
            if g > 0:  # the network in the mood too (a neutral stream: the null style, streamed again at g)
                moody = stream(prompts, g, mood, f"{mood}, guidance {g:g}")
            r = figures(neutral, moody, prompts, mood) | {"stage_us_per_frame": round(per_frame * 1e6, 2)}
            moods[mood] = r
            c, prof = r["closure_medial"], r["profile"]
            print(f"guidance {g:g} {mood:>9}: medial closure {100 * c['rate']:.1f} % ({100 * c['ci95'][0]:.0f}-"
                  f"{100 * c['ci95'][1]:.0f}, n={c['n']}), rest {100 * r['rest_in_silence']:.1f} %, jaw r "
                  f"{r['jaw_r_with_neutral']:.3f}, aperture rise {r['lip_aperture_largest_rise']:.4f}, head pitch "
                  f"{r['head_pitch_deg']:+.1f} deg, head {np.degrees(prof['head']):.2f} deg, brows "
                  f"{prof['expression']:.3f}, jaw p95 {prof['articulation']:.3f}, stage "
                  f"{r['stage_us_per_frame']:.1f} us/frame; its shapes "
                  f"{ {n: r['shapes_speaking'][n] for n in sorted(motion.MOOD_EXPRESSIONS[mood].pose)} }", flush=True)
    result["live_stream_cost"] = live_stream_cost(args.guidance, args.cost_repeats)
    for g, cost in result["live_stream_cost"].items():
        print(f"guidance {g}: a live stream costs {cost['stream_cores']:.3f} of a core (rounds "
              f"{cost['round_cores']:.3f}), room for {cost['streams_that_fit']} streams")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
