"""How many live streams this machine can serve right now, from measured compute, not a constant.

Two measurements, refreshed every ``window_s``:

- the CPU live streams cost: this process's CPU time per second of audio animated, which is the
  share of a core a stream needs in real time. Part of it is paid once a round whatever its streams
  (each batched call's fixed cost, the round's own work): the warm-up measures one stream and
  ROUND_PROBE at once (``calibrate``; the median of engine.PROBE_REPEATS probes) and splits the cost
  into that part (``fixed_cores``) and what each stream adds; then the streams served refresh what a
  stream adds. Per second of audio, not per
  stream, so a line pushed faster than real time (which the engine animates as fast as it can) does
  not look like several streams;
- the cores other programs keep busy (a VTuber's OBS and game), from the kernel's counters
  (/proc/stat) minus this process's share.

- the engine thread's round: one thread runs every live stream's round (its batched model and
  recogniser calls, and each stream's own numpy work), so the round's time grows with the streams and
  must stay within the hop, whatever the cores. The warm-up measures it with 1 and ROUND_PROBE streams
  (``calibrate_rounds``: a fixed part and a part per stream; benchmarks/rounds.json has the curve); then
  the live rounds served rescale it: the median over a window of each round's time against what the
  warm-up's line says a round of its streams takes (``round_scale``; the probe keeps the median round too).
  The probe hears 0.6 s of audio once, at start-up; the rounds served hear the machine as it is now (a
  neighbour busy on a shared host, a slower clock).

``admit(n)`` says whether one more stream fits beside ``n``: the streams' cost must fit in the
cores left (times ``target``, headroom for bursts), their round in ROUND_TARGET of the hop, and no
stream may have been shed recently (then the machine is already short). One stream is always
admitted: a runtime that refused its only stream would serve nobody, and the engine sheds to keep
it current.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass

# use at most this share of the cores: admitted streams' latency grows as the cores fill (their rounds
# wait on each other, on the io thread and on the sources): at 0.85 with 5 streams admitted p95 was
# 1.86x a single stream's (benchmarks/load.py overload), over the 1.5x the admitted streams are promised
TARGET = 0.7
WINDOW_S = 2.0
SHED_MEMORY_S = 5.0  # after frames were shed, refuse new streams this long
# a live round may take at most this share of the hop on the engine's thread: at 6 streams (rounds of
# ~29 ms in a 33 ms hop) the admitted streams' p95 was 1.47x a single stream's (benchmarks/load.py)
ROUND_TARGET = 0.85
# streams in the warm-up's second round measurement: near the counts admission decides. The paced round grows
# more slowly per stream with more streams, so a line through 1 and a smaller count overestimates the rounds past
# it (through 1 and 4, 12 streams' round by two thirds; through 1 and 8, 12 streams' 29-30 ms where they took 27-28)
# and underestimates those between: both by little near the second count (docs/SERVE.md)
ROUND_PROBE = 12
# the live rounds of a window rescale the warm-up's round line once they hopped at least this many streams a hop
# on average (half a stream's hops: fewer say little), and never beyond these factors (a stalled machine)
ROUND_SCALE_MIN_MEAN_STREAMS = 0.5
ROUND_SCALE_LIMITS = (0.5, 3.0)
# more live streams held than the room measured (or fewer again) this long: the log says so (OverRoom)
OVER_ROOM_WARN_S = 10.0
# other programs' load is measured over at least this long (the kernel counts CPU time in 10 ms ticks)
OTHER_MIN_S = 0.2


@dataclass(frozen=True)
class RoundCost:
    """How long the engine thread's round takes with n live streams: fixed_ms + per_stream_ms x n."""

    fixed_ms: float
    per_stream_ms: float
    hop_ms: float  # the live preset's hop: the round's budget

    @classmethod
    def fit(cls, one_ms: float, probe_ms: float, probe: int, hop_ms: float) -> RoundCost:
        """From the round time with 1 stream and with ``probe`` streams."""
        per_stream = max((probe_ms - one_ms) / (probe - 1), 0.05 * one_ms, 1e-3)
        return cls(max(0.0, one_ms - per_stream), per_stream, hop_ms)

    def round_ms(self, streams: int) -> float:
        return self.fixed_ms + self.per_stream_ms * streams

    def scaled(self, factor: float) -> RoundCost:
        """The same line with every round ``factor`` times as long."""
        return RoundCost(self.fixed_ms * factor, self.per_stream_ms * factor, self.hop_ms)

    def streams_that_fit(self, target: float = ROUND_TARGET) -> int:
        return max(1, math.floor((target * self.hop_ms - self.fixed_ms) / self.per_stream_ms))


