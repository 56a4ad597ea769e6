"""`ksdiff-runtime serve`: run the runtime until SIGINT/SIGTERM (or until its files have played)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ksdiff_runtime import __version__
from ksdiff_runtime.cli import logs
from ksdiff_runtime.cli.supervise import (
    endpoint_to_reuse,
    reusable_probe,
    supervise,
    under_supervisor,
    write_ready,
)
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.engine.sampling import DEFAULT_MOOD_GUIDANCE
from ksdiff_runtime.motion import MOODS, SAMPLE_RATE, STYLES
from ksdiff_runtime.outputs import livelink, preview, vmc, vts
from ksdiff_runtime.outputs.livelink import LiveLinkOutput
from ksdiff_runtime.outputs.preview import PreviewOutput
from ksdiff_runtime.outputs.udp import OutputConfigError
from ksdiff_runtime.outputs.vmc import VmcOutput
from ksdiff_runtime.outputs.vts import VtsOutput
from ksdiff_runtime.server.config import MAX_FPS, ConfigError, ServeConfig, load_config
from ksdiff_runtime.server.runtime import Runtime, RuntimeStartError, build_engine
from ksdiff_runtime.server.security import CurveKeys, SecurityError
from ksdiff_runtime.sessions import RefusedError
from ksdiff_runtime.sources import FileSource, MicSource, SettingsRefusedError, Source, SourceError, rescan_devices

log = logging.getLogger("ksdiff_runtime.server")

WAIT_RETRY_S = 1.0  # how often a source the machine had no room for is tried again


def preset_help() -> str:
    """The presets and the audio each waits for before its worst frame can be made (compute and transport
    come on top: about 10 ms for one stream on a 2-core CPU, docs/ENGINE.md "Speed")."""
    use = {"low-latency": "a VTuber's mic", "quality": "NPC lines"}
    default = ServeConfig().preset
    return "; ".join(f"{name} ({'default; ' if name == default else ''}{use[name] + ', ' if name in use else ''}"
                     f"waits {p.latency_budget_ms():.0f} ms for audio)" for name, p in PRESETS.items())


def configure_serve(p: argparse.ArgumentParser) -> None:
    defaults = ServeConfig()
    p.description = ("Animate live speech and publish ARKit blendshape and head-pose frames over ZeroMQ "
        "(wire protocol v1, protocol/SPEC.md). Streams come from the microphone (--mic), from files "
        "(--file) and from SDK clients pushing audio to the request socket. Settings come from "
        "--config (TOML; see configs/serve.toml), then flags. Stops cleanly on Ctrl-C / SIGTERM.")
    # every flag defaults to None so that only the flags given override the config file
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below (flags win)")
    p.add_argument("--pub", help=f"PUB endpoint for frames (default {defaults.pub})")
    p.add_argument("--router", help=f"ROUTER endpoint for requests and pushed audio (default {defaults.router})")
    p.add_argument("--backend", help="auto (default), torch, torch-cpu, torch-cuda, onnxruntime, "
                   "onnxruntime-cpu, onnxruntime-cuda, tensorrt")
    p.add_argument("--preset", help=preset_help())
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--fps", type=int, help=f"output frame rate, 1 to {MAX_FPS} (default {defaults.fps})")
    p.add_argument("--max-streams", type=int, help=f"a ceiling on streams served at once (default "
                   f"{defaults.max_streams}); below it the measured capacity decides")
    p.add_argument("--max-streams-per-client", type=int,
                   help="streams one client connection may hold at once, where several clients share the runtime "
                   "(default 0: no ceiling of its own, a game may open all its NPCs' lines on one connection)")
    p.add_argument("--no-admission", dest="admission", action="store_const", const=False,
                   help="take every stream up to --max-streams instead of refusing those beyond the measured "
                   "capacity (under load the engine then sheds frames of every stream)")
    p.add_argument("--no-voice-gate", dest="voice_gate", action="store_const", const=False,
                   help="let the mouth follow every sound, not only voices (by default it rests where Silero VAD "
                   "hears no voice: music, fans, keys, noise; docs/ENGINE.md)")
    p.add_argument("--no-closure", dest="closure", action="store_const", const=False,
                   help="the model's lips alone: do not seal them where the recogniser hears /p b m/ (by default "
                   "they are; docs/ENGINE.md)")
    p.add_argument("--no-liveliness", dest="liveliness", action="store_const", const=False,
                   help="the model's eyes and head alone: no added blinks, gaze micro-saccades, head centring or sway")
    p.add_argument("--mood", choices=MOODS,
                   help="every stream's mood, unless a client sets its own (default neutral; [controls] mood)")
    p.add_argument("--mood-intensity", type=float, metavar="0..1",
                   help="how much of the mood (default 1; [controls] mood_intensity)")
    p.add_argument("--mood-guidance", type=float, metavar="0..4",
                   help="how strongly the network speaks in a stream's mood: 0 not at all (the mood is only its held "
                   "expression), 1 conditioned on it, above 1 more so, at one more denoiser row per stream "
                   f"(default {DEFAULT_MOOD_GUIDANCE:g}; docs/ENGINE.md)")
    p.add_argument("--network-style", dest="network_style", action="store_const", const=True,
                   help="a stream's style take also reaches the network's own style input (its style vector), not "
                   "only the output's gains: the network then moves like the take by itself (default off; "
                   "docs/STYLE.md)")
    p.add_argument("--style", metavar="STYLE|TAKE",
                   help=f"every stream's style, unless a client sets its own: {', '.join(STYLES)}, or a reference take "
                   "of a face (a Live Link Face .csv, or a bake .json) whose head, brow and mouth motion the face "
                   "follows (default none; [controls] style; docs/STYLE.md)")
    p.add_argument("--windowed-recogniser", dest="streaming_recogniser", action="store_const", const=False,
                   help="re-recognise each hop's window of audio instead of keeping a streaming recogniser per live "
                   "stream (the streaming one is closer to a bake: docs/STREAMING_RECOGNISER.md)")
    p.add_argument("--max-ahead-s", type=float, help="how far beyond real time a client may push audio (default "
                   f"{defaults.max_ahead_s:g} s; more is refused with busy)")
    p.add_argument("--curve-secret-key", metavar="FILE", help="serve with CurveZMQ: the server's .key_secret file "
                   "(make keys with `ksdiff-runtime keys server CLIENT`); required beyond loopback")
    p.add_argument("--curve-clients", metavar="DIR", help="folder of the authorised clients' public .key files")
    p.add_argument("--insecure-lan", action="store_const", const=True,
                   help="allow --pub/--router beyond loopback without keys (plain text: anyone on the network can "
                   "read frames and push audio; logs a warning)")
    p.add_argument("--idle-timeout-s", type=float,
                   help=f"end a stream after this long without audio (default {defaults.idle_timeout_s})")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads on the CPU (default 1: a second thread's "
                   "spinning slows the front-end; see docs/SERVE.md)")
    p.add_argument("--float32", dest="int8", action="store_const", const=False,
                   help="ONNX Runtime on the CPU runs every graph in float32 (default: the denoiser with int8 weights "
                   "in the face's path, about a tenth less model work at the same held-out quality; docs/BACKENDS.md)")
    p.add_argument("--mic", action="store_const", const=True, help="animate the microphone as stream 'mic'")
    p.add_argument("--device", help="input device: index or part of its name (see `ksdiff-runtime devices`)")
    p.add_argument("--mic-rate", type=int, help="capture rate in Hz (default: 16000 if the device takes it, "
                   "else its own rate)")
    p.add_argument("--mic-channels", type=int, help="channels to capture (mixed down to mono; default 1)")
    p.add_argument("--mic-block-ms", type=float, help="capture block in ms (default 10)")
    p.add_argument("--file", dest="files", action="append", metavar="PATH",
                   help="play an audio file as a stream (repeatable: one stream per file)")
    p.add_argument("--fast", action="store_const", const=True, help="play files as fast as possible")
    p.add_argument("--loop", action="store_const", const=True, help="repeat files forever")
    p.add_argument("--exit-when-done", action="store_const", const=True,
                   help="stop once every file has played and no stream is open (exit 1 if a file failed part-way)")
    p.add_argument("--stats", type=float, metavar="SECONDS",
                   help="print a stats line (fps, latency, drops per stream) every SECONDS")
    p.add_argument("--log-format", choices=("text", "json"), help="log lines as text (default) or JSON")
    # frame outputs besides ZeroMQ, several at once (docs/OUTPUTS.md)
    p.add_argument("--livelink", nargs="?", const=livelink.DEFAULT_DESTINATION, metavar="HOST:PORT",
                   help="also send Live Link Face UDP packets (Unreal's Live Link Face source) to HOST:PORT "
                   f"(without a value: {livelink.DEFAULT_DESTINATION})")
    p.add_argument("--livelink-subject", metavar="NAME",
                   help="Live Link subject name for one face (default: each stream's id, every stream its own "
                   "subject); with a name, one stream is sent (--livelink-stream, else the first that publishes)")
    p.add_argument("--livelink-stream", metavar="ID", help="send only this stream over Live Link (e.g. mic)")
    p.add_argument("--vmc", nargs="?", const=vmc.DEFAULT_DESTINATION, metavar="HOST:PORT",
                   help="also send VMC protocol (OSC) bundles to HOST:PORT for VSeeFace, Warudo, VNyan "
                   f"(without a value: {vmc.DEFAULT_DESTINATION})")
    p.add_argument("--vmc-stream", metavar="ID",
                   help="the stream sent over VMC (default: the first stream that publishes, e.g. mic)")
    p.add_argument("--vts", nargs="?", const=vts.DEFAULT_URL, metavar="URL",
                   help="also drive VTube Studio through its plugin API at URL (without a value: "
                   f"{vts.DEFAULT_URL}); approve the plugin once in VTube Studio's popup")
    p.add_argument("--vts-stream", metavar="ID",
                   help="the stream sent to VTube Studio (default: the first stream that publishes, e.g. mic)")
    p.add_argument("--vts-custom", action="store_const", const=True,
                   help="also create and send one VTube Studio custom parameter per ARKit weight (KSDiffJawOpen, ...)")
    p.add_argument("--preview", nargs="?", type=int, const=preview.DEFAULT_PORT, metavar="PORT",
                   help="also serve a live preview page (a face drawn from the frames) on http://127.0.0.1:PORT/ "
                   f"(without a value: {preview.DEFAULT_PORT}; 0: any free port; the URL is logged)")
    p.add_argument("--restart", action="store_true",
                   help="run serve in a child process and start it again whenever it dies after it was ready (a "
                   "crash, libzmq's abort of docs/SERVE.md, the OOM killer), on the same endpoints; clients connect "
                   "again by themselves. With --exit-when-done only a death by a signal is started again (its exit "
                   "status is the command's). Ctrl-C / SIGTERM stop it (a flag, not a config file setting)")
    p.set_defaults(func=run_serve)


def stream_id_for(path: Path, taken: set[str]) -> str:
    """A valid, unused stream id from a file name (``line 1.wav`` -> ``line_1``)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:60] or "file"
    sid, n = base, 2
    while sid in taken:
        sid, n = f"{base}-{n}", n + 1
    return sid


