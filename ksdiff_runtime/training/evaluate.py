"""`ksdiff-runtime eval`: the model against the teacher on the held-out split (voices and sentences
never seen in training), as a table (text + JSON) and a plot.

Rows: the model at 50, 4 and 2 DDIM steps; a mean-pose baseline; ablations; the teacher itself
(the ceiling for the scores that do not compare against it). Inputs are audio only (no
transcript); each clip's style comes from a different clip of the same persona, as a user
would hand a reference clip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, closure_for
from ksdiff_runtime.engine.offline import Animation, ClipInputs, animate, close_animation
from ksdiff_runtime.engine.sampling import Guidance
from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.model.ksdiff import KSDiff

from . import metrics as M
from .dataset import Clip, CorpusError, build_feature_cache, load_clips
from .teacher import STYLE_NAMES

log = logging.getLogger(__name__)

STYLE_GUIDANCE = 2.0  # classifier-free guidance scale on style, also reported
CLOSURE_ROW = "4 steps + bilabial closure (as bake and serve apply it)"

# issue 11's held-out targets (4 steps), where they differ from the first model's: closure 0.92 (was 0.90) and KEL
# pose F1 0.5 (was 0.7; both are past the teacher's own ceiling of 0.41, benchmarks/teacher_ceiling.py)
TARGETS = {
    "bilabial_closure": (">=", 0.92),
    "rest_share": (">=", 0.95),
    "jaw_corr": (">=", 0.80),
    "mae_vs_baseline": ("<=", 0.40),
    "beat_align_vs_teacher": (">=", 0.80),
    "style_rank_corr": (">=", 0.80),
    "kel_f1_expr": (">=", 0.70),
    "kel_f1_pose": (">=", 0.50),
}


@dataclass
class Row:
    name: str
    values: dict[str, float | None] = field(default_factory=dict)


def model_inputs(clips: list[Clip], schedule: str = "offline", transcript: bool = False) -> list[ClipInputs]:
    """Cached features of clips as model inputs: offline (whole-clip) or stream (blockwise) schedule."""
    no_text = np.zeros(0, np.int64)
    return [
        ClipInputs((c.feats_offline if schedule == "offline" else c.feats).astype(np.float32), c.prosody,
                   c.tokens if transcript else no_text)
        for c in clips
    ]


KEY_THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)


def calibrate_key_thresholds(clips: list[Clip], anims: list[Animation]) -> tuple[float, float]:
    """KEL decision thresholds (expression, pose) that maximise keyframe F1 on *training* clips.

    KEL is trained with a positive-class weight, so its probabilities are not calibrated and
    0.5 is an arbitrary cut; the threshold is chosen on training data, never on the held-out split.
    """
    best = []
    for attr, key in (("key_expr", "key_expr"), ("key_pose", "key_pose")):
        f1 = [np.mean([M.kel_f1(getattr(a, attr), getattr(c, key), th) for c, a in zip(clips, anims, strict=True)])
              for th in KEY_THRESHOLDS]
        best.append(float(KEY_THRESHOLDS[int(np.argmax(f1))]))
    return best[0], best[1]


def score(
    clips: list[Clip], anims: list[Animation], beats_audio: list[np.ndarray], thresholds: tuple[float, float]
) -> dict[str, float | None]:
    closed = total = 0
    rest_hits = rest_total = 0
    jaw_p, jaw_t, maes, aligns, f1e, f1p, beat_rates = [], [], [], [], [], [], []
    shape_err, smile_p, smile_t = [], [], []
    jaw = motion.index("jawOpen")
    smile = [motion.index("mouthSmileLeft"), motion.index("mouthSmileRight")]
    for clip, anim, ab in zip(clips, anims, beats_audio, strict=True):
        c, t = M.bilabial_closures(anim.blendshapes, clip.phonemes, clip.phoneme_start, clip.phoneme_dur)
        closed, total = closed + c, total + t
        rest = M.rest_frames(clip.silent)
        rest_hits += int(motion.mouth_at_rest(anim.blendshapes[rest]).sum())
        rest_total += int(rest.sum())
        jaw_p.append(anim.blendshapes[:, jaw])
        jaw_t.append(clip.expr[:, jaw])
        maes.append(M.mouth_mae(anim.blendshapes, clip.expr))
        shape_err.append(np.abs(anim.blendshapes[:, M.MOUTH] - clip.expr[:, M.MOUTH]).mean(axis=0))
        smile_p.append(anim.blendshapes[:, smile].mean())
        smile_t.append(clip.expr[:, smile].mean())
        beats = M.motion_beats(anim.head)
        beat_rates.append(len(beats) / max(len(anim.head) / motion.FPS, 1e-6))
        ba = M.beat_align(ab, beats)
        if ba is not None:
            aligns.append(ba)
        if anim.key_expr.any() or clip.key_expr.any():
            f1e.append(M.kel_f1(anim.key_expr, clip.key_expr, thresholds[0]))
            f1p.append(M.kel_f1(anim.key_pose, clip.key_pose, thresholds[1]))
    return {
        "mouth_mae": float(np.mean(maes)),
        "bilabial_closure": closed / total if total else None,
        "rest_share": rest_hits / rest_total if rest_total else None,
        "jaw_corr": M.correlation(np.concatenate(jaw_p), np.concatenate(jaw_t)),
        "beat_align": float(np.mean(aligns)) if aligns else None,
        "motion_beats_per_s": float(np.mean(beat_rates)),
        "kel_f1_expr": float(np.mean(f1e)) if f1e else None,
        "kel_f1_pose": float(np.mean(f1p)) if f1p else None,
        # a take's smile is its persona's (the teacher's smile bias): set by the style, not the words
        "smile_level_r": M.correlation(np.asarray(smile_p), np.asarray(smile_t)),
        # where the mouth error is: each mouth blendshape's mean absolute error over the clips
        "mouth_mae_by_shape": dict(zip(motion.MOUTH_BLENDSHAPES, np.mean(shape_err, axis=0).round(5).tolist(),
                                       strict=True)),
    }



def animate_model(model: KSDiff, clips: list[ClipInputs], style: torch.Tensor | None = None, **kw) -> list[Animation]:
    """A torch model through the one sampler (``TorchBackend``), styles given as a tensor."""
    styles = None if style is None else style.detach().float().cpu().numpy()
    return animate(TorchBackend(model), clips, style=styles, **kw)


@dataclass
class HeldOut:
    """An evaluation's held-out clips, with what every scoring of them needs."""

    clips: list[Clip]  # the ones scored
    all_test: list[Clip]  # the whole test split (reference styles come from it)
    beats_audio: list  # each scored clip's audio beats
    style: torch.Tensor  # each scored clip's reference style


