"""Quality at speed: the held-out metrics through the streaming engine, against whole-clip animation.

Every held-out clip becomes a live stream of the engine; all streams are fed at once, round
robin, in chunks of random size (1 sample to 1 s), so hops are batched across streams as
in a server. The whole-clip row is what ``eval`` and ``bake`` compute: the offline
front-end schedule and 32-frame windows at 4 DDIM steps. The same per-clip style vectors
and seeds are used everywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE
from ksdiff_runtime.engine.controls import Controls
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.offline import Animation
from ksdiff_runtime.engine.presets import LINE_EXPRESSION_STEPS, PRESETS, Preset
from ksdiff_runtime.features.streaming_frontend import LOOKAHEAD, WEIGHTS, StreamingPosteriorgramFrontEnd
from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.sessions import DEFAULT_MAX_STREAMS, Sessions
from ksdiff_runtime.training.dataset import Clip
from ksdiff_runtime.training.evaluate import animate_model, held_out, model_inputs, score

log = logging.getLogger("ksdiff_runtime.stream_eval")

METRICS = (
    ("mouth_mae", "mouth MAE", "lower"),
    ("bilabial_closure", "p/b/m closed", "higher"),
    ("rest_share", "rest in silence", "higher"),
    ("jaw_corr", "jawOpen r", "higher"),
    ("beat_align", "BeatAlign", "higher"),
    ("motion_beats_per_s", "head beats/s", "info"),
)
TOLERANCE = 0.05  # the bar: within 5 % of whole-clip evaluation


def stream_animations(
    engine: StreamingEngine, clips: list[Clip], styles: np.ndarray | None, rng: np.random.Generator,
    max_chunk: int = 16000, mode: str = "live", controls: list[Controls] | None = None,
) -> list[Animation]:
    """Animate clips as concurrent engine streams fed in random-sized chunks (mode "live"), or as lines
    pushed whole and ended at once (mode "line", as the SDK's ``animate`` sends a clip); ``styles``: each
    stream's style vector for the network (None: the null style, as `serve` gives a neutral stream);
    ``controls``: each stream's (None: the engine's)."""
    ids = [engine.open_stream(f"clip{i}", seed=0, style=None if styles is None else styles[i], mode=mode,
                              controls=None if controls is None else controls[i]) for i in range(len(clips))]
    if mode == "line":
        max_chunk = max(c.audio.size for c in clips)
    pos = [0] * len(clips)
    frames: dict[str, list] = {sid: [] for sid in ids}
    total = sum(c.audio.size for c in clips)
    with tqdm(total=total, unit="sample", unit_scale=True, desc=f"streams ({engine.preset.name}, {mode})") as bar:
        while any(p < c.audio.size for p, c in zip(pos, clips, strict=True)):
            for i, (sid, clip) in enumerate(zip(ids, clips, strict=True)):
                if pos[i] >= clip.audio.size:
                    continue
                n = int(rng.integers(1, max_chunk + 1))
                engine.push(sid, clip.audio[pos[i] : pos[i] + n])
                bar.update(min(n, clip.audio.size - pos[i]))
                pos[i] += n
                if pos[i] >= clip.audio.size:
                    engine.end_stream(sid)
            for f in engine.step().frames:
                frames[f.stream].append(f)
        while engine.stream_ids:  # the ended streams' last hops
            for f in engine.step().frames:
                frames[f.stream].append(f)
    anims = []
    for sid, clip in zip(ids, clips, strict=True):
        # a stream also animates its audio's last partial frame period; the teacher stops before it
        fs = frames[sid][: len(clip.expr)]
        if len(fs) != len(clip.expr):
            raise RuntimeError(f"stream {sid}: {len(fs)} frames for a clip of {len(clip.expr)}")
        zeros = np.zeros(len(fs), np.float32)
        anims.append(Animation(np.stack([f.blendshapes for f in fs]), np.stack([f.head for f in fs]), zeros, zeros))
    return anims


def all_at_once(clips: list[Clip]) -> Sessions:
    """A registry that takes every clip as a stream at once (the runtime's default stops at 64)."""
    return Sessions(max_streams=max(DEFAULT_MAX_STREAMS, len(clips)), admission=None)


def stream_eval(
    checkpoint: Path, corpus: Path, cache: Path, max_clips: int, out: Path, backend_name: str = "torch-cpu",
    variants: list[Preset] | None = None, line_steps: list[int] | None = None, windowed: bool = False,
    windowed_recogniser: bool = False, recogniser_weights: Path | None = None, recogniser_lookahead: int | None = None,
    line_face_steps: int | None = LINE_EXPRESSION_STEPS, line_base: Preset | None = None, null_style: bool = False,
    closure: bool = False, int8: bool = False,
) -> dict:
    """Both presets (or, given ``variants``, those presets instead) against whole-clip animation; with
    ``line_steps``, also every clip as a line (mode "line") at each of those step counts; ``windowed``:
    each preset's live streams also conditioned window by window (no stream conditioner);
    ``windowed_recogniser``: also with each hop re-recognising its window (no streaming recogniser), and
    lines with the full-context recogniser;
    ``recogniser_weights`` / ``recogniser_lookahead``: the streaming recogniser's, instead of the shipped;
    ``line_face_steps``: lines' face keeps its prediction after this many of their steps (None: all);
    ``line_base``: the engine preset lines derive from (None: low-latency, the runtime's default);
    ``null_style``: every row with the network's null style, as `serve` runs a neutral stream (engine/style.py),
    not each clip's reference style (another clip of its persona, as the SDK can give a stream);
    ``closure``: also each preset's live streams with the bilabial closure (engine/closure.py), as `serve` runs
    them; ``int8``: ONNX Runtime on the CPU runs the streams' denoiser in int8, as `serve` does."""
    model = load_model(checkpoint)
    held = held_out(model, corpus, cache, max_clips)
    clips, beats_audio = held.clips, held.beats_audio
    style = None if null_style else held.style
    styles = None if style is None else style.numpy()
    rows = {"whole clip (offline features, 4 steps)": score(
        clips, animate_model(model, model_inputs(clips), steps=4, style=style), beats_audio, (0.5, 0.5))}
    backend = load_backend(backend_name, checkpoint, int8=int8)
    presets: dict[str, Preset] = {}
    for preset in variants or list(PRESETS.values()):
        # (stream conditioner, streaming recogniser, bilabial closure): as the engine runs, then those asked for
        runs = [(True, True, False)] + ([(True, True, True)] if closure else [])
        runs += ([(False, True, False)] if windowed else []) + ([(True, False, False)] if windowed_recogniser else [])
        for streamed, recognised, closed in runs:
            front_end = None
            if recognised and (recogniser_weights is not None or recogniser_lookahead is not None):
                front_end = StreamingPosteriorgramFrontEnd(
                    preset.front_end_config(backend.constants.cfg.front_end), recogniser_weights or WEIGHTS,
                    LOOKAHEAD if recogniser_lookahead is None else recogniser_lookahead)
            engine = StreamingEngine(backend, preset, stream_conditioner=streamed, front_end=front_end,
                                     streaming_recogniser=recognised, sessions=all_at_once(clips),
                                     closure=DEFAULT_CLOSURE if closed else None)
            anims = stream_animations(engine, clips, styles, np.random.default_rng(1))
            label = f"stream {preset.name} ({preset.steps} steps, hop {preset.hop_frames})"
            label += "" if streamed else ", windowed conditioner"
            label += "" if recognised else ", windowed recogniser"
            label += ", bilabial closure" if closed else ""
            rows[label] = score(clips, anims, beats_audio, (0.5, 0.5))
            presets[label] = preset
    for steps in line_steps or []:
        for recognised in (True, False) if windowed_recogniser else (True,):
            engine = StreamingEngine(backend, line_base or "low-latency", line_steps=steps,
                                     line_expression_steps=line_face_steps, streaming_recogniser=recognised,
                                     sessions=all_at_once(clips))
            anims = stream_animations(engine, clips, styles, np.random.default_rng(1), mode="line")
            face = engine.line_preset.expression_steps
            label = f"lines ({steps} steps{f', the face {face}' if face not in (None, steps) else ''}, whole windows)"
            label += f", from {line_base.name}" if line_base is not None else ""
            label += "" if recognised else ", full-context recogniser"
            rows[label] = score(clips, anims, beats_audio, (0.5, 0.5))
            presets[label] = engine.line_preset
    whole = rows["whole clip (offline features, 4 steps)"]
    deltas: dict[str, dict[str, float | None]] = {}
    for label in presets:
        deltas[label] = {}
        for key, _, better in METRICS:
            a, b = whole.get(key), rows[label].get(key)
            if a is None or b is None or better == "info":
                continue
            rel = (b - a) / abs(a) if a else None
            deltas[label][key] = rel
    result = {"checkpoint": str(checkpoint), "backend": backend.name,
              "precision": getattr(backend, "precision", "float32"), "clips": len(clips),
              "style": "null" if null_style else "reference", "rows": rows,
              "relative_to_whole_clip": deltas,
              "presets": {label: vars(p) for label, p in presets.items()}, "tolerance": TOLERANCE}
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream_quality.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (out / "stream_quality.md").write_text(table)
    print(table)
    return result


def format_table(result: dict) -> str:
    style = ("the null style (as `serve` gives a neutral stream)" if result.get("style") == "null"
             else "each clip's reference style")
    lines = [
        f"Held-out clips: {result['clips']}, streamed concurrently in random chunks (1 sample to 1 s), the network "
        f"given {style}. "
        f"Brackets: change against whole-clip; ! marks a worsening beyond {result['tolerance']:.0%}.",
        "",
        "| run | " + " | ".join(t for _, t, _ in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for label, values in result["rows"].items():
        cells = []
        for key, _, better in METRICS:
            v = values.get(key)
            cell = "n/a" if v is None else f"{v:.3f}"
            rel = result["relative_to_whole_clip"].get(label, {}).get(key)
            if rel is not None:
                worse = rel > result["tolerance"] if better == "lower" else rel < -result["tolerance"]
                cell += f" ({rel:+.1%}{' !' if worse else ''})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