def format_stats(stats: dict[str, Any]) -> str:
    parts = [f"stats {stats['uptime_s']:.0f}s drops={stats['drops']}"]
    for sid, s in stats["streams"].items():
        parts.append(f"{sid}: {s['fps']:.1f} fps, latency p50 {s['latency_p50_ms']:.0f} ms "
                     f"p95 {s['latency_p95_ms']:.0f} ms, frames {s['frames']}, drops {s['drops']} "
                     f"(shed {s['shed']}), sanitized {s['sanitized']}")
    if stats.get("refused"):
        parts.append("refused " + ", ".join(f"{code} {n}" for code, n in sorted(stats["refused"].items())))
    if stats.get("room"):
        parts.append(stats["room"])
    return " | ".join(parts)


def run_serve(args: argparse.Namespace) -> int:
    not_settings = ("config", "func", "command", "verbose", "argv", "restart")
    overrides = {k: v for k, v in vars(args).items() if k not in not_settings}
    # the control flags change those settings of the [controls] table and keep its others
    controls = {k: overrides.pop(k) for k in ("mood", "mood_intensity", "style") if overrides.get(k) is not None}
    overrides["controls"] = controls or None
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs.use_format(config.log_format)
    # the config file's settings for an output or source that is off (a flag's were refused by load_config)
    for setting, why in config.unused_settings().items():
        log.warning("config file %s: %s %s; it is ignored", args.config, setting, why)
    if (late := config.avatar_outputs_late()) is not None:
        log.warning("%s", late)
    if args.restart and not under_supervisor():  # the config is good: the child reads it again, and serves
        # with --exit-when-done the child's exit status is the batch's result, not a death to start again
        return supervise(args.argv, exits_are_final=bool(config.exit_when_done and config.files),
                         verbose=args.verbose, log_format=config.log_format)
    return serve(config)