def held_out(model: KSDiff, corpus: Path, cache: Path, max_clips: int) -> HeldOut:
    """The corpus's test split (features cached first), ``max_clips`` of it by a fixed draw (0: all), with
    their audio beats and reference styles; torch seeded, so every evaluation starts alike."""
    torch.manual_seed(0)
    build_feature_cache(corpus, cache, model.cfg)
    all_test = load_clips(corpus, cache, model.cfg, "test", keep_audio=True)
    if not all_test:
        raise CorpusError(f"corpus {corpus} has no held-out (test) clips")
    order = np.random.default_rng(0).permutation(len(all_test))[: max_clips or len(all_test)]
    clips = [all_test[i] for i in sorted(order)]
    return HeldOut(clips, all_test, [M.audio_beats(c.audio) for c in clips], reference_styles(model, clips, all_test))


def reference_styles(model: KSDiff, clips: list[Clip], all_clips: list[Clip]) -> torch.Tensor:
    """Style vector per clip from another clip of the same persona (first window of it)."""
    L = model.cfg.style_clip_frames
    refs_e, refs_p = [], []
    for clip in clips:
        others = [c for c in all_clips if c.persona == clip.persona and c.id != clip.id] or [clip]
        ref = others[0]
        refs_e.append(motion.take_frames(ref.expr, 0, L))
        refs_p.append(motion.take_frames(ref.pose, 0, L))
    with torch.no_grad():
        return model.style_of(torch.from_numpy(np.stack(refs_e)), torch.from_numpy(np.stack(refs_p)))


