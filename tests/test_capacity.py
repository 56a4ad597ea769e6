"""Admission's two bounds: the cores a live stream costs, and the engine thread's round within the hop."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.engine.capacity import ROUND_PROBE, ROUND_TARGET, Capacity, OverRoom, Probe, Reading, RoundCost
from ksdiff_runtime.engine.engine import PROBE_STAGGER_S, StreamingEngine
from ksdiff_runtime.inputs.stream import AudioFormat
from ksdiff_runtime.sessions import Sessions

HOP_MS = 1000 / 30


def test_a_round_cost_is_fitted_from_two_measurements_and_bounds_the_streams():
    cost = RoundCost.fit(one_ms=11.7, probe_ms=21.7, probe=4, hop_ms=HOP_MS)
    assert cost.per_stream_ms == pytest.approx(10 / 3) and cost.fixed_ms == pytest.approx(11.7 - 10 / 3)
    assert cost.round_ms(8) == pytest.approx(cost.fixed_ms + 8 * 10 / 3)
    fits = cost.streams_that_fit()
    assert cost.round_ms(fits) <= ROUND_TARGET * HOP_MS < cost.round_ms(fits + 1)
    # a round that does not grow with streams (noise) still counts each stream a little
    flat = RoundCost.fit(one_ms=10.0, probe_ms=9.0, probe=4, hop_ms=HOP_MS)
    assert flat.per_stream_ms > 0 and flat.streams_that_fit() < 100
    # one stream is always admitted, even when one round overruns the hop
    assert RoundCost.fit(40.0, 80.0, 4, HOP_MS).streams_that_fit() == 1


def test_admission_takes_the_tighter_of_the_cores_and_the_engine_thread():
    rounds = RoundCost(fixed_ms=5.0, per_stream_ms=4.0, hop_ms=HOP_MS)  # 5 streams fit the round
    many_cores = Reading(cores=16, stream_cores=0.25, other_cores=0.0, engine_busy=0.0, rounds=rounds)
    assert many_cores.streams_that_fit() == rounds.streams_that_fit() == 5  # the cores would take 44
    few_cores = Reading(cores=2, stream_cores=0.5, other_cores=0.0, engine_busy=0.0, rounds=rounds)
    assert few_cores.streams_that_fit() == 2
    assert Reading(cores=16, stream_cores=0.25, other_cores=0.0, engine_busy=0.0).streams_that_fit() == 44

    capacity = Capacity(cores=16)
    capacity.calibrate(0.2)
    capacity.calibrate_rounds(rounds)
    assert capacity.admit(4) is None
    refused = capacity.admit(5)
    assert refused and "measured capacity is 5" in refused and "of a core" in refused
    assert "a round of 6 streams would take ~29 ms of the 33 ms hop" in refused


def test_the_rounds_fixed_cost_is_not_charged_to_every_stream():
    """The warm-up's one stream costs the rounds' fixed part as well as its own: with four streams at once
    each costs less. Admission counts that part once, not once per stream."""
    capacity = Capacity(cores=2)
    capacity.calibrate(0.31, 0.18, probe=4)  # one stream: 0.31 of a core; four at once: 0.18 each
    r = capacity.reading()
    assert r.stream_cores == pytest.approx((4 * 0.18 - 0.31) / 3)
    assert r.fixed_cores == pytest.approx(0.31 - r.stream_cores)
    assert r.streams_that_fit() == 8  # (2 x 0.7 - 0.17) / 0.14
    assert Reading(cores=2, stream_cores=0.31, other_cores=0.0, engine_busy=0.0).streams_that_fit() == 4
    refused = capacity.admit(8)
    assert refused and "measured capacity is 8" in refused and "their rounds 0.17" in refused
    # a probe that measured no saving (noise) leaves the whole cost on each stream, never a free stream
    capacity.calibrate(0.3, 0.35, probe=4)
    assert capacity.reading().stream_cores == pytest.approx(0.3) and capacity.reading().fixed_cores == 0.0
    capacity.calibrate(0.3, 0.01, probe=4)  # nor under a tenth of one stream's cost
    assert capacity.reading().stream_cores == pytest.approx(0.03)


def test_streams_served_refresh_what_a_stream_adds_beyond_the_rounds_that_ran(monkeypatch):
    """Live figures: the CPU of a window less the fixed part of the rounds that ran in it (not of the whole
    window: a stream live for half of it pays the rounds' part for that half only), per second of audio."""
    clock = {"ns": 0, "cpu": 0}

    class Clock:
        @staticmethod
        def monotonic_ns() -> int:
            return clock["ns"]

        @staticmethod
        def process_time_ns() -> int:
            return clock["cpu"]

    from ksdiff_runtime.engine import capacity as capacity_module

    monkeypatch.setattr(capacity_module, "time", Clock)
    monkeypatch.setattr(capacity_module, "_machine_busy_jiffies", lambda: None)
    capacity = Capacity(cores=2, window_s=2.0)
    capacity.calibrate(0.31, 0.18, probe=4)
    fixed, per_stream = capacity.reading().fixed_cores, capacity.reading().stream_cores
    hop = 1 / 30
    before = capacity.reading()
    for i in range(61):  # one stream live for the window's first 1.33 s only, costing what calibrate says
        live = i < 40
        clock["ns"] += int(hop * 1e9)
        clock["cpu"] += int((fixed + per_stream) * hop * 1e9) if live else 0
        capacity.observe(int(5e6) if live else 0, hop if live else 0.0, False, hop if live else 0.0)
    after = capacity.reading()
    assert after.engine_busy != before.engine_busy  # the window closed and was measured
    assert after.stream_cores == pytest.approx(per_stream, rel=0.02)
    assert after.streams_that_fit() == 8


def test_the_warm_up_measures_the_round_a_live_stream_adds(tiny_backend):
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    engine.warm_up()
    rounds = engine.capacity.reading().rounds
    assert rounds is not None and rounds.hop_ms == pytest.approx(HOP_MS)
    assert rounds.per_stream_ms > 0 and rounds.fixed_ms >= 0 and rounds.streams_that_fit() >= 1
    reading = engine.capacity.reading()
    assert reading.stream_cores > 0 and reading.fixed_cores >= 0
    assert not engine.stream_ids  # the warm-up's streams are gone


def test_the_warm_up_keeps_the_median_of_its_probes(tiny_backend, monkeypatch):
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    real = engine._warm_streams
    # the round times of (1 stream, ROUND_PROBE streams) x 3 probes: the second probe met a hiccup
    measured = iter([10.0, 20.0, 400.0, 900.0, 12.0, 21.0])

    def probe(n, stereo_48k, mode, text=None, paced=False):
        if text is not None:  # the passes before the probe, which warm a first stream's paths
            return real(n, stereo_48k, mode, text)
        assert paced  # the probe's rounds are paced at the hop, as serve's are
        return next(measured)

    monkeypatch.setattr(engine, "_warm_streams", probe)
    engine.warm_up(probe_repeats=3)
    assert engine.capacity.reading().rounds == RoundCost.fit(12.0, 21.0, ROUND_PROBE, HOP_MS)
    assert next(measured, None) is None  # three probes, no more
    with pytest.raises(ValueError, match="probe_repeats"):
        engine.warm_up(probe_repeats=0)


def test_a_probe_measured_before_is_calibrated_from_instead_of_probing_again(tiny_backend, monkeypatch):
    """`serve --restart`: a restarted runtime takes the probe of the one before (same settings, this machine) and is
    ready seconds sooner; the rest of the warm-up, which a first stream would otherwise wait on, still runs. A probe
    of another number of streams or another hop is measured again."""
    first = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    first.warm_up(probe_repeats=1)
    measured = first.probe
    assert measured is not None and measured.streams == ROUND_PROBE and time.time() - measured.measured_at < 60
    assert Probe.from_json(json.loads(json.dumps(measured.to_json()))) == measured  # through the ready file

    def engine_counting_passes(preset="low-latency", **kwargs):
        engine = StreamingEngine(tiny_backend, preset, front_end_threads=1, **kwargs)
        real, passes = engine._warm_streams, []
        monkeypatch.setattr(engine, "_warm_streams",
                            lambda n, *args, **kw: passes.append((n, kw.get("paced", False))) or real(n, *args, **kw))
        return engine, passes

    again, passes = engine_counting_passes()
    again.warm_up(probe=measured)
    assert passes == [(1, False), (1, False)]  # a first live stream's paths and a line's: no probe
    # the probe's figures (other programs' load is of each engine's own time: see the next test)
    probed, reused = first.capacity.reading(), again.capacity.reading()
    assert again.probe is measured and (reused.stream_cores, reused.fixed_cores, reused.rounds) == \
        (probed.stream_cores, probed.fixed_cores, probed.rounds)
    for kwargs in ({"sessions": Sessions(max_streams=5)}, {"preset": "quality"}):
        other, passes = engine_counting_passes(**kwargs)
        other.warm_up(probe=measured, probe_repeats=1)
        assert any(paced for _, paced in passes) and other.probe is not measured
    # a probe of another backend (a GPU's, before its runtime crashed and the next one fell back to the CPU)
    gpu, passes = engine_counting_passes()
    gpu.warm_up(probe=dataclasses.replace(measured, backend="tensorrt (float)"), probe_repeats=1)
    assert any(paced for _, paced in passes) and gpu.probe.backend == measured.backend


def test_an_engine_that_takes_a_probe_still_measures_what_other_programs_keep_busy(tiny_backend, monkeypatch):
    """After a crash every client opens its streams again at once: admission must count a VTuber's OBS and game
    (here the kernel's counters say every core is busy, this process's share included) as the probe would have,
    not take the machine for idle until its first window ends."""
    from ksdiff_runtime.engine import capacity as module

    start = time.monotonic()
    monkeypatch.setattr(module, "_machine_busy_jiffies", lambda: (int((time.monotonic() - start) * 100 * 64),) * 2)
    monkeypatch.setattr(module, "_cpu_count_all", lambda: 64)
    probe = Probe(0.1, 0.05, ROUND_PROBE, RoundCost(5.0, 1.0, HOP_MS), time.time(), "tiny")
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    engine.warm_up(probe=dataclasses.replace(probe, backend=f"{tiny_backend.name} (float)"))
    assert engine.probe is not None and engine.probe.measured_at == probe.measured_at  # taken, not measured
    assert engine.capacity.reading().other_cores > 60  # 64 cores busy, at most 2 of them this process'


GOOD_PROBE = Probe(0.4, 0.15, 12, RoundCost(8.0, 1.5, HOP_MS), 1.7e9, "onnxruntime-cpu (int8)").to_json()


@pytest.mark.parametrize("data", [[], "probe", {"streams": 12}, {**GOOD_PROBE, "streams": True},
                                  {**GOOD_PROBE, "streams": 1}, {**GOOD_PROBE, "hop_ms": 0.0},
                                  {**GOOD_PROBE, "per_stream_ms": 0.0}, {**GOOD_PROBE, "backend": None},
                                  {**GOOD_PROBE, "fixed_ms": float("nan")}, {**GOOD_PROBE, "per_stream_ms": -1.0},
                                  {**GOOD_PROBE, "cpu_s_per_audio_s": "fast"}])
def test_a_probe_that_is_not_one_is_refused(data):
    assert Probe.from_json(dict(GOOD_PROBE)).streams == 12
    with pytest.raises(ValueError, match="probe"):
        Probe.from_json(data)


def test_the_paced_probe_feeds_its_streams_a_hop_of_audio_a_round_staggered(tiny_backend, monkeypatch):
    """The probe's streams run as `serve`'s live streams do: a hop of audio to each stream a round (so each
    round has its recogniser and VAD work, not one round all of it), each stream PROBE_STAGGER_S ahead of the one
    before (their chunks in different rounds, as streams opened at different times), all hopping from the first
    round (which brings the audio a first hop waits for)."""
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    fed: dict[str, int] = {}
    seen: list[dict[str, int]] = []
    hops: list[int] = []
    feed, step = engine.sessions.feed, engine.step

    def counting_feed(session, pcm, *args, **kwargs):
        fed[session.id] = fed.get(session.id, 0) + len(pcm)
        return feed(session, pcm, *args, **kwargs)

    def recording_step(*args, **kwargs):
        seen.append(dict(fed))
        result = step(*args, **kwargs)
        hops.append(result.hops)
        return result

    monkeypatch.setattr(engine.sessions, "feed", counting_feed)
    monkeypatch.setattr(engine, "step", recording_step)
    audio = np.zeros((int(0.25 * 48_000), 2), np.float32)
    assert engine._warm_streams(3, audio, "live", paced=True) > 0
    block = round(48_000 / motion.FPS)
    wait = engine.preset.latency_budget_ms() / 1000 + 1 / motion.FPS  # the first hop's wait and a hop
    lead = [round((wait + i * PROBE_STAGGER_S) * 48_000) for i in range(3)]
    ids = list(seen[0])
    assert [seen[0][i] for i in ids] == lead
    assert hops[0] == 3  # every stream hops from the first round
    for r in range(1, 4):  # then a hop a round each
        assert [seen[r][i] for i in ids] == [lead[k] + r * block for k in range(3)]
    assert all(fed[i] == len(audio) for i in ids) and not engine.stream_ids


def test_the_warm_up_probes_no_more_streams_than_its_registry_holds(tiny_backend, monkeypatch):
    engine = StreamingEngine(tiny_backend, "low-latency", sessions=Sessions(max_streams=5), front_end_threads=1)
    counts: list[int] = []
    real = engine._warm_streams
    monkeypatch.setattr(engine, "_warm_streams", lambda n, *args, **kw: counts.append(n) or real(n, *args, **kw))
    engine.warm_up(probe_repeats=1)
    assert max(counts) == 5 and engine.capacity.reading().rounds is not None
    alone = StreamingEngine(tiny_backend, "low-latency", sessions=Sessions(max_streams=1), front_end_threads=1)
    alone.warm_up()  # one stream at most: nothing for admission to decide, and no probe of two
    assert alone.capacity.reading().rounds is None


def test_a_round_that_shed_frames_refuses_new_live_streams_for_a_while(monkeypatch: pytest.MonkeyPatch):
    from ksdiff_runtime.engine import capacity as module

    capacity = Capacity(cores=16)
    capacity.calibrate(0.01)
    assert not capacity.shed_recently() and capacity.admit(1) is None
    capacity.observe(round_ns=1_000_000, audio_s=0.033, shed=True)
    assert capacity.shed_recently()
    assert "already shedding" in (capacity.admit(1) or "")
    assert capacity.admit(0) is None  # a runtime's only stream is always admitted
    later = module.time.monotonic_ns() + int((module.SHED_MEMORY_S + 0.1) * 1e9)
    monkeypatch.setattr(module.time, "monotonic_ns", lambda: later)
    assert not capacity.shed_recently() and capacity.admit(1) is None


def test_the_probe_paces_its_rounds_at_the_hop_as_serve_does(tiny_backend, monkeypatch):
    """A round after the cores idled costs more than one right after another (docs/ENGINE.md "What a round
    costs"): the warm-up's probe starts a round every hop, as audio arriving in real time starts serve's."""

    from ksdiff_runtime.assets import SAMPLE_SPEECH
    from ksdiff_runtime.inputs.guards import load_audio

    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    starts: list[float] = []
    step = engine.step

    def timed_step(*args, **kwargs):
        starts.append(time.perf_counter())
        return step(*args, **kwargs)

    monkeypatch.setattr(engine, "step", timed_step)
    audio, _ = load_audio(SAMPLE_SPEECH)
    stereo_48k = np.repeat(np.repeat(audio[:4000], 3)[:, None], 2, axis=1)  # 0.25 s
    try:
        assert engine._warm_streams(2, stereo_48k, "live", paced=True) > 0
        gaps = np.diff(starts)
        assert len(gaps) >= 6 and gaps.min() >= HOP_MS / 1000 - 1e-3, gaps
    finally:
        engine.close()


class _Clock:
    """capacity's clock, set by the test: the window's end and the CPU are the test's, not the machine's."""

    def __init__(self) -> None:
        self.ns = 0
        self.cpu = 0

    def monotonic_ns(self) -> int:
        return self.ns

    def process_time_ns(self) -> int:
        return self.cpu


def _served(capacity: Capacity, clock: _Clock, rounds: int, round_ms: float, live_hops: int) -> None:
    """``rounds`` rounds a hop apart, each ``round_ms`` long and hopping ``live_hops`` live streams."""
    for _ in range(rounds):
        clock.ns += int(HOP_MS * 1e6)
        capacity.observe(int(round_ms * 1e6), live_hops / 30, False, 1 / 30, live_hops)


def test_the_live_rounds_served_rescale_the_warm_ups_round(monkeypatch):
    """The start-up probe hears 0.6 s of audio once; the rounds served say how long rounds take now. Their time
    against the probe's line for the same rounds rescales the line (blended a window at a time, as the CPU's
    figure), so admission tightens when the machine got slower than at start-up, and widens when faster."""
    from ksdiff_runtime.engine import capacity as module

    clock = _Clock()
    monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(module, "_machine_busy_jiffies", lambda: None)
    capacity = Capacity(cores=64, window_s=2.0)
    capacity.calibrate(0.01)
    line = RoundCost(fixed_ms=5.0, per_stream_ms=2.0, hop_ms=HOP_MS)  # 11 streams fit: 5 + 2 x 11 = 27 <= 28.3
    capacity.calibrate_rounds(line)
    assert capacity.reading().streams_that_fit() == line.streams_that_fit() == 11
    # 8 streams a round, each round 1.2x what the line says (5 + 16 = 21 ms -> 25.2): one window
    _served(capacity, clock, 61, 1.2 * line.round_ms(8), 8)
    r = capacity.reading()
    assert r.round_scale == pytest.approx(1.1)  # half the window's 1.2, half the probe's 1
    assert r.rounds is not None and r.rounds.round_ms(8) == pytest.approx(1.1 * 21)
    assert r.streams_that_fit() == 10  # 1.1 x (5 + 2 x 10) = 27.5 <= 28.3 < 1.1 x 27
    refused = capacity.admit(10)
    assert refused and "a round of 11 streams would take ~30 ms" in refused
    assert "the rounds served took 1.10x what the warm-up measured" in refused
    _served(capacity, clock, 61, 1.2 * line.round_ms(8), 8)
    assert capacity.reading().round_scale == pytest.approx(1.15)
    # faster than at start-up: the line shrinks again, and more streams fit
    for _ in range(6):
        _served(capacity, clock, 61, 0.8 * line.round_ms(8), 8)
    assert capacity.reading().round_scale == pytest.approx(0.8, abs=0.01)
    assert capacity.reading().streams_that_fit() == 15  # 0.8 x (5 + 2 x 15) = 28 <= 28.3


def test_only_rounds_of_enough_live_streams_alone_rescale_the_round(monkeypatch):
    from ksdiff_runtime.engine import capacity as module

    clock = _Clock()
    monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(module, "_machine_busy_jiffies", lambda: None)
    capacity = Capacity(cores=64, window_s=2.0)
    capacity.calibrate(0.01)
    line = RoundCost(fixed_ms=5.0, per_stream_ms=2.0, hop_ms=HOP_MS)
    capacity.calibrate_rounds(line)
    # rounds with a line's hop in them (the engine passes no live hops): a line's window is not a live stream's
    _served(capacity, clock, 61, 30.0, 0)
    assert capacity.reading().round_scale == 1.0
    # a window with a live stream in a fifth of it (12 hops of 61, under half a stream's): too little to say
    _served(capacity, clock, 12, 3 * line.round_ms(1), 1)
    _served(capacity, clock, 49, 0.0, 0)
    assert capacity.reading().round_scale == 1.0
    # one stalled round among a window's (a pause of the whole process) moves nothing: the median, as the probe's
    _served(capacity, clock, 1, 1000.0, 4)
    _served(capacity, clock, 60, line.round_ms(4), 4)
    assert capacity.reading().round_scale == pytest.approx(1.0)
    # a stalled machine (every round 1 s) moves the line at most by the limit
    _served(capacity, clock, 61, 1000.0, 1)
    assert capacity.reading().round_scale == pytest.approx(0.5 + 0.5 * module.ROUND_SCALE_LIMITS[1])
    # rounds a frozen clock timed at 0 say nothing
    _served(capacity, clock, 61, 0.0, 4)
    assert capacity.reading().round_scale == pytest.approx(0.5 + 0.5 * module.ROUND_SCALE_LIMITS[1])
    # a new warm-up's line starts afresh, and its window too: the rounds served before it (the warm-up's own) do
    # not count
    _served(capacity, clock, 30, 1000.0, 1)
    capacity.calibrate_rounds(line)
    assert capacity.reading().round_scale == 1.0 and capacity.reading().rounds == line
    _served(capacity, clock, 61, 1.2 * line.round_ms(1), 1)
    assert capacity.reading().round_scale == pytest.approx(1.1)


def test_the_engine_counts_its_live_rounds_for_admission_and_not_a_lines(tiny_backend, monkeypatch):
    """Real rounds of a real engine: its live rounds reach admission's round line as they took (here a line
    that says rounds are nearly free, so the scale goes to its limit); rounds with a line's hop do not. The
    capacity's windows run on a clock that moves a hop a round, so a busy machine that deschedules this test
    does not leave its windows with too few hops to count (the rounds themselves are timed for real)."""
    from ksdiff_runtime.assets import SAMPLE_SPEECH
    from ksdiff_runtime.engine import capacity as module
    from ksdiff_runtime.inputs.guards import load_audio

    clock = _Clock()
    monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(module, "_machine_busy_jiffies", lambda: None)
    audio, _ = load_audio(SAMPLE_SPEECH)
    speech = np.tile(audio, 2)  # 14 s: more live hops than the windows below need
    nearly_free = RoundCost(fixed_ms=1e-4, per_stream_ms=1e-4, hop_ms=HOP_MS)
    for mode in ("live", "line"):
        capacity = Capacity(cores=64, window_s=0.2)  # 6 hops a window
        engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, capacity=capacity)
        try:
            capacity.calibrate(0.01)
            capacity.calibrate_rounds(nearly_free)
            sid = engine.open_stream(mode=mode)
            if mode == "line":
                engine.push(sid, speech)
                engine.end_stream(sid)
            hopped = 0
            for i in range(0, speech.size, 533):
                if mode == "live":
                    engine.push(sid, speech[i : i + 533])
                while engine.has_work() and hopped < 30:
                    clock.ns += int(HOP_MS * 1e6)
                    hopped += engine.step().hops > 0
                if hopped >= 30:  # five windows of hops: enough for live rounds to rescale
                    break
            # every hop of the line's audio (its hops are longer): two windows of them, which live hops rescale
            assert hopped == 30 if mode == "live" else hopped >= 12
            scale = capacity.reading().round_scale
            if mode == "live":
                assert 1.5 < scale <= module.ROUND_SCALE_LIMITS[1]
            else:
                assert scale == 1.0
        finally:
            engine.close()