def serve(config: ServeConfig) -> int:
    """Run until SIGINT/SIGTERM (or, with exit_when_done, until the files have played). ``config`` made in Python is
    checked as load_config checks it (a ConfigError is an error line and 2)."""
    try:
        config.check()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        # Before the model loads, so that a bad destination fails fast (an unknown host included).
        outputs = build_outputs(config)
    except OutputConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sources: list[Source] = []
    try:
        # Open every source before loading the model, so a bad file or device fails fast.
        taken: set[str] = set()
        for name in config.files:
            src = FileSource(name, realtime=not config.fast, stream_id=stream_id_for(Path(name), taken),
                             loop=config.loop)
            taken.add(src.stream_id)
            sources.append(src)
        if config.mic:
            sources.append(_open_mic(config))
    except SourceError as e:
        _close_outputs(outputs)
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        curve = CurveKeys.load(config.curve_secret_key, config.curve_clients) if config.curve_secret_key else None
    except SecurityError as e:
        _close_outputs(outputs)
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    # what a stream's cost depends on: a restarted child reuses the capacity probe of the one before only if these
    # are the same (the config file may have been edited in between, the package reinstalled; the backend that
    # loaded is the probe's own to check)
    settings = {"backend": config.backend, "preset": config.preset, "checkpoint": config.checkpoint or None,
                "fps": config.fps, "threads": config.threads, "voice_gate": config.voice_gate,
                "closure": config.closure, "liveliness": config.liveliness,
                "streaming_recogniser": config.streaming_recogniser, "mood_guidance": config.mood_guidance,
                "network_style": config.network_style, "int8": config.int8}
    settings_key = json.dumps({**settings, "version": __version__}, sort_keys=True, default=str)
    engine = build_engine(**settings, idle_timeout_s=config.idle_timeout_s, controls=config.artist_controls(),
                          probe=reusable_probe(settings_key))
    last_line = [0.0]

    def on_stats(stats: dict[str, Any]) -> None:
        if config.stats and time.monotonic() - last_line[0] >= config.stats - 0.05:
            last_line[0] = time.monotonic()
            log.info("%s", format_stats(stats))

    runtime = Runtime(engine, pub=config.pub, router=config.router, max_streams=config.max_streams,
                      max_streams_per_client=config.max_streams_per_client or None,
                      max_ahead_s=config.max_ahead_s, on_stats=on_stats, outputs=outputs, curve=curve,
                      insecure_lan=config.insecure_lan, admission=config.admission)
    try:
        runtime.start()
    except RuntimeStartError as e:
        _close_outputs(outputs)  # stop() closes them once the runtime has started
        engine.close()
        print(f"error: {e}", file=sys.stderr)
        return 1

    def reopen_mic() -> Source:
        return reopen_mic_source(config)

    # What exists now (the model, the runtime, ~220k objects) lives until the stop: a full collection walks it all,
    # 275 ms with the GIL held, a stall of every stream. Frozen, the collector walks only what serving makes; the
    # start-up's garbage is collected first, so none of it is kept. A process that froze objects of its own (an
    # embedding) decides for itself: its freeze is neither added to nor undone.
    freezes = gc.get_freeze_count() == 0
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        if freezes:
            gc.collect()
            gc.freeze()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            waiting = start_sources(runtime, sources, first=True, reopen_mic=reopen_mic)
        except SourceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        log.info("ready in %.1f s", time.perf_counter() - started)
        write_ready(runtime.instance, endpoint_to_reuse(runtime.pub_requested, runtime.pub_endpoint),
                    endpoint_to_reuse(runtime.router_requested, runtime.router_endpoint),
                    preview=next((out.port for out in outputs if isinstance(out, PreviewOutput)), None),
                    probe=engine.probe, settings=settings_key)
        next_try = time.monotonic() + WAIT_RETRY_S
        while not stop.wait(0.1) and runtime.failure is None:
            if waiting and time.monotonic() >= next_try:
                waiting = start_sources(runtime, waiting, first=False, reopen_mic=reopen_mic)
                next_try = time.monotonic() + WAIT_RETRY_S
            if config.exit_when_done and config.files and not waiting and runtime.wait_until_idle(timeout=0):
                log.info("every file has played; stopping")
                break
    finally:
        if freezes:
            gc.unfreeze()  # collectable again: serve may be called by a process that goes on (a test, an embedding)
        try:  # a second Ctrl-C or SIGTERM (systemd's beside a supervisor's) must not cut the streams' ends short
            runtime.stop()
            engine.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if runtime.failure is not None:
        print(f"error: {runtime.failure} (the log has its traceback)", file=sys.stderr)
        return 1
    if config.exit_when_done and runtime.source_errors:  # a batch job whose file failed part-way has failed
        for sid, error in runtime.source_errors.items():
            print(f"error: stream {sid}: {error}", file=sys.stderr)
        return 1
    return 0