def style_study(
    model: KSDiff, clips: list[Clip], steps: int, style_scale: float = 1.0, k_styles: int = 5, n_audio: int = 12
) -> dict:
    """Does motion follow the reference? K personas spread over head-motion amplitude hand their
    reference clips; the same audio clips (of other personas) are animated with each; the rank
    correlation between the personas' head amplitude and the generated head-motion std is reported.
    Also: style-encoder retrieval accuracy (leave-one-out nearest neighbour finds the same persona)."""
    amp_i = STYLE_NAMES.index("head_amplitude")
    personas: dict[int, Clip] = {}
    for c in clips:
        personas.setdefault(c.persona, c)
    ranked = sorted(personas.values(), key=lambda c: c.style[amp_i])
    picks = [ranked[round(i)] for i in np.linspace(0, len(ranked) - 1, min(k_styles, len(ranked)))]
    pick_personas = {c.persona for c in picks}
    audio_clips = [c for c in clips if c.persona not in pick_personas][:n_audio]
    L = model.cfg.style_clip_frames
    generated_amp, teacher_amp = [], []
    for ref in picks:
        clip_e, clip_p = motion.take_frames(ref.expr, 0, L), motion.take_frames(ref.pose, 0, L)
        with torch.no_grad():
            s = model.style_of(torch.from_numpy(clip_e[None]), torch.from_numpy(clip_p[None]))
        inputs = model_inputs(audio_clips)
        anims = animate_model(model, inputs, steps=steps, style=s.expand(len(inputs), -1),
                        guidance=Guidance(style=style_scale))
        generated_amp.append(float(np.mean([a.head.std(axis=0).mean() for a in anims])))
        teacher_amp.append(float(ref.style[amp_i]))
    # retrieval
    windows_e, windows_p, who = [], [], []
    for c in clips:
        windows_e.append(motion.take_frames(c.expr, 0, L))
        windows_p.append(motion.take_frames(c.pose, 0, L))
        who.append(c.persona)
    with torch.no_grad():
        emb = model.style_of(torch.from_numpy(np.stack(windows_e)), torch.from_numpy(np.stack(windows_p))).numpy()
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    who_arr = np.asarray(who)
    nearest = sim.argmax(axis=1)
    has_pair = np.array([(who_arr == p).sum() > 1 for p in who_arr])
    retrieval = float((who_arr[nearest] == who_arr)[has_pair].mean()) if has_pair.any() else None
    chance = float(np.mean([((who_arr == p).sum() - 1) / (len(who_arr) - 1) for p in who_arr[has_pair]]))
    return {
        "style_rank_corr": M.rank_correlation(np.asarray(teacher_amp), np.asarray(generated_amp)),
        "style_reference_amplitude": teacher_amp,
        "style_generated_head_std": generated_amp,
        "style_retrieval_acc": retrieval,
        "style_retrieval_chance": chance,
    }


def thresholds_for(model: KSDiff, train_clips: list[Clip]) -> tuple[float, float]:
    inputs = model_inputs(train_clips)
    anims = animate_model(model, inputs, steps=4, style=reference_styles(model, train_clips, train_clips))
    return calibrate_key_thresholds(train_clips, anims)


def load_for_eval(checkpoint: Path, recogniser: str | None = None) -> KSDiff:
    """A checkpoint to score on the features of ``recogniser`` (a FrontEndConfig.recogniser; None: the
    recogniser it was trained on). The features are the model config's front-end's, cached by its key."""
    model = load_model(checkpoint)
    if recogniser is not None:
        front_end = dataclasses.replace(model.cfg.front_end, recogniser=recogniser)
        model.cfg = dataclasses.replace(model.cfg, front_end=front_end)
    return model