def test_the_stats_line_says_what_bounds_the_room():
    from benchmarks.load import STATS_ROOM
    from ksdiff_runtime.cli.serve import format_stats

    rounds = RoundCost(fixed_ms=5.0, per_stream_ms=4.0, hop_ms=HOP_MS)
    reading = Reading(cores=16, stream_cores=0.25, other_cores=1.5, engine_busy=0.0, rounds=rounds.scaled(1.2),
                      round_scale=1.2)
    assert reading.bounds() == (38, 4)  # (16 x 0.7 - 1.5) / 0.25; 1.2 x (5 + 4 x 4) = 25.2 <= 28.3 < 30
    room = "room 4 (cores 38, round 4, its time 1.20x the warm-up's; 1.5 cores busy elsewhere)"
    assert reading.describe() == room
    assert reading.describe(target=0.5) == room.replace("room 4 (cores 38", "room 4 (cores 26")
    alone = Reading(cores=2, stream_cores=0.5, other_cores=0.0, engine_busy=0.0)
    assert alone.describe() == "room 2 (cores 2; 0.0 cores busy elsewhere)"
    line = format_stats({"uptime_s": 3.0, "drops": 0, "streams": {}, "room": reading.describe()})
    assert line == f"stats 3s drops=0 | {room}"
    # what benchmarks/load.py reads back from serve's log
    assert re.findall(STATS_ROOM, f"x INFO {line}\ny INFO stats 4s drops=0 | {alone.describe()}") == [
        ("3", "4", "38", "4", "1.20"), ("4", "2", "2", "", "")]