def start_sources(runtime: Runtime, sources: list[Source], first: bool,
                  reopen_mic: Callable[[], Source] | None = None) -> list[Source]:
    """Start each source's stream; returns those refused busy (the machine has no room for them yet, or their
    stream id is taken), to be tried again every WAIT_RETRY_S: they start when a stream ends or the measured
    room grows, so every file given plays. ``first``: the start-up's attempt, where a source that fails to
    start raises SourceError (later, it is logged and given up). ``reopen_mic``: opens the microphone again, for
    the runtime to reopen it, ever less often until it can, whenever its stream ends with the mic's own error
    (unplugged, its sound server restarted) or by the idle timeout (the machine slept)."""
    waiting = []
    for src in sources:
        try:
            runtime.add_source(src, reopen=reopen_mic if src.kind == "mic" else None)
        except RefusedError as e:
            if e.code != "busy":
                log.error("%s %s not served: %s", src.kind, src.stream_id, e.message)
                continue
            waiting.append(src)
            if first:
                log.warning("%s %s waits for room: %s; it starts when a stream ends or the machine has more room",
                            src.kind, src.stream_id, e.message.removesuffix("; retry later"))
        except SourceError as e:
            if first:
                raise
            log.error("%s %s not served: %s", src.kind, src.stream_id, e)
    return waiting