def evaluate(
    checkpoint: Path,
    corpus: Path,
    cache: Path,
    max_clips: int,
    out: Path,
    seeds: int = 3,
    ablations: dict[str, Path] | None = None,
    recogniser: str | None = None,
) -> dict:
    """The table; ``ablations`` maps a row name to another checkpoint (same front-end) scored at 4 steps;
    ``recogniser``: every checkpoint scored on that recogniser's features (``load_for_eval``)."""
    model = load_for_eval(checkpoint, recogniser)
    held = held_out(model, corpus, cache, max_clips)
    clips, all_test, beats_audio, style = held.clips, held.all_test, held.beats_audio, held.style
    log.info("evaluating %s on %d held-out clips", checkpoint, len(clips))
    # whole-clip evaluation uses the offline front-end schedule, as a bake does
    inputs = model_inputs(clips)
    stream_inputs = model_inputs(clips, schedule="stream")

    rows: list[Row] = []
    runs: dict[str, list[Animation]] = {}
    for steps in (50, 4, 2):
        runs[f"KSDiff {steps} steps"] = animate_model(model, inputs, steps=steps, style=style)
    runs["4 steps, streaming features"] = animate_model(model, stream_inputs, steps=4, style=style)
    with_text = model_inputs(clips, transcript=True)
    runs["4 steps, with transcript"] = animate_model(model, with_text, steps=4, style=style)
    runs["no KEL (4 steps)"] = animate_model(model, inputs, steps=4, style=style, use_kel=False)
    runs["no style (4 steps)"] = animate_model(model, inputs, steps=4, style=None)
    closure = closure_for(model.cfg.front_end.name, DEFAULT_CLOSURE)
    if closure is not None:  # the lips sealed where the recogniser hears /p b m/, on by default in bake and serve
        four = runs["KSDiff 4 steps"]
        runs[CLOSURE_ROW] = [close_animation(a, i, closure) for a, i in zip(four, inputs, strict=True)]
    mean_e, mean_p = model.expr_mean.numpy(), model.pose_mean.numpy()
    runs["mean-pose baseline"] = [
        Animation(np.tile(mean_e, (len(c.expr), 1)), np.tile(mean_p, (len(c.expr), 1)),
                  np.zeros(len(c.expr)), np.zeros(len(c.expr)))
        for c in clips
    ]
    runs["teacher"] = [
        Animation(c.expr, c.pose, c.key_expr.astype(np.float32), c.key_pose.astype(np.float32)) for c in clips
    ]
    train_clips = load_clips(corpus, cache, model.cfg, "train", limit=48)
    thresholds = thresholds_for(model, train_clips)
    log.info("KEL thresholds calibrated on %d training clips: expression %.2f, pose %.2f",
             len(train_clips), *thresholds)
    for name, anims in runs.items():
        rows.append(Row(name, score(clips, anims, beats_audio, thresholds)))
    for name, path in (ablations or {}).items():
        other = load_for_eval(path, recogniser)
        if other.cfg.front_end != model.cfg.front_end:
            raise ValueError(f"ablation {path} uses another front-end than {checkpoint}")
        anims = animate_model(other, inputs, steps=4, style=reference_styles(other, clips, all_test))
        rows.append(Row(name, score(clips, anims, beats_audio, thresholds_for(other, train_clips))))
    by_name = {r.name: r.values for r in rows}
    base_mae = by_name["mean-pose baseline"]["mouth_mae"]
    teacher_ba = by_name["teacher"]["beat_align"]
    for r in rows:
        r.values["mae_vs_baseline"] = r.values["mouth_mae"] / base_mae if base_mae else None
        ba = r.values["beat_align"]
        r.values["beat_align_vs_teacher"] = ba / teacher_ba if ba is not None and teacher_ba else None
    # diversity of head pose across seeds, same audio
    samples = [animate_model(model, inputs, steps=4, style=style, seeds=[s] * len(inputs)) for s in range(seeds)]
    head_div = float(np.mean([M.diversity([samples[s][i].head for s in range(seeds)]) for i in range(len(clips))]))
    expr_div = float(
        np.mean([M.diversity([samples[s][i].blendshapes for s in range(seeds)]) for i in range(len(clips))])
    )
    style = style_study(model, all_test, steps=4)
    guided = style_study(model, all_test, steps=4, style_scale=STYLE_GUIDANCE)
    style["style_rank_corr_guided"] = guided["style_rank_corr"]
    style["style_generated_head_std_guided"] = guided["style_generated_head_std"]
    result = {
        "checkpoint": str(checkpoint),
        "held_out_clips": len(clips),
        "rows": {r.name: r.values for r in rows},
        "kel_thresholds": {"expression": thresholds[0], "pose": thresholds[1]},
        "head_pose_diversity_rad": head_div,
        "expression_diversity": expr_div,
        **style,
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (out / "eval.md").write_text(table)
    print(table)
    plot(result, clips[0], runs, out / "eval.png")
    return result


def quick_compare(checkpoints: dict[str, Path], corpus: Path, cache: Path, max_clips: int, out: Path,
                  recogniser: str | None = None) -> dict:
    """The table's two 4-step rows (offline and streaming features) for several checkpoints, side by side on
    the same held-out clips and seeds (a few minutes, where ``evaluate`` takes many): for comparing a
    fine-tune with the model it started from. Writes quick.json and quick.md."""
    result: dict[str, dict] = {}
    for name, checkpoint in checkpoints.items():
        model = load_for_eval(checkpoint, recogniser)
        held = held_out(model, corpus, cache, max_clips)
        clips, beats_audio, style = held.clips, held.beats_audio, held.style
        thresholds = thresholds_for(model, load_clips(corpus, cache, model.cfg, "train", limit=48))
        base = float(np.mean([M.mouth_mae(np.tile(model.expr_mean.numpy(), (len(c.expr), 1)), c.expr) for c in clips]))
        rows = {}
        for label, schedule in (("4 steps", "offline"), ("4 steps, streaming features", "stream")):
            anims = animate_model(model, model_inputs(clips, schedule=schedule), steps=4, style=style)
            rows[label] = score(clips, anims, beats_audio, thresholds)
            rows[label]["mae_vs_baseline"] = rows[label]["mouth_mae"] / base if base else None
        result[name] = {"checkpoint": str(checkpoint), "held_out_clips": len(clips), "rows": rows}
    keys = [k for k, _ in COLUMNS if k not in ("beat_align_vs_teacher",)]
    lines = ["| model | row | " + " | ".join(t for k, t in COLUMNS if k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, r in result.items():
        for label, values in r["rows"].items():
            lines.append(f"| {name} | {label} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "quick.json").write_text(json.dumps(result, indent=2))
    (out / "quick.md").write_text(table)
    print(table)
    return result


COLUMNS = (
    ("mouth_mae", "mouth MAE"),
    ("mae_vs_baseline", "MAE/base"),
    ("bilabial_closure", "p/b/m closed"),
    ("rest_share", "rest in silence"),
    ("jaw_corr", "jawOpen r"),
    ("beat_align", "BeatAlign"),
    ("beat_align_vs_teacher", "BA/teacher"),
    ("motion_beats_per_s", "head beats/s"),
    ("kel_f1_expr", "KEL F1 expr"),
    ("kel_f1_pose", "KEL F1 pose"),
    ("smile_level_r", "smile level r"),
)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_table(result: dict) -> str:
    by_shape = result["rows"]["KSDiff 4 steps"]["mouth_mae_by_shape"]
    base_by_shape = result["rows"]["mean-pose baseline"]["mouth_mae_by_shape"]
    lines = [
        f"Held-out split: {result['held_out_clips']} clips (voices and sentences unseen in training); "
        "audio only, no transcript.",
        "",
        "| run | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, values in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(k)) for k, _ in COLUMNS) + " |")
    lines += [
        "",
        f"- head-pose diversity across 3 seeds (4 steps): {result['head_pose_diversity_rad']:.4f} rad "
        f"(expression: {result['expression_diversity']:.4f})",
        f"- style: head-amplitude rank correlation over {len(result['style_reference_amplitude'])} reference "
        f"styles: {_fmt(result['style_rank_corr'])} (generated head std per style: "
        + ", ".join(f"{v:.4f}" for v in result["style_generated_head_std"]) + ")",
        f"- with style guidance {STYLE_GUIDANCE}: rank correlation {_fmt(result['style_rank_corr_guided'])} "
        "(generated head std per style: "
        + ", ".join(f"{v:.4f}" for v in result["style_generated_head_std_guided"]) + ")",
        f"- style encoder retrieval accuracy: {_fmt(result['style_retrieval_acc'])} "
        f"(chance {_fmt(result['style_retrieval_chance'])})",
        "- where the mouth error is, 4 steps (mean-pose baseline): " + ", ".join(
            f"{name} {err:.3f} ({base_by_shape[name]:.3f})" for name, err in sorted(
                by_shape.items(), key=lambda kv: -kv[1])[:8]) + " (every one in eval.json)",
        "- smile level r: the clips' mean smile against the teacher's, a persona's smile bias, which only the "
        "style tells",
        f"- KEL thresholds (chosen on training clips): expression {result['kel_thresholds']['expression']}, "
        f"pose {result['kel_thresholds']['pose']}",
        "- targets (4 steps): " + ", ".join(f"{k} {v}" for k, v in result["targets"].items()),
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, clip: Clip, runs: dict[str, list[Animation]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 11), gridspec_kw={"height_ratios": [1.4, 1, 1]})
    names = [n for n in result["rows"] if n != "teacher"]
    keys = ["bilabial_closure", "rest_share", "jaw_corr", "beat_align_vs_teacher", "kel_f1_expr", "kel_f1_pose"]
    x = np.arange(len(keys))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [result["rows"][n].get(k) or 0.0 for k in keys]
        axes[0].bar(x + i * width, vals, width, label=n)
    for j, k in enumerate(keys):
        if k in TARGETS:
            axes[0].hlines(TARGETS[k][1], j - 0.1, j + 0.9, colors="k", linestyles="dashed", lw=1)
    axes[0].set_xticks(x + 0.4 - width / 2, keys, fontsize=8)
    axes[0].set_ylim(0, 1.8)  # BeatAlign relative to the teacher can exceed 1
    axes[0].legend(fontsize=6, ncol=4, loc="upper left")
    axes[0].set_title("held-out scores (dashed: targets)")
    t = np.arange(len(clip.expr)) / 30
    jaw = motion.index("jawOpen")
    axes[1].plot(t, clip.expr[:, jaw], "k", lw=2, label="teacher")
    for n in ("KSDiff 50 steps", "KSDiff 4 steps", "KSDiff 2 steps"):
        axes[1].plot(t, runs[n][0].blendshapes[:, jaw], lw=1, label=n)
    axes[1].set_ylabel("jawOpen")
    axes[1].set_title(f"clip {clip.id}: {clip.text[:80]}")
    axes[1].legend(fontsize=7)
    axes[2].plot(t, clip.pose[:, 0], "k", lw=2, label="teacher pitch")
    axes[2].plot(t, runs["KSDiff 4 steps"][0].head[:, 0], lw=1, label="4 steps pitch")
    axes[2].plot(t, clip.pose[:, 1], "k--", lw=1.5, label="teacher yaw")
    axes[2].plot(t, runs["KSDiff 4 steps"][0].head[:, 1], lw=1, label="4 steps yaw")
    axes[2].set_ylabel("head (rad)")
    axes[2].set_xlabel("time (s)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
