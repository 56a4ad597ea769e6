"""Does the face follow a style reference? (engine/style.py; issue 11 item 4)

    python -m benchmarks.style [--corpus data/corpus] [--clips 40] [--prompts 80]

Held-out synthetic clips (voices and lines never trained on) and held-out recorded English prompts are
streamed live once through the engine (ONNX Runtime, low-latency preset, bilabial closure, voice gate and
liveliness on as `serve` runs them, 33 ms pushes; the committed figures were measured before the closure),
each clip as a stream of its own and the clips one after another as one long stream (a VTuber's); each style
is then applied to those frames by the controls stage, as the engine applies it to a stream.
Two sets of five references:

- the built-in styles (still, calm, natural, lively, animated);
- the issue's protocol: five held-out personas spread over the teacher's head amplitude, each handing
  the teacher's motion of one of its clips as a Live Link Face CSV (read back like a user's take),
  animating the clips of other personas.

Per reference: its profile, the output's profile on the long stream past its first ``STEADY_AFTER_S``
(a live head settles over a stream's first seconds: on short clips that start-up is most of its
motion), and p/b/m closure on the synthetic clips' teacher phonemes and medial closure on the recorded
prompts (PocketSphinx phones). Per set: the rank correlation between the references' and the outputs'
head amplitude, expression and articulation, and for the personas also against the teacher's style
parameters. And the model's own profile with no style: live (the long stream past its start), as lines
and baked (the clips), averaged over ``--seeds`` seeds (``style.MODEL_PROFILES``, the gains'
denominators, are these figures on the first 40 clips).

Writes benchmarks/style.json and docs/style.png; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.engine import style as S
from ksdiff_runtime.engine.controls import Controls, ControlStage
from ksdiff_runtime.outputs import files
from ksdiff_runtime.server.runtime import build_engine
from ksdiff_runtime.training import metrics as M
from ksdiff_runtime.training import real_eval
from ksdiff_runtime.training.teacher import STYLE_NAMES

from .live import machine

ROOT = Path(__file__).resolve().parent.parent
D = motion.NUM_BLENDSHAPES
QUANTITIES = ("head", "expression", "articulation")
STEADY_AFTER_S = 10  # a live stream's profile is measured past its first seconds, where it settles
TEACHER_PARAM = {"head": "head_amplitude", "expression": "expressiveness", "articulation": "articulation"}


def held_out(corpus: Path, n: int) -> list[dict[str, Any]]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    clips = [c for c in manifest["clips"] if c.get("split") == "test" and not c.get("kind")]
    out = []
    for c in clips[: n or len(clips)]:
        with np.load(corpus / c["file"], allow_pickle=True) as z:
            out.append({"persona": c["persona"], "style": np.asarray(c["style"], np.float64),
                        **{k: z[k] for k in ("audio", "blendshapes", "head", "phonemes", "phoneme_start",
                                             "phoneme_dur")}})
    return out


def profile(frames: list[np.ndarray]) -> dict[str, float]:
    """Mean profile of [T, 55] frames over clips."""
    ps = [S.StyleProfile.of(f[:, :D], f[:, D:]) for f in frames]
    return {q: float(np.mean([getattr(p, q) for p in ps])) for q in QUANTITIES}


def styled(frames: list[np.ndarray], style: S.Style) -> list[np.ndarray]:
    controls = Controls(style=style)
    return [ControlStage(controls, motion.FPS, made="live").shape(f) for f in frames]


def baked(clips: list[dict[str, Any]], seed: int) -> list[np.ndarray]:
    """Each clip's [T, 55] frames as ``bake --seed SEED`` makes them with no style (bilabial closure, voice gate
    and liveliness on)."""
    from ksdiff_runtime.backends.select import load_backend
    from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE
    from ksdiff_runtime.engine.gate import GateConfig
    from ksdiff_runtime.engine.liveliness import LivelinessConfig
    from ksdiff_runtime.engine.offline import bake_animations, clip_inputs
    from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

    backend = load_backend("onnxruntime-cpu", DEFAULT_CHECKPOINT, threads=1)
    out = []
    for c in clips:
        inputs = clip_inputs(backend, c["audio"], None)
        anim = bake_animations(backend, [inputs], steps=4, seeds=[seed], closure=DEFAULT_CLOSURE, gate=GateConfig(),
                               liveliness=LivelinessConfig())[0]
        out.append(np.concatenate([anim.blendshapes, anim.head], axis=1))
    return out


def synthetic_closure(frames: list[np.ndarray], clips: list[dict[str, Any]]) -> float:
    pairs = [M.bilabial_closures(f[:, :D], c["phonemes"], c["phoneme_start"], c["phoneme_dur"])
             for f, c in zip(frames, clips, strict=True)]
    return round(sum(p[0] for p in pairs) / max(sum(p[1] for p in pairs), 1), 4)


def persona_references(clips: list[dict[str, Any]], k: int, folder: Path) -> tuple[list[S.Style], list[dict], set]:
    """K personas spread over the teacher's head amplitude, one clip each written as a Live Link Face CSV
    and read back as a take."""
    first: dict[int, dict[str, Any]] = {}
    for c in clips:
        first.setdefault(c["persona"], c)
    ranked = sorted(first.values(), key=lambda c: c["style"][STYLE_NAMES.index("head_amplitude")])
    picks = [ranked[round(i)] for i in np.linspace(0, len(ranked) - 1, k)]
    styles = []
    for c in picks:
        path = folder / f"{c['persona']}.csv"
        files.write_csv(path, c["blendshapes"], c["head"], motion.gaze_from_blendshapes(c["blendshapes"]), motion.FPS)
        styles.append(S.style_for(str(path), allow_files=True))
    return styles, picks, {c["persona"] for c in picks}


def stage_cost(frames: list[np.ndarray], style: S.Style) -> float:
    """Microseconds a frame the controls stage takes with ``style`` alone (best of 3)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        styled(frames, style)
        best = min(best, time.perf_counter() - started)
    return round(best / sum(len(f) for f in frames) * 1e6, 2)