def build_outputs(config: ServeConfig) -> list[Any]:
    """The frame outputs the config asks for (Live Link Face, VMC, VTube Studio, the preview page), each
    with its socket open.

    Raises OutputConfigError (a bad HOST:PORT, an unknown host) with a message for the user."""
    outputs: list[Any] = []
    try:
        if config.livelink:
            outputs.append(LiveLinkOutput(config.livelink, subject=config.livelink_subject or None,
                                          stream=config.livelink_stream or None))
        if config.vmc:
            outputs.append(VmcOutput(config.vmc, stream=config.vmc_stream or None))
        if config.vts:
            outputs.append(VtsOutput(config.vts, stream=config.vts_stream or None, custom=config.vts_custom))
        if config.preview >= 0:
            outputs.append(PreviewOutput(config.preview))
    except OutputConfigError:
        _close_outputs(outputs)
        raise
    for out in outputs:
        log.info("output %s: frames to %s", out.name, out.destination)
    return outputs


def _close_outputs(outputs: list[Any]) -> None:
    for out in outputs:
        out.close()


def reopen_mic_source(config: ServeConfig) -> Any:
    """The microphone opened again (its stream was lost): from PortAudio's devices listed again, since one unplugged
    comes back under another index or name (a USB device's card number, Windows' device list)."""
    rescan_devices()
    return _open_mic(config)


def _open_mic(config: ServeConfig) -> Any:
    device: int | str | None = config.device or None
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    kwargs = dict(device=device, channels=config.mic_channels, block_ms=config.mic_block_ms, stream_id="mic")
    if config.mic_rate:
        return MicSource(sample_rate=config.mic_rate, **kwargs)
    # 16 kHz from the device (PortAudio or the sound server resamples) saves our resampler's delay
    try:
        return MicSource(sample_rate=SAMPLE_RATE, **kwargs)
    except SettingsRefusedError as e:  # not a device that is not there: that is said once, with the list of devices
        log.info("microphone at %d Hz refused (%s); using the device's own rate", SAMPLE_RATE, e)
        return MicSource(sample_rate=None, **kwargs)
