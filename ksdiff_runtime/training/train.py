"""`ksdiff-runtime train`: train KSDiff on the generated corpus, resumably.

A run lives in one folder: ``config.toml`` (what was asked), ``last.pt`` (model, EMA,
optimiser, step and sampler state; rewritten atomically every ``checkpoint_every`` steps),
``losses.jsonl`` and ``losses.png``. Run the same command again and it resumes (the log's rows after
the checkpoint, from a run killed before its next one, are dropped). Once steps are under way, Ctrl-C or
SIGTERM ends the step, checkpoints it and stops (the command then exits as interrupted, 130); before, while
the feature cache is built, they stop it at once (its files are written whole or not at all). The weights
that ship are the EMA weights in float16 (``--ship PATH``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.presets import Preset, get_preset
from ksdiff_runtime.engine.sampling import WindowBatch, sample_windows
from ksdiff_runtime.engine.scheduler import DDIMScheduler
from ksdiff_runtime.engine.stream import low_pass
from ksdiff_runtime.features.frontend import FrontEndConfig
from ksdiff_runtime.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from ksdiff_runtime.model.config import CheckpointError, ModelConfig
from ksdiff_runtime.model.ksdiff import HEAD_MODULES, KSDiff, count_parameters

from .dataset import (
    CorpusError,
    WindowSampler,
    build_feature_cache,
    build_live_cache,
    check_live_shape,
    live_windows,
    load_clips,
)
from .mood_styles import add_mood_styles

log = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    """Training settings a run cannot use; the message names the setting (or the file)."""


@dataclass
class TrainConfig:
    corpus: str = "data/corpus"
    cache: str = "cache/features"
    out: str = "runs/ksdiff"
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 300
    max_steps: int = 20_000
    max_minutes: float = 0.0  # stop (with a checkpoint) after this long; 0 = no limit
    stop_after: int = 0  # stop at this step although the schedule runs to max_steps (ablations at equal budget)
    ema_decay: float = 0.999
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    keep_every: int = 0  # also keep the EMA weights of every Nth step as step_N.pt (0 = never)
    log_every: int = 25
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch (0 = all cores)
    init_from: str = ""  # fine-tune: start from this checkpoint's weights and motion statistics
    closure_weight: float = 0.0  # weight of KSDiff.closure_loss (lips shut where the target's are)
    opening_weight: float = 0.0  # weight of KSDiff.opening_loss (lips not shut where the target's are open)
    # share of whole-clip windows trained with their previous frames hidden, as at a take's start
    # (KSDiff.training_loss): otherwise almost every window can copy a persona's smile from the frames before it,
    # and the network never learns to read it from the style (docs/STYLE.md). Not the live-shaped windows unless
    # context_drop_live: their context is what the model made hop by hop, and a stream's first hop is one of
    # thousands
    context_drop: float = 0.0
    context_drop_live: bool = False
    # a fine-tune's trainable parts: the model's child modules by name, comma-separated (e.g. "den_expr"); the
    # rest (and the null style, a parameter of no module) stays as init_from has it. Empty: every weight
    train_only: str = ""
    # share of steps whose batch is live-shaped (dataset.live_windows): live_preset's window, hop and
    # lookahead, scored on the hop's frames only, at the noise steps its sampler visits
    live_windows: float = 0.0
    live_preset: str = "low-latency"
    # a live window's C context frames: "self", made by the model one hop at a time, as a stream's are (the
    # preset's head smoothing; the window's reference style, as eval-stream gives streams: own_context);
    # "teacher", the teacher's frames
    live_context: str = "self"
    # score the head on live windows too (False: the face only; a live stream's head is livened after the
    # model, which the rollout does not do)
    live_head: bool = True
    # the features of live windows: "block", the front-end's block schedule (block_ms, lookahead_ms), the
    # cache's ``stream``; "preset", the live preset's own (its feature lookahead, recogniser context and
    # groups), what a stream of that preset computes (dataset.build_live_cache)
    live_features: str = "block"

    def __post_init__(self) -> None:
        # numbers a run cannot use are refused here, by name, before the long feature-cache build (not as an
        # error deep in torch or numpy, or a run that silently never stops)
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "workers"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("warmup_steps", "stop_after", "keep_every", "threads"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainConfigError(f"lr must be a positive number, not {self.lr}")
        if not (math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise TrainConfigError(f"max_minutes must be 0 (no limit) or more, not {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainConfigError(f"ema_decay must be in 0..1 (1 excluded), not {self.ema_decay}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TrainConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if not 0.0 <= self.live_windows <= 1.0:
            raise TrainConfigError(f"live_windows is a share of steps in 0..1, not {self.live_windows}")
        if not 0.0 <= self.context_drop <= 1.0:
            raise TrainConfigError(f"context_drop is a share of windows in 0..1, not {self.context_drop}")
        if self.train_only and not self.init_from:
            raise TrainConfigError("train_only fine-tunes part of a trained model: give init_from too")
        preset = get_preset(self.live_preset)  # a clear error naming the known presets
        if self.live_features not in ("block", "preset"):
            raise TrainConfigError(f"live_features must be 'block' or 'preset', not {self.live_features!r}")
        if self.live_context not in ("self", "teacher"):
            raise TrainConfigError(f"live_context must be 'self' or 'teacher', not {self.live_context!r}")
        if self.live_windows > 0 and self.live_context == "self" and preset.steps != 1:
            raise TrainConfigError(f"live_context 'self' makes context with the 1-step sampler; preset {preset.name} "
                             f"takes {preset.steps} steps")


def load_config(path: str | Path | None) -> tuple[ModelConfig, TrainConfig]:
    """Model and training settings from a TOML file with [model], [model.front_end] and [train] tables."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"training config {path} does not exist")
        data = tomllib.loads(path.read_text())
    model_data = dict(data.get("model", {}))
    try:
        if "front_end" in model_data:
            model_data["front_end"] = FrontEndConfig(**model_data["front_end"])
        model_cfg = ModelConfig(**model_data)
        train_cfg = TrainConfig(**data.get("train", {}))
    except TypeError as exc:  # a misspelt key: name it and the file, not a dataclass traceback
        raise TrainConfigError(f"training config {path}: {exc}") from exc
    return model_cfg, train_cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def plot_losses(log_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("step", "lr", "elapsed_s", "live")]
    fig, ax = plt.subplots(figsize=(9, 5))
    steps = [r["step"] for r in rows]
    for k in keys:
        ax.plot(steps, [r[k] for r in rows], label=k, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("KSDiff training losses")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def train(model_cfg: ModelConfig, cfg: TrainConfig, ship: Path | None = None) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    model = KSDiff(model_cfg)
    params = trainable(model, cfg.train_only)  # a bad module name is refused before the long cache build
    last = out / "last.pt"
    # the checkpoints are read (and refused, by name) before the long cache build too
    state = resume_state(last, model_cfg, cfg.train_only) if last.is_file() else None
    start = init_state(Path(cfg.init_from), model_cfg) if cfg.init_from and state is None else None
    log.info("device %s; building the feature cache", device)
    build_feature_cache(Path(cfg.corpus), Path(cfg.cache), model_cfg, workers=cfg.workers)
    live_cache = None
    if cfg.live_windows > 0 and cfg.live_features == "preset":
        live = get_preset(cfg.live_preset)
        live_cache = build_live_cache(Path(cfg.corpus), Path(cfg.cache), model_cfg,
                                      live.front_end_config(model_cfg.front_end), live.feature_block_frames,
                                      workers=cfg.workers)
    clips = load_clips(Path(cfg.corpus), Path(cfg.cache), model_cfg, "train", live_cache=live_cache)
    if not clips:
        raise CorpusError(f"corpus {cfg.corpus} has no training clips (none in its manifest's train split)")
    sampler = WindowSampler(clips, model_cfg, seed=cfg.seed)

    if start is not None:
        # a fine-tune keeps the checkpoint's motion statistics: the exported graphs and every consumer of the
        # model's normalised space stay as they were
        model.load_state_dict(start.float().state_dict())
        log.info("fine-tuning from %s", cfg.init_from)
    else:
        model.set_motion_stats(
            torch.from_numpy(np.concatenate([c.expr for c in clips])),
            torch.from_numpy(np.concatenate([c.pose for c in clips])),
        )
    model.to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if state is not None:
        # (read onto the CPU: load_state_dict moves weights and optimiser state to the device, and torch's RNG
        # state must stay a CPU tensor whatever the device)
        model.load_state_dict(state["train_model"])
        ema.load_state_dict(state["model"])  # the checkpoint's main weights are the EMA ones
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d", last, step)
        state = None  # (its tensors are copied: let them go)
    # a run stopped between checkpoints logged steps it now trains again: drop their rows, or the log (and its
    # plot) would hold those steps twice
    trim_losses(out / "losses.jsonl", step)
    (out / "config.toml").write_text(_to_toml(model_cfg, cfg))
    log.info("model: %.2fM parameters (%.2fM trained); %d training clips", count_parameters(model) / 1e6,
             sum(p.numel() for p in params) / 1e6, len(clips))

    def checkpoint() -> None:
        save_checkpoint(
            last,
            ema,
            train_model=model.state_dict(),
            optimizer=opt.state_dict(),
            step=step,
            sampler_rng=sampler.rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            train_only=cfg.train_only,
        )

    live = get_preset(cfg.live_preset)
    live_shape = (live.hop_frames, live.window_frames, live.model_lookahead_frames)
    lead = model_cfg.motion_context_frames if cfg.live_context == "self" else 0  # hops made before the scored one
    if cfg.live_windows > 0:
        check_live_shape(model_cfg, *live_shape, at=lead)
    live_steps = np.array(DDIMScheduler(model.scheduler.alpha_bar.cpu().numpy(), live.steps).timesteps)

    def next_batch() -> tuple[dict[str, np.ndarray], bool]:
        # drawn only when asked for, so runs without live windows keep their random streams
        is_live = cfg.live_windows > 0 and sampler.rng.random() < cfg.live_windows
        if not is_live:
            return sampler.batch(cfg.batch_size), False
        batch = sampler.batch(cfg.batch_size, live=True, lead=lead)
        batch = own_context(model, batch, live) if lead else live_windows(batch, model_cfg, *live_shape)
        batch["t"] = sampler.rng.choice(live_steps, size=cfg.batch_size)
        if not cfg.live_head:
            batch["score_pose"] = np.zeros_like(batch["score"])
        return batch, True

    log_file = (out / "losses.jsonl").open("a")
    started = time.monotonic()
    running: dict[str, float] = {}
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    # Ctrl-C or a SIGTERM (a scheduler's, a shutdown's) ends the step under way, checkpoints it and stops: the
    # work since the last checkpoint is kept (up to checkpoint_every steps, hours on a CPU)
    with stop_requests() as stop:
        while step < cfg.max_steps:
            arrays, is_live = next_batch()
            batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            losses = model.training_loss(batch, closure_weight=cfg.closure_weight, opening_weight=cfg.opening_weight,
                                         context_drop=cfg.context_drop if cfg.context_drop_live or not is_live else 0.0)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # a short EMA early on
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
                for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
                    be.copy_(bm)
            step += 1
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            if cfg.live_windows > 0:
                running["live"] = running.get("live", 0.0) + is_live  # the share of live-shaped steps, logged
            bar.update(1)
            if step % cfg.log_every == 0:
                row = {k: v / cfg.log_every for k, v in running.items()}
                running = {}
                bar.set_postfix(
                    total=f"{row['total']:.3f}", x0e=f"{row['x0_expr']:.3f}", x0p=f"{row['x0_pose']:.3f}"
                )
                row.update(step=step, lr=lr_at(step, cfg), elapsed_s=round(time.monotonic() - started, 1))
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
            out_of_time = cfg.max_minutes > 0 and time.monotonic() - started > cfg.max_minutes * 60
            out_of_time = out_of_time or (cfg.stop_after > 0 and step >= cfg.stop_after)
            stopping = stop.signal is not None  # read once: a signal after this line is taken at the next step
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or out_of_time or stopping:
                checkpoint()
                plot_losses(out / "losses.jsonl", out / "losses.png")
            if cfg.keep_every and step % cfg.keep_every == 0:
                save_checkpoint(out / f"step_{step:06d}.pt", ema, half=True, step=step)
            if out_of_time:
                log.info(
                    "stopping after %.1f minutes at step %d (resume by running again)", cfg.max_minutes, step
                )
                break
            if stopping:
                break
    bar.close()
    log_file.close()
    if stop.signal is not None and step < cfg.max_steps:
        log.info("%s: stopped at step %d, checkpointed in %s (resume by running again)",
                 signal.Signals(stop.signal).name, step, last)
        raise KeyboardInterrupt  # the command ends as interrupted (not shipping a half-trained model)
    if ship is not None:
        save_checkpoint(ship, ema, half=True, step=step)
        add_mood_styles(ship)  # the moods' styles belong to these weights (training/mood_styles.py)
        log.info("shipped EMA weights (float16) and their moods' styles to %s (%.1f MB)", ship,
                 ship.stat().st_size / 1e6)
    return last


@dataclass
class StopRequest:
    """The stop signal received while training (None: none yet)."""

    signal: int | None = None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """While inside: SIGINT and SIGTERM are noted in the StopRequest (the trainer stops after its step, checkpointed)
    instead of ending the process mid-step; a second one acts as it would have outside (Ctrl-C twice aborts at
    once: last.pt is written whole or not at all). Outside the main thread (no signals there) nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    # taken even where whoever started us ignored it (a script's background job ignores SIGINT): `kill -INT` then
    # stops the run checkpointed, as it stops `serve`, and as the tests and CI, run in the background, send it
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def note(signum: int, _frame: object) -> None:
        request.signal = signum
        restore()

    for sig in previous:
        signal.signal(sig, note)
    try:
        yield request
    finally:
        restore()


def resume_state(last: Path, model_cfg: ModelConfig, train_only: str) -> dict[str, Any]:
    """The training state in ``last`` (read onto the CPU), or CheckpointError naming the file and what is wrong:
    unreadable (a copy cut short, a full disk), not a run's checkpoint, or another model or fine-tune's."""
    try:
        state = read_checkpoint(last)  # corrupt or not a checkpoint: named, with the reason
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: {exc}. Move it aside to start the run over (or put back a copy "
                              "of it: a step_N.pt holds the EMA weights only)") from exc
    missing = [k for k in ("train_model", "optimizer", "step", "sampler_rng", "torch_rng") if k not in state]
    if missing:
        raise CheckpointError(f"{last} is not a training run's checkpoint (no {', '.join(missing)}; a shipped or "
                              "step_N.pt file holds the weights only): to fine-tune from it, move it out of the "
                              "run folder and pass it as --init-from")
    differs = config_differences(state["config"], model_cfg)
    if differs:
        raise CheckpointError(f"{last} was trained with another model config ({differs}); use another --out, "
                              "or this run's config")
    if state.get("train_only", "") != train_only:  # the optimiser's state is that of those weights
        raise TrainConfigError(f"{last} trained {state.get('train_only') or 'every weight'}, this run "
                               f"{train_only or 'every weight'}; resume with the same --train-only")
    return state


def init_state(path: Path, model_cfg: ModelConfig) -> KSDiff:
    """The model to fine-tune from ``path``; CheckpointError naming the file and the config fields that differ."""
    start = load_model(path)  # missing, corrupt, not a checkpoint or not this code's: named
    # it may move the model to the other recogniser's features (the same classes; issue 14 item 5)
    recogniser = dataclasses.replace(start.cfg.front_end, recogniser=model_cfg.front_end.recogniser)
    differs = config_differences(dataclasses.replace(start.cfg, front_end=recogniser).to_dict(), model_cfg)
    if differs:
        raise CheckpointError(f"{path} has another model config than this run's ({differs}); fine-tune with its "
                              "own [model] table")
    return start


def config_differences(saved: dict[str, Any], model_cfg: ModelConfig) -> str:
    """The model config fields where ``saved`` (a checkpoint's config dict) and ``model_cfg`` differ, as
    'name: checkpoint X, this run Y; ...' (empty when they agree)."""
    try:
        theirs = ModelConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError) as exc:
        return f"its config does not load: {exc}"
    ours = model_cfg.to_dict()
    flat_theirs = {**{k: v for k, v in theirs.items() if k != "front_end"},
                   **{f"front_end.{k}": v for k, v in theirs["front_end"].items()}}
    flat_ours = {**{k: v for k, v in ours.items() if k != "front_end"},
                 **{f"front_end.{k}": v for k, v in ours["front_end"].items()}}
    return "; ".join(f"{k}: checkpoint {flat_theirs[k]!r}, this run {flat_ours[k]!r}"
                     for k in flat_ours if flat_theirs.get(k) != flat_ours[k])


def trim_losses(path: Path, step: int) -> None:
    """Keep the rows of the loss log up to ``step`` (the step a run resumes at): the ones after were logged by a
    run that stopped before checkpointing them. Rewritten atomically; a torn last line (a kill mid-write) goes."""
    if not path.is_file():
        return
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in keep))
        os.replace(tmp, path)
        log.info("dropped %d rows of %s logged after step %d (not checkpointed)", dropped, path, step)


def trainable(model: KSDiff, only: str) -> list[torch.nn.Parameter]:
    """The parameters a run trains: all (``only`` empty) or those of the named modules, the others frozen.
    A name is a module's path in the model (``den_expr``, ``encoder.pose_out``), or ``head``: the head's own
    branch (model/ksdiff.py's HEAD_MODULES), so a fine-tune of the head leaves the face to the bit."""
    if not only:
        return list(model.parameters())
    names = [n.strip() for n in only.split(",") if n.strip()]
    names = [m for n in names for m in (HEAD_MODULES if n == "head" else (n,))]
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        children = ", ".join(n for n, _ in model.named_children())
        raise TrainConfigError(f"train_only: no module {', '.join(unknown)} in the model; it has head, {children} "
                         "(or a submodule's dotted path)")
    keep = {id(p) for n in names for p in modules[n].parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if p.requires_grad]


def live_hop(model: KSDiff, window: dict[str, np.ndarray], style: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """A live window's frames as the runtime's 1-step sampler makes them (engine/sampling.py through a torch
    backend): expression [B, N, 52] and head [B, N, 3] in natural units, from its C context frames, with
    ``style`` [B, style_dim] (None: the null style) and no transcript; the noise is drawn from torch's
    generator (checkpointed with a run)."""
    cfg = model.cfg
    C = cfg.motion_context_frames
    B, N = window["known"].shape[0], window["known"].shape[1] - C
    noise = torch.randn(B, N, cfg.expr_dim + cfg.pose_dim).numpy()
    training = model.training
    backend = TorchBackend(model, device=str(next(model.parameters()).device))  # (sets eval mode)
    made = sample_windows(backend, WindowBatch(
        feats=window["feats"], prosody=window["prosody"], prev_expr=window["expr"][:, :C],
        prev_pose=window["pose"][:, :C], known=window["known"][:, :C], noise=noise, style=style,
        text=window["text"]), steps=1)
    model.train(training)
    return made.expr, made.pose


def reference_style(model: KSDiff, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The style vectors [B, style_dim] of a batch's first reference clips (``ref_a``): the network's style
    input of a stream opened with a style vector (the SDK's, eval-stream's; `serve` gives the network the null
    style and puts a style on its output, engine/style.py)."""
    training = model.training
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        style = model.style_of(*(torch.from_numpy(batch[k]).to(dev) for k in ("ref_a_expr", "ref_a_pose")))
    model.train(training)
    return style.cpu().numpy()


def own_context(model: KSDiff, batch: dict[str, np.ndarray], preset: Preset, frames: int | None = None
                ) -> dict[str, np.ndarray]:
    """The live window at window frame ``frames`` (default C) of ``batch`` (WindowSampler.batch(live=True,
    lead=frames)) with the frames before it made by the model hop by hop, from window frame 0 on (the
    teacher's frames before that), as a stream of ``preset`` makes them: each hop a live window
    made by the 1-step sampler (live_hop) with the batch's reference style (reference_style), its head
    low-passed from the frame before (Preset.head_smoothing_ms, engine/stream.low_pass). (A stream's
    liveliness stage works on what goes out, not on its context.)"""
    C = model.cfg.motion_context_frames
    frames = C if frames is None else frames
    shape = (preset.hop_frames, preset.window_frames, preset.model_lookahead_frames)
    style = reference_style(model, batch)
    expr, pose, known = batch["expr"].copy(), batch["pose"].copy(), batch["known"].copy()
    k = 0
    while k < frames:  # the hop at window frame k makes it and the hop's next ones (rows C + k ..)
        cut = live_windows(dict(batch, expr=expr, pose=pose, known=known), model.cfg, *shape, at=k)
        made_e, made_p = live_hop(model, cut, style)
        n = min(preset.hop_frames, frames - k)
        if preset.head_smoothing_ms > 0:  # from the frame before, or (none before it) from the hop's first
            before = np.where(known[:, C + k - 1, None] > 0, pose[:, C + k - 1], made_p[:, 0])
            made_p[:, :n] = low_pass(made_p[:, :n], before, preset.head_smoothing_ms)
        expr[:, C + k : C + k + n], pose[:, C + k : C + k + n] = made_e[:, :n], made_p[:, :n]
        known[:, C + k : C + k + n] = 1.0
        k += n
    return live_windows(dict(batch, expr=expr, pose=pose, known=known), model.cfg, *shape, at=frames)


def _to_toml(model_cfg: ModelConfig, cfg: TrainConfig) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    model = model_cfg.to_dict()
    front_end = model.pop("front_end")
    lines = ["[model]"] + [f"{k} = {fmt(v)}" for k, v in model.items()]
    lines += ["", "[model.front_end]"] + [f"{k} = {fmt(v)}" for k, v in front_end.items() if v is not None]
    lines += ["", "[train]"] + [f"{k} = {fmt(v)}" for k, v in dataclasses.asdict(cfg).items()]
    return "\n".join(lines) + "\n"