def _room(room: int, other_cores: float = 0.0) -> Reading:
    """A reading of 2 cores whose cores' bound is ``room`` streams: (2 x 0.7 - other) / (1.4 / room)."""
    return Reading(cores=2, stream_cores=1.4 / room - 1e-6, other_cores=other_cores, engine_busy=0.0)


def _said(watch: OverRoom, held: int, room: int, start: int, end: int) -> list[tuple[int, int, str]]:
    """A reading a second from ``start`` to ``end`` (excluded), as serve's stats give them: what was said, when."""
    out = []
    for t in range(start, end):
        said = watch.update(held, _room(room), 0.7, float(t))
        if said is not None:
            out.append((t, *said))
    return out


def test_live_streams_held_beyond_the_room_are_said_once_each_way_when_it_has_lasted():
    """Streams admitted are never dropped when the room shrinks after them (the rounds served slower than the
    warm-up, a game taking the cores): the log says so once it has lasted, once, and again once they fit."""
    assert [_room(r).streams_that_fit() for r in (1, 3, 4, 8)] == [1, 3, 4, 8]
    watch = OverRoom(settle_s=10.0)
    # a spell beyond the room that ends before the settling time, then a while within it: nothing said
    assert _said(watch, 6, 4, 0, 6) == [] and _said(watch, 3, 4, 6, 20) == [] and not watch.over
    # one that lasts: said once, with the streams and the room
    (t, level, line), = _said(watch, 6, 4, 20, 40)
    assert t == 30 and level == logging.WARNING and watch.over
    assert line.startswith("more live streams have been held than this machine has room for over the last 10 s "
                           "(now 6, room for 4: room 4 (cores 4")
    assert "streams already served are not dropped" in line
    # not again while it lasts, nor for a room that wavers back for less than the settling time
    assert _said(watch, 6, 8, 40, 45) == [] and _said(watch, 6, 3, 45, 60) == [] and watch.over
    (t, level, line), = _said(watch, 0, 8, 60, 80)
    assert t == 70 and level == logging.INFO and not watch.over
    assert line == "the live streams held (0) fit the room again: room 8 (cores 8; 0.0 cores busy elsewhere)"


