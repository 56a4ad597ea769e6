"""`serve`'s settings: one dataclass, read from a TOML file and overridden by command-line flags.

Every key of the TOML file is the long flag's name with underscores (``--idle-timeout-s`` is
``idle_timeout_s``). configs/serve.toml lists them all with their defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksdiff_runtime import motion
from ksdiff_runtime.backends.select import BACKEND_NAMES
from ksdiff_runtime.engine.controls import Controls, ControlsError
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.engine.sampling import DEFAULT_MOOD_GUIDANCE, check_mood_guidance
from ksdiff_runtime.sessions import DEFAULT_MAX_STREAMS
from ksdiff_sdk import protocol

from .security import SecurityError, check_endpoints


class ConfigError(ValueError):
    """A config file or flag value the runtime cannot use; the message names it."""


# The model animates at motion.FPS (30); serve's frames above it are interpolated between the model's, with no motion
# of their own, and each one is made, published and sent to every output for every stream. 240 is the fastest common
# display refresh; --fps 100000 made serve spend 19.8 s starting up before this bound.
MAX_FPS = 240
# The engine keeps the idle timeout in integer nanoseconds (engine.py); a day is far beyond any pause in speech and
# far inside what a float holds exactly in ns (1e300 overflowed to inf there, after the model had loaded).
MAX_IDLE_TIMEOUT_S = 86_400.0
# A stream holds in memory the audio a client pushes ahead of real time; an hour bounds that buffer (an NPC line is
# seconds long) and stays far above the default of 20 s.
MAX_AHEAD_S = 3_600.0
# ONNX Runtime starts every intra-op thread when the model loads: more than any machine has cores only spins, and a
# typo like 100000 tried to start that many threads.
MAX_THREADS = 256
# A stats line at most once a day: any finite period works; a bound keeps a typo like 1e300 from reading as "on".
MAX_STATS_S = 86_400.0
# A capture block is audio the face waits for before any of it is animated: beyond a second a live face lags visibly.
MAX_MIC_BLOCK_MS = 1_000.0
# hosts that bind every interface: a port bound on one of them clashes with the same port on any host
WILDCARD_HOSTS = ("*", "0.0.0.0", "::", "")
# settings that apply only when another is on: (setting, the setting it needs, the flag that turns that one on)
NEEDS: tuple[tuple[str, str, str], ...] = (
    ("livelink_subject", "livelink", "--livelink"),
    ("livelink_stream", "livelink", "--livelink"),
    ("vmc_stream", "vmc", "--vmc"),
    ("vts_stream", "vts", "--vts"),
    ("vts_custom", "vts", "--vts"),
    ("device", "mic", "--mic"),
    ("mic_rate", "mic", "--mic"),
    ("mic_channels", "mic", "--mic"),
    ("mic_block_ms", "mic", "--mic"),
    ("fast", "files", "--file"),
    ("loop", "files", "--file"),
    ("exit_when_done", "files", "--file"),
)


def flag_name(setting: str) -> str:
    """The command-line flag of a setting (``idle_timeout_s`` -> ``--idle-timeout-s``)."""
    return "--" + setting.replace("_", "-")


def bound_endpoint(endpoint: str) -> tuple[str, str] | None:
    """(host, port) a tcp endpoint binds, the host normalised so that one address has one spelling; None for ipc and
    inproc (their whole endpoint is the address). ConfigError for a port that is not 0..65535 or ``*``."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
        raise ConfigError(f"endpoint {endpoint!r} must end in a port from 0 to 65535 (or * for any free port)")
    host = host.strip("[]").lower()
    if host == "localhost":
        host = "127.0.0.1"
    with contextlib.suppress(ValueError):  # "*", an interface or host name: compared as written
        host = str(ipaddress.ip_address(host))  # "::0001" and "::1" are one address
    return host, "0" if port == "*" else str(int(port))


