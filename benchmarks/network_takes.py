"""`python -m benchmarks.network_takes`: a style take on the network's own style input as well as on the output
(`serve --network-style`, engine/network_style.py), against the take on the output alone (the default).

Two questions, both streamed live (`low-latency`, ONNX Runtime):

1. **A take of the speaker's own face.** Each held-out clip's persona hands another of its clips, the teacher's
   whole motion, as a take (what a VTuber's own Live Link Face recording is to them). The clips are streamed
   all at once, as `eval-stream` does (the model, the bilabial closure, no voice gate or liveliness:
   benchmarks/default_style.json's setting) with: no style; the take on the output alone; the take on the
   network and the output; the take on the network alone (its vector given as the Python API does, no gains).
   Scored against each clip's own teacher motion (the held-out metrics of `eval-stream`).
2. **Does the output still land on the take's profile?** The five built-in takes and five held-out personas'
   takes (benchmarks/style.py's two sets) on one long stream of the first clips one after another (voice gate,
   closure and liveliness on, as `serve` runs), its profile past its first seconds against the take's, with
   the network style and, from the same unstyled stream, with the style on the output alone; the rank
   correlation over each set.

Writes benchmarks/network_takes.json and docs/network_takes.png (``--replot``: the plot again from the JSON);
nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ksdiff_runtime import motion
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.backends.base import take_style
from ksdiff_runtime.engine import style as S
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE
from ksdiff_runtime.engine.controls import Controls
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT, load_model
from ksdiff_runtime.server.runtime import build_engine
from ksdiff_runtime.training import metrics as M
from ksdiff_runtime.training.evaluate import held_out, score
from ksdiff_runtime.training.stream_eval import METRICS, all_at_once, stream_animations

from . import style as style_bench
from .live import machine

ROOT = Path(__file__).resolve().parent.parent
QUANTITIES = style_bench.QUANTITIES


def own_takes(clips: list, all_test: list) -> list[S.Style]:
    """Each clip's take: another clip of its persona, the teacher's whole motion (as ``reference_styles`` picks)."""
    takes = []
    for clip in clips:
        ref = next((c for c in all_test if c.persona == clip.persona and c.id != clip.id), clip)
        take = (ref.expr.astype(np.float32), ref.pose.astype(np.float32))
        takes.append(S.Style(f"take of {ref.id}", S.StyleProfile.of(*take), take))
    return takes


def own_face(backend, model, corpus: Path, cache: Path, max_clips: int) -> dict[str, Any]:
    held = held_out(model, corpus, cache, max_clips)
    takes = own_takes(held.clips, held.all_test)
    closure = DEFAULT_CLOSURE

    def run(network_style: bool, controls: list[Controls] | None, vectors: np.ndarray | None) -> dict[str, Any]:
        engine = StreamingEngine(backend, "low-latency", sessions=all_at_once(held.clips), closure=closure,
                                 network_style=network_style)
        try:
            if network_style and controls is not None:  # every take measured at once (as a server's warm-up does)
                controls = [Controls(style=s) for s in engine.network_styles.attach_all([c.style for c in controls])]
            anims = stream_animations(engine, held.clips, vectors, np.random.default_rng(1), controls=controls)
        finally:
            engine.close()
        return score(held.clips, anims, held.beats_audio, (0.5, 0.5))

    on_output = [Controls(style=t) for t in takes]
    vectors = np.stack([take_style(backend, *t.take) for t in takes])
    rows = {
        "no style (serve)": run(False, None, None),
        "take on the output (serve --style)": run(False, on_output, None),
        "take on the network and the output (--network-style)": run(True, on_output, None),
        "take on the network alone (its vector)": run(False, None, vectors),
    }
    return {"clips": len(held.clips), "rows": rows}


def long_frames(engine: StreamingEngine, audio: np.ndarray, seed: int, style: S.Style | None) -> np.ndarray:
    fs = engine.stream_clip(audio, seed=seed, controls=engine.with_network_style(Controls(style=style)))
    return np.stack([np.concatenate([f.blendshapes, f.head]) for f in fs]).astype(np.float32)


def profiles(corpus: Path, n_clips: int, seed: int) -> dict[str, Any]:
    every = style_bench.held_out(corpus, 0)
    with tempfile.TemporaryDirectory() as tmp:
        personas, _, pick_personas = style_bench.persona_references(every, 5, Path(tmp))
    clips = [c for c in every if c["persona"] not in pick_personas][:n_clips]
    long_audio = np.concatenate([c["audio"] for c in clips])
    sets = {"built_in": [S.style_for(n) for n in S.STYLES], "personas": personas}
    out: dict[str, Any] = {"clips": len(clips), "long_stream_s": round(long_audio.size / motion.SAMPLE_RATE, 1),
                           "steady_after_s": style_bench.STEADY_AFTER_S}
    for network in (False, True):
        engine = build_engine("onnxruntime", "low-latency", network_style=network)
        try:
            plain = long_frames(engine, long_audio, seed, None)
            key = "network" if network else "output"
            out.setdefault("no_style", {})[key] = style_bench.profile([style_bench.steady(plain)])
            for label, styles in sets.items():
                rows = out.setdefault(label, {}).setdefault(key, [])
                for st in tqdm(styles, desc=f"{label}, {key}", unit="take"):
                    if network:
                        st = engine.network_styles.attach(st)
                        made = long_frames(engine, long_audio, seed, st)
                    else:  # the output's gains on the unstyled stream, as the engine applies them
                        made = style_bench.styled([plain], st)[0]
                    rows.append({"reference": Path(st.name).stem, "reference_profile": st.profile.to_dict(),
                                 "response": None if st.network is None else st.network.live.to_dict(),
                                 "response_baked": None if st.network is None else st.network.baked.to_dict(),
                                 "gains": {k: round(v, 3) for k, v in st.gains(S.MODEL_PROFILES["live"]).items()},
                                 "output_profile": style_bench.profile([style_bench.steady(made)])})
        finally:
            engine.close()
    for label in sets:
        for key in ("output", "network"):
            rows = out[label][key]
            out[label][f"{key}_rank_corr"] = {q: M.rank_correlation(
                np.array([r["reference_profile"][q] for r in rows]), np.array([r["output_profile"][q] for r in rows]))
                for q in QUANTITIES}
            # how far the output lands from the take: mean |log(output / reference)|
            out[label][f"{key}_log_error"] = {q: float(np.mean([abs(np.log(r["output_profile"][q]
                                                                            / r["reference_profile"][q]))
                                                                for r in rows])) for q in QUANTITIES}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    from ksdiff_runtime.cli.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    rows = result["own_face"]["rows"]
    names = ["none", "output", "network +\noutput", "network\nalone"]
    ax = axes[0]
    ax.bar(names, [r["mouth_mae"] for r in rows.values()], color=["0.6", "C0", "C1", "C2"])
    for i, r in enumerate(rows.values()):
        ax.text(i, r["mouth_mae"], f"{r['mouth_mae']:.4f}\nsmile r {r['smile_level_r']:.2f}", ha="center",
                va="bottom", fontsize=8)
    ax.set_ylabel("mouth MAE against the speaker's own motion")
    ax.set_title(f"a take of the speaker's own face ({result['own_face']['clips']} clips, live)", fontsize=9)
    ax.set_ylim(0, max(r["mouth_mae"] for r in rows.values()) * 1.3)
    units = {"head": "head motion RMS (deg)", "expression": "brow-raise motion RMS", "articulation": "jawOpen p95"}
    pr = result["profiles"]
    for ax, q in zip(axes[1:], QUANTITIES, strict=True):
        scale = np.rad2deg(1.0) if q == "head" else 1.0
        for key, color in (("output", "C0"), ("network", "C1")):
            for label, marker in (("built_in", "o"), ("personas", "s")):
                x = [r["reference_profile"][q] * scale for r in pr[label][key]]
                y = [r["output_profile"][q] * scale for r in pr[label][key]]
                ax.plot(x, y, marker, color=color, ls="", label=f"{label.replace('_', '-')}, on the {key}")
        lo, hi = min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="0.8", lw=1, label="output = take")
        ax.set_xlabel(f"take: {units[q]}")
        ax.set_ylabel(f"output: {units[q]}")
    axes[1].legend(fontsize=7)
    fig.suptitle("A style take on the output's gains alone, or on the network's style input too (--network-style)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.network_takes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="a corpus (its held-out clips)")
    p.add_argument("--cache", type=Path, default=ROOT / "cache" / "features", help="feature cache folder")
    p.add_argument("--max-clips", type=int, default=120, help="held-out clips streamed with their own takes")
    p.add_argument("--long-clips", type=int, default=40, help="clips of the long stream the profiles are read on")
    p.add_argument("--seed", type=int, default=0, help="the long stream's seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "network_takes.json", help="the figures (JSON)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "network_takes.png", help="the plot (PNG)")
    p.add_argument("--replot", action="store_true", help="only draw the plot again from --out")
    args = p.parse_args(argv)
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        print(f"wrote {args.plot}")
        return 0
    model = load_model(DEFAULT_CHECKPOINT).float().eval()
    backend = load_backend("onnxruntime-cpu", DEFAULT_CHECKPOINT)
    result: dict[str, Any] = {"machine": machine(), "own_face": own_face(backend, model, args.corpus, args.cache,
                                                                         args.max_clips)}
    keys = [(k, label) for k, label, _ in METRICS]
    print(f"\n{result['own_face']['clips']} held-out clips streamed live (low-latency), each with a take of its "
          "own persona:")
    print("| take | " + " | ".join(label for _, label in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in result["own_face"]["rows"].items():
        print(f"| {name} | " + " | ".join("-" if r[k] is None else f"{r[k]:.4f}" for k, _ in keys) + " |")
    result["profiles"] = profiles(args.corpus, args.long_clips, args.seed)
    pr = result["profiles"]
    for label in ("built_in", "personas"):
        for o, n in zip(pr[label]["output"], pr[label]["network"], strict=True):
            ref = o["reference_profile"]
            line = "; ".join(f"{q} {ref[q]:.4f}: output {o['output_profile'][q]:.4f}, network "
                             f"{n['output_profile'][q]:.4f}" for q in QUANTITIES)
            print(f"{label:>9} {o['reference']:>13}: {line}")
        for key in ("output", "network"):
            print(f"{label:>9} {key}: rank r {pr[label][f'{key}_rank_corr']}, mean |log(out/ref)| "
                  f"{ {q: round(v, 3) for q, v in pr[label][f'{key}_log_error'].items()} }")
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