@dataclass(frozen=True)
class Probe:
    """What the warm-up's capacity probe measured (``Capacity.calibrate``'s and ``calibrate_rounds``' figures), kept
    so that a process started again on the same machine with the same settings (``serve --restart`` after a crash)
    calibrates from it instead of probing again: the probe is two thirds of a start-up, seconds of a still avatar.
    The live rounds served then refresh both figures as they do after a probe."""

    cpu_s_per_audio_s: float  # CPU seconds per second of audio with one live stream
    probe_cpu_s_per_audio_s: float  # the same per second of each stream's audio with ``streams`` at once
    streams: int  # the streams probed at once
    rounds: RoundCost  # the engine thread's round, fitted through 1 and ``streams``
    measured_at: float  # when (time.time(): a restarted process compares it with its own clock)
    backend: str  # the backend that ran it and its precision, "onnxruntime-cpu (int8)": a GPU's figures are no CPU's

    def calibrate(self, capacity: Capacity) -> None:
        capacity.calibrate(self.cpu_s_per_audio_s, self.probe_cpu_s_per_audio_s, self.streams)
        capacity.calibrate_rounds(self.rounds)

    def to_json(self) -> dict[str, float | str]:
        return {"cpu_s_per_audio_s": self.cpu_s_per_audio_s, "probe_cpu_s_per_audio_s": self.probe_cpu_s_per_audio_s,
                "streams": self.streams, "fixed_ms": self.rounds.fixed_ms, "per_stream_ms": self.rounds.per_stream_ms,
                "hop_ms": self.rounds.hop_ms, "measured_at": self.measured_at, "backend": self.backend}

    @classmethod
    def from_json(cls, data: object) -> Probe:
        """Raises ValueError on anything but what ``to_json`` wrote (a finite, positive figure where one must be)."""
        if not isinstance(data, dict):
            raise ValueError(f"a probe is a JSON object, not {type(data).__name__}")
        try:
            values = {key: float(data[key]) for key in ("cpu_s_per_audio_s", "probe_cpu_s_per_audio_s", "fixed_ms",
                                                       "per_stream_ms", "hop_ms", "measured_at")}
            streams, backend = data["streams"], data["backend"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a capacity probe: {exc!r}") from None
        if not all(math.isfinite(v) for v in values.values()) or min(values.values()) < 0 or \
                values["hop_ms"] <= 0 or values["per_stream_ms"] <= 0 or not isinstance(streams, int) or \
                streams < 2 or not isinstance(backend, str):
            raise ValueError(f"not a capacity probe: {data}")
        return cls(values["cpu_s_per_audio_s"], values["probe_cpu_s_per_audio_s"], streams,
                   RoundCost(values["fixed_ms"], values["per_stream_ms"], values["hop_ms"]), values["measured_at"],
                   backend)


@dataclass(frozen=True)
class Reading:
    cores: int  # cores this process may run on
    stream_cores: float  # CPU one more live stream costs, in cores (1.0 = one core busy)
    other_cores: float  # cores busy with other programs
    engine_busy: float  # share of the time the engine thread computes (for the record)
    rounds: RoundCost | None = None  # the engine thread's round time (None: not measured), as now rescaled
    fixed_cores: float = 0.0  # CPU the rounds cost whatever their streams, in cores, while any stream is live
    round_scale: float = 1.0  # the live rounds served against the warm-up's line (1: none measured yet)

    def streams_that_fit(self, target: float = TARGET) -> int:
        """Live streams the machine has room for now (at least 1): the cores' and the engine thread's bound."""
        by_cores, by_round = self.bounds(target)
        return by_cores if by_round is None else min(by_cores, by_round)

    def bounds(self, target: float = TARGET) -> tuple[int, int | None]:
        """The live streams the cores have room for, and the engine thread's round (None: not measured)."""
        room = self.cores * target - self.other_cores - self.fixed_cores
        by_cores = max(1, math.floor(room / max(self.stream_cores, 1e-3)))
        return by_cores, None if self.rounds is None else self.rounds.streams_that_fit()

    def describe(self, target: float = TARGET) -> str:
        """The room and what bounds it, for a log line (ROOM_PATTERN reads it back)."""
        by_cores, by_round = self.bounds(target)
        text = f"room {self.streams_that_fit(target)} (cores {by_cores}"
        if by_round is not None:
            text += f", round {by_round}, its time {self.round_scale:.2f}x the warm-up's"
        return text + f"; {self.other_cores:.1f} cores busy elsewhere)"


# ``Reading.describe`` read back (benchmarks/load.py): the room, the cores' bound, the round's and its scale
ROOM_PATTERN = r"room (\d+) \(cores (\d+)(?:, round (\d+), its time ([\d.]+)x the warm-up's)?"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _machine_busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


class Capacity:
    def __init__(self, cores: int | None = None, target: float = TARGET, window_s: float = WINDOW_S) -> None:
        self.cores = cores or _cpu_count()
        self.target = target
        self.window_s = window_s
        self._lock = threading.Lock()
        self._stream_cores: float | None = None
        self._fixed_cores = 0.0
        self._rounds: RoundCost | None = None
        self._round_scale = 1.0
        self._other = 0.0
        self._busy = 0.0
        self._last_shed_ns = -1 << 62
        self._start()

    def _start(self) -> None:
        self._t0 = time.monotonic_ns()
        self._cpu0 = time.process_time_ns()
        self._machine0 = _machine_busy_jiffies()
        self._round_ns = 0
        self._audio_s = 0.0
        self._live_s = 0.0
        self._live_ratios: list[float] = []  # each live round's time against the warm-up's line for it
        self._live_hops = 0  # the stream-hops of those rounds

    def calibrate(self, cpu_s_per_audio_s: float, probe_cpu_s_per_audio_s: float | None = None,
                  probe: int = ROUND_PROBE) -> None:
        """Streams' cost before any is measured: the CPU seconds the warm-up spent per second of audio with one
        stream, and per second of each stream's audio with ``probe`` streams at once (None: not measured, all
        of one stream's cost counted as the stream's). What one stream costs beyond a stream's share with
        ``probe`` is the rounds' fixed part."""
        one = max(cpu_s_per_audio_s, 0.01)
        per_stream = one
        if probe_cpu_s_per_audio_s is not None and probe > 1:
            per_stream = (probe * probe_cpu_s_per_audio_s - one) / (probe - 1)
            per_stream = min(one, max(per_stream, 0.1 * one))  # noise must not make a stream nearly free
        with self._lock:
            self._stream_cores = per_stream
            self._fixed_cores = one - per_stream

    def calibrate_rounds(self, rounds: RoundCost) -> None:
        """The engine thread's round time per live stream, measured at warm-up. A window starts afresh: rounds
        served before this (the warm-up's own) do not rescale it, nor count in the streams' CPU."""
        with self._lock:
            self._rounds = rounds
            self._round_scale = 1.0
            self._start()

    def observe(self, round_ns: int, audio_s: float, shed: bool, live_s: float = 0.0, live_hops: int = 0) -> None:
        """Called by the engine thread after each round: its wall time, the seconds of audio it animated, the
        time its hops stand for (the live preset's hop when it hopped; the rounds' fixed part is paid
        once for that), and how many live streams it hopped when that was all it did (0 when a line's hop
        was in it, or a stream's features that did not make a hop: the warm-up's line is of rounds of live
        hops alone)."""
        now = time.monotonic_ns()
        with self._lock:
            self._round_ns += round_ns
            self._audio_s += audio_s
            self._live_s += live_s
            if live_hops > 0 and round_ns > 0 and self._rounds is not None:
                self._live_ratios.append(round_ns / 1e6 / max(self._rounds.round_ms(live_hops), 1e-6))
                self._live_hops += live_hops
            if shed:
                self._last_shed_ns = now
            elapsed = now - self._t0
            if elapsed < self.window_s * 1e9:
                return
            cpu = time.process_time_ns() - self._cpu0
            ours = cpu / elapsed  # cores this process used
            self._busy = self._round_ns / elapsed
            if self._audio_s >= 0.5 * self.window_s:  # enough audio animated for a figure
                # what a stream adds: the CPU beyond the fixed part of the rounds that ran, per second of audio
                # (never under a tenth of it all, as in ``calibrate``)
                cpu_s = cpu / 1e9
                measured = max(cpu_s - self._fixed_cores * self._live_s, 0.1 * cpu_s) / self._audio_s
                # blend, so one noisy window does not swing admission
                old = self._stream_cores
                self._stream_cores = measured if old is None else 0.5 * old + 0.5 * measured
            self._rescale_rounds(elapsed)
            self._measure_other(ours)
            self._start()

    def measure_other_cores(self) -> None:
        """The cores other programs keep busy, measured now over the window so far, as a window's end measures
        them: a warm-up that took a ``Probe`` instead of probing ends before its first window, and admission must not
        take the machine for idle (a VTuber's OBS and game) while every client opens its streams again."""
        with self._lock:
            elapsed = time.monotonic_ns() - self._t0
            if elapsed >= OTHER_MIN_S * 1e9:  # else the window that just ended said it, over longer
                self._measure_other((time.process_time_ns() - self._cpu0) / elapsed)

    def _measure_other(self, ours: float) -> None:
        """(The lock held) other programs' cores since the window began, from the kernel's counters less ``ours``
        (the cores this process used); unchanged where the counters cannot be read or have not moved."""
        machine = _machine_busy_jiffies()
        if machine is not None and self._machine0 is not None:
            busy, total = machine[0] - self._machine0[0], machine[1] - self._machine0[1]
            if total > 0:
                self._other = max(0.0, busy / total * _cpu_count_all() - ours)

    def _rescale_rounds(self, elapsed_ns: int) -> None:
        """At a window's end (the lock held): the median of its live rounds' times against what the warm-up's
        line says a round of their streams takes, if they hopped enough streams to say (the median, as the
        probe's: one stalled round moves neither). The scale stays as last measured through windows that say
        nothing (no live stream, or too few hops): the latest figure of this machine."""
        if self._rounds is None or not self._live_ratios:
            return
        if self._live_hops < ROUND_SCALE_MIN_MEAN_STREAMS * elapsed_ns / 1e6 / self._rounds.hop_ms:
            return
        low, high = ROUND_SCALE_LIMITS
        measured = min(max(statistics.median(self._live_ratios), low), high)
        self._round_scale = 0.5 * self._round_scale + 0.5 * measured  # blended, as the CPU's figure

    def reading(self) -> Reading:
        with self._lock:
            rounds = None if self._rounds is None else self._rounds.scaled(self._round_scale)
            return Reading(self.cores, self._stream_cores if self._stream_cores is not None else 0.5,
                           self._other, self._busy, rounds, self._fixed_cores, self._round_scale)

    def shed_recently(self) -> bool:
        """Whether a round shed frames in the last SHED_MEMORY_S (then a live stream beside others is refused)."""
        with self._lock:
            return time.monotonic_ns() - self._last_shed_ns < SHED_MEMORY_S * 1e9

    def admit(self, open_streams: int) -> str | None:
        """None if one more live stream fits beside ``open_streams``; otherwise why not, for the client."""
        if open_streams == 0:
            return None
        r = self.reading()
        if self.shed_recently():
            return "the runtime is already shedding frames to keep its streams current (the machine is too busy)"
        fits = r.streams_that_fit(self.target)
        if open_streams + 1 > fits:
            why = (f"the measured capacity is {fits} live stream(s) here: each costs {r.stream_cores:.2f} of a core "
                   f"(and their rounds {r.fixed_cores:.2f}), and {r.other_cores:.1f} of {r.cores} cores are busy "
                   "with other programs")
            if r.rounds is not None and r.rounds.streams_that_fit() < open_streams + 1:
                why += (f"; a round of {open_streams + 1} streams would take ~{r.rounds.round_ms(open_streams + 1):.0f}"
                        f" ms of the {r.rounds.hop_ms:.0f} ms hop on the engine's thread")
                if abs(r.round_scale - 1.0) >= 0.005:
                    why += f" (the rounds served took {r.round_scale:.2f}x what the warm-up measured)"
            return why
        return None


class OverRoom:
    """Says when more live streams are held than the machine has room for now, and when that is over.

    Admission decides when a stream opens; the room can shrink afterwards (the rounds served run slower than
    the warm-up measured, other programs take the cores), and streams already served are never dropped for
    it: their frames run late, or are shed. The operator hears of it once either way, once the readings have
    said so for ``settle_s``: a reading the other way clears that only when it too has lasted ``settle_s``, so
    a room that wavers around the streams held is news once, not every second, and not never. Owned by the io
    thread."""

    def __init__(self, settle_s: float = OVER_ROOM_WARN_S) -> None:
        self.settle_s = settle_s
        self.over = False  # what was last said: more live streams held than the room
        self._since: float | None = None  # since when the readings have said otherwise
        self._agreed: float | None = None  # since when they have agreed again with what was said

    def update(self, held: int, reading: Reading, target: float, now_s: float) -> tuple[int, str] | None:
        """The live streams held now and the capacity's reading; returns (a logging level, a line) to log, or
        None."""
        room = reading.streams_that_fit(target)
        if (held > room) == self.over:
            self._agreed = now_s if self._agreed is None else self._agreed
            if self._since is not None and now_s - self._agreed >= self.settle_s:
                self._since = None
            return None
        self._agreed = None
        self._since = now_s if self._since is None else self._since
        if now_s - self._since < self.settle_s:
            return None
        lasted, self._since, self.over = now_s - self._since, None, not self.over
        if not self.over:
            return logging.INFO, f"the live streams held ({held}) fit the room again: {reading.describe(target)}"
        return (logging.WARNING, f"more live streams have been held than this machine has room for over the last "
                f"{lasted:.0f} s (now {held}, room for {room}: {reading.describe(target)}): their frames run late "
                "or are shed. Serve fewer streams or free the CPU (streams already served are not dropped)")


def _cpu_count_all() -> int:
    """Every CPU the kernel counts in /proc/stat (other programs may run on cores we may not)."""
    return os.cpu_count() or 1