@dataclass
class ServeConfig:
    pub: str = protocol.DEFAULT_PUB_ENDPOINT  # frames, stream events, stats, hello (PUB)
    router: str = protocol.DEFAULT_ROUTER_ENDPOINT  # requests and pushed audio (ROUTER)
    backend: str = "auto"
    preset: str = "low-latency"
    checkpoint: str = ""  # empty: the bundled checkpoint
    fps: int = motion.FPS
    max_streams: int = DEFAULT_MAX_STREAMS  # a ceiling; below it the measured capacity decides (engine/capacity.py)
    # streams one client connection may hold at once; 0: no ceiling of its own (a game may open all of its NPCs'
    # lines on one connection). Where several clients share a runtime, this keeps one from holding every stream.
    max_streams_per_client: int = 0
    idle_timeout_s: float = 10.0  # a stream that gets no audio this long is ended (reason timeout)
    max_ahead_s: float = 20.0  # a client may push this much audio beyond real time (more: busy)
    admission: bool = True  # refuse streams beyond the measured capacity (false: take every stream, shed under load)
    voice_gate: bool = True  # the mouth rests where Silero VAD hears no voice (music, fans, noise; engine/gate.py)
    closure: bool = True  # the lips seal where the recogniser hears /p b m/ (engine/closure.py)
    liveliness: bool = True  # blinks, gaze saccades, a centred, swaying head on top of the model (engine/liveliness.py)
    # how strongly the network speaks in a stream's mood (0: the mood is the expression layer alone; 1: the network
    # conditioned on it, no extra cost; above 1: guided, one more denoiser row per stream; engine/sampling.py)
    mood_guidance: float = DEFAULT_MOOD_GUIDANCE
    # a stream's style take reaches the network's own style input too, not only the output (engine/network_style.py)
    network_style: bool = False
    streaming_recogniser: bool = True  # live streams keep a streaming recogniser (features/streaming_frontend.py)
    # serving beyond this machine (server/security.py): CurveZMQ keys, or plain text on purpose
    curve_secret_key: str = ""  # the server's .key_secret file (`ksdiff-runtime keys server`)
    curve_clients: str = ""  # folder of the authorised clients' public .key files
    insecure_lan: bool = False  # allow a bind beyond loopback without keys (logs a warning)
    threads: int = 1  # ONNX Runtime intra-op threads on the CPU (more spin against the front-end and io)
    # ONNX Runtime on the CPU runs the denoiser with int8 weights in the face's path (docs/BACKENDS.md "int8 on the
    # CPU": about a tenth off the model's work, the same held-out quality); false: float32 throughout
    int8: bool = True
    mic: bool = False  # capture the default (or --device) microphone as stream "mic"
    device: str = ""  # input device: index or part of its name (`ksdiff-runtime devices`)
    mic_rate: int = 0  # 0: 16 kHz when the device takes it, else the device's default rate
    mic_channels: int = 1
    mic_block_ms: float = 10.0
    files: list[str] = field(default_factory=list)  # each file is played as one stream
    fast: bool = False  # play files as fast as possible instead of in real time
    loop: bool = False  # repeat files forever
    exit_when_done: bool = False  # stop once every file has played (and no other stream is open)
    stats: float = 0.0  # print a stats line every this many seconds (0: off)
    log_format: str = "text"  # text or json (one JSON object per line)
    # frame outputs besides ZeroMQ (docs/OUTPUTS.md); an empty string is off / the default
    livelink: str = ""  # Live Link Face UDP to HOST:PORT (Unreal); flag without a value: 127.0.0.1:11111
    livelink_subject: str = ""  # one Live Link subject name for a single face (VTuber); empty: each stream's id
    livelink_stream: str = ""  # only this stream to Live Link; empty: every stream (with a subject: the first)
    vmc: str = ""  # VMC (OSC) UDP to HOST:PORT (VSeeFace, Warudo, VNyan); flag without a value: 127.0.0.1:39539
    vmc_stream: str = ""  # the stream sent over VMC; empty: the first stream that publishes
    vts: str = ""  # VTube Studio's plugin API, ws://HOST:PORT; flag without a value: ws://127.0.0.1:8001
    vts_stream: str = ""  # the stream sent to VTube Studio; empty: the first stream that publishes
    vts_custom: bool = False  # also one custom parameter per ARKit weight (KSDiffJawOpen, ...)
    preview: int = -1  # the live preview page on 127.0.0.1:PORT (0: any free port); -1: off; flag without a value: 5557
    # artists' controls for every stream (engine/controls.py; a [controls] table): region strength, per-shape
    # gain/offset/clamp, smoothing, timing offset, mood, style. Empty: change nothing. Per stream: set_controls
    controls: dict[str, Any] = field(default_factory=dict)

    def check(self, flags: Collection[str] = ()) -> None:
        """Raise ConfigError for a setting the runtime cannot use. ``flags``: the settings given on the command line;
        one of them that has no effect (see unused_settings) is refused too, while one from the config file is only
        warned of by serve (a file may keep settings for an output or source a flag turns on another time)."""
        if self.backend not in BACKEND_NAMES:
            raise ConfigError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {self.backend!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if not 1 <= self.fps <= MAX_FPS:
            raise ConfigError(f"fps must be from 1 to {MAX_FPS} (the model animates at {motion.FPS}; faster frames "
                              f"are interpolated), got {self.fps}")
        if self.max_streams < 1:
            raise ConfigError(f"max_streams must be at least 1, got {self.max_streams}")
        if self.max_streams_per_client < 0:
            raise ConfigError(f"max_streams_per_client must be 0 (no ceiling of its own) or more, got "
                              f"{self.max_streams_per_client}")
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be at least 1 and at most {MAX_THREADS}, got {self.threads}")
        # NaN fails every comparison: each float is checked as "within the range", never as "not outside it"
        _check_range("idle_timeout_s", self.idle_timeout_s, 0.0, MAX_IDLE_TIMEOUT_S, "seconds")
        _check_range("max_ahead_s", self.max_ahead_s, 0.0, MAX_AHEAD_S, "seconds")
        _check_range("mic_block_ms", self.mic_block_ms, 0.0, MAX_MIC_BLOCK_MS, "ms")
        if bool(self.curve_secret_key) != bool(self.curve_clients):
            raise ConfigError("curve_secret_key and curve_clients go together: the server's key pair and the "
                              "folder of authorised client keys")
        if not (self.stats == 0 or 0 < self.stats <= MAX_STATS_S):
            raise ConfigError(f"stats must be 0 (off) or more than 0 and at most {MAX_STATS_S:g} seconds, "
                              f"got {self.stats}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if self.mic_rate and not protocol.MIN_SAMPLE_RATE <= self.mic_rate <= protocol.MAX_SAMPLE_RATE:
            raise ConfigError(f"mic_rate must be 0 or in {protocol.MIN_SAMPLE_RATE}..{protocol.MAX_SAMPLE_RATE}")
        if not 1 <= self.mic_channels <= protocol.MAX_CHANNELS:
            raise ConfigError(f"mic_channels must be in 1..{protocol.MAX_CHANNELS}, got {self.mic_channels}")
        for endpoint in (self.pub, self.router):
            if "://" not in endpoint:
                raise ConfigError(f"endpoint {endpoint!r} must look like tcp://127.0.0.1:5555")
        self._check_ports()
        if not self.curve_secret_key:
            try:
                check_endpoints([self.pub, self.router], None, self.insecure_lan, warn=False)
            except SecurityError as e:
                raise ConfigError(str(e)) from None
        try:
            check_mood_guidance(self.mood_guidance)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self._check_outputs()
        self.artist_controls()
        if self.loop and self.exit_when_done and self.files:
            raise ConfigError("--loop and --exit-when-done contradict each other: looped files never finish playing, "
                              "so serve would never exit; drop --loop to play each file once, or --exit-when-done "
                              "to loop until Ctrl-C")
        for setting, why in self.unused_settings().items():
            if setting in flags:
                raise ConfigError(f"{flag_name(setting)} {why}")

    def avatar_outputs_late(self) -> str | None:
        """What to say when the quality preset drives an avatar app: its frames are shown at their time
        (outputs/pacing.py), so the face follows the voice a hop's wait for audio, and more, behind."""
        outputs = [flag_name(name) for name in ("vmc", "livelink", "vts") if getattr(self, name)]
        if self.preset != "quality" or not outputs:
            return None
        wait_s = PRESETS[self.preset].latency_budget_ms() / 1000.0
        return (f"{' and '.join(outputs)} with the quality preset: the avatar's face follows the voice over "
                f"{wait_s:.2f} s late (each hop waits for that much audio, then its compute); use the "
                "low-latency preset for a live avatar")

    def unused_settings(self) -> dict[str, str]:
        """Settings changed from their default that have no effect, because the output or source they apply to is
        off: {setting: why}."""
        defaults = ServeConfig()
        unused = {}
        for setting, needs, flag in NEEDS:
            if getattr(self, setting) != getattr(defaults, setting) and not getattr(self, needs):
                unused[setting] = f"applies only with {flag}, which is not given"
        return unused

    def _check_ports(self) -> None:
        """Refuse one address bound twice among --pub, --router and --preview (the second bind failed only once the
        model had loaded, blaming the flag bound last). Port 0 (any free port) never clashes."""
        binds: list[tuple[str, str, str]] = []  # (flag, host or whole endpoint, port)
        for flag, endpoint in (("--pub", self.pub), ("--router", self.router)):
            address = bound_endpoint(endpoint)
            binds.append((flag, endpoint, "") if address is None else (flag, *address))
        if self.preview > 0:
            binds.append(("--preview", "127.0.0.1", str(self.preview)))  # outputs/preview.py binds loopback only
        for i, (flag_a, host_a, port_a) in enumerate(binds):
            for flag_b, host_b, port_b in binds[i + 1:]:
                if port_a != port_b or port_a == "0":
                    continue
                if host_a == host_b or (port_a and (host_a in WILDCARD_HOSTS or host_b in WILDCARD_HOSTS)):
                    where = f"port {port_a}" if port_a else host_a
                    raise ConfigError(f"{flag_a} and {flag_b} both listen on {where}: give each its own port")

    def artist_controls(self) -> Controls:
        """The ``[controls]`` table, checked (ConfigError naming the bad setting)."""
        try:
            return Controls.from_dict(self.controls, allow_files=True)  # the server's own config: a take file
        except ControlsError as e:
            raise ConfigError(f"[controls] {e}") from None

    def _check_outputs(self) -> None:
        """Output destinations' syntax and stream ids; host names are looked up when serve builds them."""
        from ksdiff_runtime.outputs.udp import OutputConfigError, check_stream_id, parse_host_port
        from ksdiff_runtime.outputs.vts import parse_url

        try:
            sent_to = {flag: parse_host_port(destination, flag)
                       for flag, destination in (("--livelink", self.livelink), ("--vmc", self.vmc)) if destination}
            if len(sent_to) == 2 and sent_to["--livelink"] == sent_to["--vmc"]:  # same name and port; no lookup here
                host, port = sent_to["--vmc"]
                raise OutputConfigError(f"--livelink and --vmc both send to {host}:{port}: the app reading one would "
                                        "get the other's packets too; give each its own port")
            check_stream_id(self.livelink_stream, "--livelink-stream")
            check_stream_id(self.vmc_stream, "--vmc-stream")
            if self.vts:
                parse_url(self.vts, "--vts")
            check_stream_id(self.vts_stream, "--vts-stream")
            if not -1 <= self.preview <= 65535:
                raise OutputConfigError(f"preview must be a port from 0 (any free port) to 65535, or -1 (off); "
                                        f"got {self.preview}")
        except OutputConfigError as e:
            raise ConfigError(str(e)) from None


def load_config(path: Path | None, overrides: dict[str, Any]) -> ServeConfig:
    """Defaults, then the TOML file, then the flags that were given (``None`` = not given)."""
    values: dict[str, Any] = {}
    known = {f.name: f for f in dataclasses.fields(ServeConfig)}
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as e:  # a folder, no permission to read it, a disk error
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        try:
            # TOML is UTF-8 on every system (not the locale's code page); utf-8-sig also takes the byte-order mark
            # that some Windows editors write first
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    flags = {k: v for k, v in overrides.items() if v is not None and k in known}
    if isinstance(flags.get("controls"), dict) and isinstance(values.get("controls", {}), dict):
        flags["controls"] = {**values.get("controls", {}), **flags["controls"]}  # flags set some controls
    values.update(flags)
    defaults = ServeConfig()
    for name, value in values.items():
        want = type(getattr(defaults, name))
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if want is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{name} must be of type {want.__name__}, got {value!r}")
    config = ServeConfig(**values)
    try:
        config.check(flags)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{e} (with the config file {path})") from None
    return config


def _check_range(name: str, value: float, above: float, at_most: float, unit: str) -> None:
    """ConfigError unless ``above < value <= at_most`` (NaN and infinities are outside)."""
    if not (math.isfinite(value) and above < value <= at_most):
        raise ConfigError(f"{name} must be more than {above:g} and at most {at_most:g} {unit}, got {value}")