def steady(frames: np.ndarray) -> np.ndarray:
    """A long stream's frames past its start (the model's head settles over its first seconds)."""
    return frames[STEADY_AFTER_S * motion.FPS :]


def study(styles: list[S.Style], long_frames: np.ndarray, clip_frames: list[np.ndarray], clips: list[dict[str, Any]],
          prompt_frames: list[np.ndarray], prompts: list[real_eval.Prompt]) -> dict[str, Any]:
    """Each style on the long stream (its profile, past the start) and on the clips and prompts (closures)."""
    rows = []
    for st in styles:
        out = styled(clip_frames, st)
        real = real_eval.score_speech([f[:, :D] for f in styled(prompt_frames, st)], prompts) if prompts else None
        rows.append({"reference": Path(st.name).stem, "reference_profile": st.profile.to_dict(),
                     "gains": {k: round(v, 3) for k, v in st.gains(S.MODEL_PROFILES["live"]).items()},
                     "output_profile": profile([steady(styled([long_frames], st)[0])]),
                     "synthetic_closure": synthetic_closure(out, clips),
                     "real_medial_closure": real["closure_medial"] if real else None})
    corr = {q: M.rank_correlation(np.array([r["reference_profile"][q] for r in rows]),
                                  np.array([r["output_profile"][q] for r in rows])) for q in QUANTITIES}
    return {"rows": rows, "rank_corr_with_reference": corr}