def test_a_room_that_keeps_dipping_below_the_streams_held_is_said_all_the_same():
    """Beyond the room 8 s, within it 2, again and again: frames late most of the time. A reading the other way
    clears the spell only once it too has lasted the settling time, so the log says it after 10 s of the spell."""
    watch = OverRoom(settle_s=10.0)
    said = [watch.update(5, _room(4 if t % 10 < 8 else 5), 0.7, float(t)) for t in range(0, 12)]
    assert said[:10] == [None] * 10 and said[10] is not None and said[10][0] == logging.WARNING
    # a VTuber alone is never told: one stream always fits, however busy the cores (room at least 1)
    alone = OverRoom(settle_s=0.0)
    assert _room(1, other_cores=1.9).streams_that_fit() == 1
    assert all(alone.update(1, _room(1, other_cores=1.9), 0.7, t) is None for t in (0.0, 100.0))


def test_lines_waiting_for_their_audio_do_not_count_against_live_streams_admitted():
    """Admission is told how many streams take the machine's rounds: every live stream, and a line once its audio
    came. A game that opens its NPCs' lines ahead of their audio refused a VTuber's mic when as many lines as the
    machine's measured capacity waited, idle."""
    told: list[int] = []
    sessions = Sessions(admission=lambda n: told.append(n) or None)
    fmt = AudioFormat(16_000, 1)
    for k in range(3):
        sessions.open(f"npc{k}", "sdk", fmt, owner=b"game", mode="line")
    sessions.open("mic", "mic", fmt)
    assert told == [0]  # lines are never refused for capacity, so only the mic asked
    sessions.feed(sessions.get("npc0"), np.zeros(1600, np.float32).tobytes())
    sessions.open("voice", "sdk", fmt, owner=b"other")
    assert told == [0, 2]  # the mic and the line that has its audio