def plot(result: dict[str, Any], path: Path) -> None:
    from ksdiff_runtime.cli.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    units = {"head": "head motion RMS (deg)", "expression": "brow-raise motion RMS", "articulation": "jawOpen p95"}
    for ax, q in zip(axes, QUANTITIES, strict=True):
        scale = np.rad2deg(1.0) if q == "head" else 1.0
        for label, marker in (("built_in", "o"), ("personas", "s")):
            rows = result[label]["rows"]
            x = [r["reference_profile"][q] * scale for r in rows]
            y = [r["output_profile"][q] * scale for r in rows]
            ax.plot(x, y, marker, ls="-", label=f"{label.replace('_', '-')} (rank r "
                    f"{result[label]['rank_corr_with_reference'][q]:.2f})")
        own = result["no_style"]["profile"][q] * scale
        ax.axhline(own, color="0.5", ls=":", lw=1, label="no style")
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="0.8", lw=1, label="output = reference")
        ax.set_xlabel(f"reference: {units[q]}")
        ax.set_ylabel(f"output: {units[q]}")
        ax.set_title(q, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"Style following, live low-latency: {result['clips']} held-out synthetic clips", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.style", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus",
                   help="a corpus made by `ksdiff-runtime corpus` (its held-out clips)")
    p.add_argument("--clips", type=int, default=40, help="held-out synthetic clips animated (0: all)")
    p.add_argument("--skip", type=int, default=0,
                   help="leave out the first SKIP of them (MODEL_PROFILE was measured on the first 40: a run with "
                   "--skip 40 checks the gains on other clips)")
    p.add_argument("--seeds", type=int, default=3, help="seeds the model's own profiles are averaged over")
    p.add_argument("--prompts", type=int, default=80, help="held-out recorded prompts (0: all 232; -1: none)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "style.json", help="the figures (JSON)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "style.png", help="the plot (PNG)")
    args = p.parse_args(argv)
    from tqdm import tqdm

    every = held_out(args.corpus, 0)
    with tempfile.TemporaryDirectory() as tmp:
        persona_styles, picks, pick_personas = persona_references(every, 5, Path(tmp))
    clips = [c for c in every if c["persona"] not in pick_personas][args.skip :][: args.clips or None]
    prompts = real_eval.held_out_prompts(args.prompts)[0] if args.prompts >= 0 else []
    engine = build_engine("onnxruntime", "low-latency")
    try:
        def frames(audio: np.ndarray, mode: str = "live", seed: int = 0) -> np.ndarray:
            return np.stack([np.concatenate([f.blendshapes, f.head])
                             for f in engine.stream_clip(audio, mode=mode, seed=seed)]).astype(np.float32)

        clip_frames = [frames(c["audio"]) for c in tqdm(clips, desc="synthetic, live", unit="clip")]
        # the clips one after another as one live stream, as a VTuber's is: the profile past its first seconds
        long_audio = np.concatenate([c["audio"] for c in clips])
        long_frames = frames(long_audio)
        prompt_frames = [frames(pr.audio) for pr in tqdm(prompts, desc="recorded, live", unit="prompt")]
        # the model's own profiles: a head's sampled motion differs much from seed to seed, so over several
        per_seed: dict[str, list[dict[str, float]]] = {"live": [profile([steady(long_frames)])], "line": [],
                                                       "bake": []}
        for seed in tqdm(range(args.seeds), desc="the model's own profile, by seed", unit="seed"):
            if seed:
                per_seed["live"].append(profile([steady(frames(long_audio, seed=seed))]))
            per_seed["line"].append(profile([frames(c["audio"], "line", seed) for c in clips]))
            per_seed["bake"].append(profile(baked(clips, seed)))
    finally:
        engine.close()
    own = profile([steady(long_frames)])
    model_profiles = {kind: {q: float(np.mean([p[q] for p in ps])) for q in QUANTITIES}
                      for kind, ps in per_seed.items()}
    result: dict[str, Any] = {
        "machine": machine(), "clips": len(clips), "skipped": args.skip, "prompts": len(prompts),
        "seeds": args.seeds, "model_profiles": model_profiles, "model_profiles_by_seed": per_seed,
        "model_profiles_used": {k: v.to_dict() for k, v in S.MODEL_PROFILES.items()},
        "no_style": {"profile": own, "synthetic_closure": synthetic_closure(clip_frames, clips),
                     "real_medial_closure": real_eval.score_speech([f[:, :D] for f in prompt_frames], prompts)
                     ["closure_medial"] if prompts else None},
        "long_stream_s": round(long_audio.size / motion.SAMPLE_RATE, 1), "steady_after_s": STEADY_AFTER_S,
        "short_clips_profile": profile(clip_frames),
        "built_in": study([S.style_for(n) for n in S.STYLES], long_frames, clip_frames, clips, prompt_frames, prompts),
        "personas": study(persona_styles, long_frames, clip_frames, clips, prompt_frames, prompts),
        "stage_us_per_frame": {n: stage_cost(clip_frames, S.style_for(n)) for n in ("still", "animated")},
    }
    params = {q: [float(c["style"][STYLE_NAMES.index(TEACHER_PARAM[q])]) for c in picks] for q in QUANTITIES}
    result["personas"]["teacher_params"] = params
    result["personas"]["rank_corr_with_teacher_param"] = {
        q: M.rank_correlation(np.array(params[q]), np.array([r["output_profile"][q]
                                                             for r in result["personas"]["rows"]]))
        for q in QUANTITIES}
    for kind, prof in result["model_profiles"].items():
        used = S.MODEL_PROFILES[kind]
        print(f"no style, {kind}: head {np.rad2deg(prof['head']):.3f} deg, brows {prof['expression']:.4f}, jaw p95 "
              f"{prof['articulation']:.3f} (MODEL_PROFILES: {np.rad2deg(used.head):.3f} deg, {used.expression:.4f}, "
              f"{used.articulation:.3f})")
    print(f"no style: closure {result['no_style']['synthetic_closure']:.3f} synthetic, real medial "
          f"{(result['no_style']['real_medial_closure'] or {}).get('rate')}")
    for label in ("built_in", "personas"):
        for r in result[label]["rows"]:
            ref, out = r["reference_profile"], r["output_profile"]
            real = "" if r["real_medial_closure"] is None else f", real medial {r['real_medial_closure']['rate']:.3f}"
            print(f"{label:>9} {r['reference']:>13}: head {np.rad2deg(ref['head']):.2f} -> "
                  f"{np.rad2deg(out['head']):.2f} deg, brows {ref['expression']:.3f} -> {out['expression']:.3f}, "
                  f"jaw p95 {ref['articulation']:.3f} -> {out['articulation']:.3f}; closure "
                  f"{r['synthetic_closure']:.3f}{real}")
        print(f"{label:>9} rank correlation with the reference: {result[label]['rank_corr_with_reference']}")
    print(f" personas rank correlation with the teacher's parameters: "
          f"{result['personas']['rank_corr_with_teacher_param']}")
    print(f"the controls stage with a style alone: {result['stage_us_per_frame']} us a frame")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
