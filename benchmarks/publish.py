"""`python -m benchmarks.publish`: publish -> receive latency of the runtime's PUB socket.

What is measured is the real publish path of `ksdiff-runtime serve`: a real ``Runtime`` (its
engine thread, bounded outbox, io thread, ``protocol.encode_frame`` and the ZeroMQ PUB socket,
on 127.0.0.1 with ephemeral ports) and N real ZeroMQ SUB sockets in other processes that
decode every frame with ``protocol.decode`` as a client would.

Only the model is replaced: ``SyntheticEngine`` has the StreamingEngine interface the Runtime
uses and emits one frame per stream every 1/fps s on a monotonic schedule (random blendshapes),
so the figures are the cost of publishing alone. Model compute and end-to-end (capture ->
frame) latency are measured by ``python -m benchmarks.bench``.

Streams are opened with ``open_stream`` requests on the ROUTER, like an SDK client; the
synthetic engine ends each stream after ``seconds * fps`` frames, so the runtime publishes its
``stream_end`` and every subscriber knows when it has seen everything.

Per frame and subscriber:

    latency   time.monotonic_ns() after protocol.decode - the frame's published_ns
              (CLOCK_MONOTONIC is system-wide on Linux: comparable across processes on one host)
    hop       published_ns - captured_ns: the synthetic engine stamps captured_ns when it emits a
              frame, so this is the runtime-internal hop (engine hand-over -> outbox -> io thread)
    drops     frames the engine emitted that the subscriber never received (seq gaps)

Subscriber sockets are spread over worker processes (multiprocessing, spawn) so that one Python
process's GIL does not serialise them all: up to ``sockets_per_process`` (default 4) sockets per
process. On a 2-core machine one process per socket was measured to be worse (32 processes'
wake-ups cost twice the CPU of 8) and 16-32 sockets per process serialise too much; see
docs/SERVE.md "Publish latency".

The floor: the same frames, schedule and subscriber processes with a bare PUB socket driven by
one thread instead of the Runtime. It is what ZeroMQ and the subscribers alone cost on this
machine; the runtime's figures minus the floor's are what the Runtime's threads add.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

# Only light imports at the top: every subscriber process imports this module (spawn), and the
# runtime's modules load torch (~2 s and ~250 MB per process).
import numpy as np
import zmq

from ksdiff_sdk import Frame, protocol, schema

if TYPE_CHECKING:
    from ksdiff_runtime.engine.engine import StepResult
    from ksdiff_runtime.server.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_SUBSCRIBERS = (1, 8, 32)
DEFAULT_STREAMS = 8
DEFAULT_FPS = 60
DEFAULT_SECONDS = 10.0
QUICK_SECONDS = 3.0
DEFAULT_SOCKETS_PER_PROCESS = 4  # measured on 2 cores: fewer processes per socket cost more; see docs/SERVE.md
TARGET_P99_MS = 1.0
DISTURBED_CORES = 0.25  # other processes used more than this during a run: its figures are not this code's

SUB_RCVHWM = 20_000  # as the SDK client (ksdiff_sdk/client.py): a subscriber's own queue never drops here
SUB_TOPICS = (protocol.HELLO_TOPIC, protocol.FRAME_TOPIC_PREFIX, protocol.STREAM_TOPIC_PREFIX)
POLL_MS = 100  # a subscriber checks the stop event this often when nothing arrives
READY_TIMEOUT_S = 60.0  # spawning 32 Python processes on 2 cores takes a while; hello comes every second
OPEN_TIMEOUT_S = 10.0  # replies to open_stream
DRAIN_TIMEOUT_S = 10.0  # after the runtime is idle: subscribers still reading what was published
RESULT_TIMEOUT_S = 30.0  # after the stop event: a subscriber sends what it has
CDF_QUANTILES = (*range(0, 100), 99.5, 99.9, 100)  # the latency CDF kept in the JSON (and plotted)


# --- the synthetic engine --------------------------------------------------------------------------
class _NoLookahead:
    """The preset stand-in: frames carry ``preset.lookahead_ms()``."""

    def lookahead_ms(self) -> float:
        return 0.0


class SyntheticEngine:
    """The StreamingEngine interface the Runtime uses, without a model: one frame per open stream
    every 1/fps s on a monotonic grid, each stream ending after ``frames_per_stream``.

    Streams live in the same registry a real engine uses (``ksdiff_runtime.sessions``), opened and
    ended by the Runtime. A frame's ``captured_ns`` is the instant ``step()`` made it, so the published
    frame's ``published_ns - captured_ns`` is the runtime's own hand-over hop."""

    def __init__(self, frames_per_stream: int, fps: int = DEFAULT_FPS, seed: int = 0) -> None:
        from ksdiff_runtime.engine.capacity import Capacity
        from ksdiff_runtime.sessions import Sessions

        if frames_per_stream < 1 or fps < 1:
            raise ValueError("frames_per_stream and fps must be positive")
        self.fps = fps
        self.preset = _NoLookahead()
        self.sessions = Sessions()
        self.capacity = Capacity()
        self.keep_ended = False
        self.frames_per_stream = frames_per_stream
        self.period_ns = round(1e9 / fps)
        self.frames_emitted = 0
        self.tick_late_ns: list[int] = []  # per tick: how long after its scheduled instant it ran
        self._next_tick_ns: int | None = None  # None: no stream open, no schedule
        self._index: dict[str, int] = {}  # stream -> its next frame's index
        self._rng = np.random.default_rng(seed)

    def latency_ms(self, mode: str = "live") -> float:
        """The latency stated for a stream: one frame period (the synthetic "compute" is the schedule)."""
        return 1000.0 / self.fps

    def has_work(self) -> bool:
        """True once the next tick is due. Until then it waits (at most a tick): this engine's "compute"
        is the schedule, and the Runtime's engine thread asks this before it waits for audio."""
        if self._next_tick_ns is None:
            if not any(not s.finished for s in self.sessions):
                return False
            self._next_tick_ns = time.monotonic_ns()  # the first stream starts the clock
        delay_ns = self._next_tick_ns - time.monotonic_ns()
        if delay_ns > 0:
            time.sleep(min(delay_ns, self.period_ns) / 1e9)  # the engine's own cadence, not synchronisation
        return time.monotonic_ns() >= self._next_tick_ns

    def step(self, now_ns: int | None = None) -> StepResult:
        """Every frame whose tick is due. A late tick is caught up (frames are late, never skipped)."""
        # imported here, not at the top: subscriber processes import this module and must not load torch
        from ksdiff_runtime.engine.engine import Ended, StepResult

        result = StepResult()
        now = time.monotonic_ns() if now_ns is None else now_ns
        live = [s for s, _, _ in self.sessions.take()]
        if self._next_tick_ns is None and live:
            self._next_tick_ns = now  # the first stream's first frame is due now
        while self._next_tick_ns is not None and self._next_tick_ns <= now and live:
            self.tick_late_ns.append(now - self._next_tick_ns)
            for session in list(live):
                index = self._index.get(session.id, 0)
                last = session.ending or index + 1 >= self.frames_per_stream
                bs = self._rng.random(schema.NUM_BLENDSHAPES, dtype=np.float32)
                result.frames.append(Frame(session.id, index, index, self.fps, index / self.fps, bs,
                                           self._rng.uniform(-0.2, 0.2, schema.NUM_HEAD).astype(np.float32),
                                           np.zeros(len(schema.GAZE), np.float32), now, 0, 0.0, 0.0, last))
                self._index[session.id] = index + 1
                if last:
                    live.remove(session)
                    self.sessions.finish(session)
                    result.ended.append(Ended(session, "ended"))
            self._next_tick_ns += self.period_ns
        if not live:
            self._next_tick_ns = None
        if not self.keep_ended:
            for ended in result.ended:
                self.sessions.remove(ended.session)
        self.frames_emitted += len(result.frames)
        return result

    def closing_frames(self, session: object) -> list[Frame]:
        return []  # streams of this engine always end with their own last frame

    def close(self) -> None:
        pass


# --- subscribers (worker processes) ------------------------------------------------------------------
@dataclass
class _SubscriberState:
    """What one SUB socket saw."""

    sub: int  # subscriber number, 0..N-1
    live: bool = False  # a hello came: the subscription reached the runtime
    last_seq: dict[int, int] = field(default_factory=dict)  # stream number -> last seq received
    seq_gaps: int = 0  # frames missing between received seqs (and before the first)
    out_of_order: int = 0
    ended: dict[int, int] = field(default_factory=dict)  # stream number -> frames in its stream_end
    stream_idx: list[int] = field(default_factory=list)  # per frame received
    seq: list[int] = field(default_factory=list)
    latency_ns: list[int] = field(default_factory=list)  # decoded - published_ns
    arrival_ns: list[int] = field(default_factory=list)  # received (before decode) - published_ns
    hop_ns: list[int] = field(default_factory=list)  # published_ns - captured_ns

    def on_message(self, payload: bytes, received_ns: int, streams: dict[str, int]) -> None:
        msg = protocol.decode(payload)
        decoded_ns = time.monotonic_ns()
        mtype = msg["type"]
        if mtype == "frame":
            s, seq = streams[msg["stream"]], msg["seq"]
            last = self.last_seq.get(s, -1)
            if seq > last + 1:
                self.seq_gaps += seq - last - 1
            elif seq <= last:
                self.out_of_order += 1
            self.last_seq[s] = max(seq, last)
            self.stream_idx.append(s)
            self.seq.append(seq)
            self.latency_ns.append(decoded_ns - msg["published_ns"])
            self.arrival_ns.append(received_ns - msg["published_ns"])
            if msg["captured_ns"] is not None:
                self.hop_ns.append(msg["published_ns"] - msg["captured_ns"])
        elif mtype == "hello":
            self.live = True
        elif mtype == "stream_end" and msg["stream"] in streams:
            self.ended[streams[msg["stream"]]] = msg["frames"]

    def result(self) -> dict[str, Any]:
        return {
            "sub": self.sub, "seq_gaps": self.seq_gaps, "out_of_order": self.out_of_order,
            "last_seq": dict(self.last_seq), "ended": dict(self.ended),
            "stream_idx": np.asarray(self.stream_idx, np.int32), "seq": np.asarray(self.seq, np.int64),
            "latency_ns": np.asarray(self.latency_ns, np.int64), "arrival_ns": np.asarray(self.arrival_ns, np.int64),
            "hop_ns": np.asarray(self.hop_ns, np.int64),
        }


def _subscriber_process(worker: int, endpoint: str, subs: list[int], stream_ids: list[str], queue: Any,
                        stop: Any) -> None:
    """One worker process: SUB sockets for subscribers ``subs``. Puts ("ready", worker) once every
    socket has received a hello, then ("done", worker, results) once every socket has seen the
    stream_end of every stream (or ``stop`` is set)."""
    streams = {sid: i for i, sid in enumerate(stream_ids)}
    ctx = zmq.Context()
    sockets: dict[zmq.Socket, _SubscriberState] = {}
    poller = zmq.Poller()
    for n in subs:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in SUB_TOPICS:  # subscribe before connecting (SPEC 1): nothing is missed
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        sockets[sock] = _SubscriberState(n)
    ready_sent = False
    cpu0 = time.process_time()
    try:
        while not stop.is_set():
            for sock, _ in poller.poll(POLL_MS):
                state = sockets[sock]
                while True:  # drain this socket before polling again
                    try:
                        _, payload = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    state.on_message(payload, time.monotonic_ns(), streams)
            if not ready_sent and all(s.live for s in sockets.values()):
                queue.put(("ready", worker))
                ready_sent = True
                cpu0 = time.process_time()  # count the measured run only, not the start-up
            if all(len(s.ended) == len(stream_ids) for s in sockets.values()):
                break
        queue.put(("done", worker, {"cpu_s": time.process_time() - cpu0,
                                    "subscribers": [s.result() for s in sockets.values()]}))
    finally:
        ctx.destroy(linger=0)


class _Workers:
    """The subscriber processes of one run, and their messages."""

    def __init__(self, endpoint: str, n_subscribers: int, sockets_per_process: int, stream_ids: list[str]) -> None:
        mpctx = mp.get_context("spawn")  # no fork: the parent holds threads and ZeroMQ sockets
        self.queue = mpctx.Queue()
        self.stop = mpctx.Event()
        groups = [list(range(i, min(i + sockets_per_process, n_subscribers)))
                  for i in range(0, n_subscribers, sockets_per_process)]
        self.procs = [mpctx.Process(target=_subscriber_process, name=f"ksdiff-sub-{w}",
                                    args=(w, endpoint, g, stream_ids, self.queue, self.stop), daemon=True)
                      for w, g in enumerate(groups)]
        for p in self.procs:
            p.start()

    def collect(self, kind: str, timeout_s: float) -> dict[int, Any]:
        """Wait for one ``kind`` message per worker; raise if one dies or the timeout passes."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < len(self.procs):
            try:
                item = self.queue.get(timeout=0.5)
            except Empty:  # check that every worker still runs
                dead = [p for i, p in enumerate(self.procs) if i not in got and p.exitcode not in (None, 0)]
                if dead:
                    name, code = dead[0].name, dead[0].exitcode
                    raise RuntimeError(f"subscriber process {name} failed (exit code {code})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(got)} of {len(self.procs)} subscriber processes sent {kind!r} "
                                       f"within {timeout_s:.0f} s") from None
                continue
            if item[0] == kind:
                got[item[1]] = item[2] if len(item) > 2 else True
        return got

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


# --- CPU accounting (Linux /proc; empty elsewhere) ----------------------------------------------------
def _task_cpu() -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) of this process's threads."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
    return out


def _machine_busy() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _runtime_threads_cpu(before: dict[int, tuple[str, float]], runtime_tids: set[int],
                         python_names: dict[int, str]) -> dict[str, float]:
    """CPU seconds of the runtime's threads since ``before``, by role."""
    now = _task_cpu()
    roles: dict[str, float] = {}
    for tid in runtime_tids:
        if tid not in now:
            continue
        name = python_names.get(tid) or now[tid][0]
        role = {"ksdiff-io": "io thread (encode + send)", "ksdiff-engine": "engine thread (synthetic)"}.get(name)
        if role is None:
            role = "ZeroMQ I/O thread (TCP fan-out)" if name.startswith("ZMQbg/IO") else f"other ({name})"
        roles[role] = roles.get(role, 0.0) + now[tid][1] - before.get(tid, (name, 0.0))[1]
    return {k: round(v, 3) for k, v in sorted(roles.items())}


class _CpuWindow:
    """CPU used during a measured run: the whole machine (/proc/stat) and this process."""

    def __init__(self) -> None:
        self.busy0, self.process0, self.started = _machine_busy(), time.process_time(), time.monotonic()

    def stop(self) -> None:
        self.busy1, self.process_s = _machine_busy(), time.process_time() - self.process0
        self.wall_s = time.monotonic() - self.started

    def report(self, subscriber_cpu_s: float) -> dict[str, Any]:
        busy = other = None
        if self.busy0 is not None and self.busy1 is not None and self.busy1[1] > self.busy0[1]:
            cores = (self.busy1[0] - self.busy0[0]) / (self.busy1[1] - self.busy0[1]) * _cores()
            busy = round(cores, 2)
            # what the rest of the machine used meanwhile: the evidence that a run was disturbed
            other = round(max(0.0, cores - (self.process_s + subscriber_cpu_s) / self.wall_s), 2)
        return {"wall_s": round(self.wall_s, 2),
                "machine_busy_cores": busy,  # every process on the machine, this benchmark included
                "other_processes_cores": other,  # machine_busy_cores less this benchmark's processes
                "publisher_process_s": round(self.process_s, 3),  # all threads of the publishing process
                "subscriber_processes_s": round(subscriber_cpu_s, 3)}


# --- one run -----------------------------------------------------------------------------------------
def _open_streams(rt: Runtime, stream_ids: list[str]) -> None:
    """Open the streams through the ROUTER, as an SDK client does."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(rt.router_endpoint)
        for req, sid in enumerate(stream_ids):
            dealer.send(protocol.encode_request("open_stream", stream=sid, sample_rate=schema.SAMPLE_RATE,
                                                channels=1, format="f32le", req=req))
        for _ in stream_ids:
            if not dealer.poll(int(OPEN_TIMEOUT_S * 1000)):
                raise TimeoutError(f"no reply to open_stream within {OPEN_TIMEOUT_S:.0f} s")
            reply = protocol.decode(dealer.recv())
            if reply["type"] != "stream_opened":
                raise RuntimeError(f"open_stream refused: {reply}")
    finally:
        ctx.destroy(linger=0)


def _collect_results(workers: _Workers) -> dict[int, Any]:
    try:
        return workers.collect("done", DRAIN_TIMEOUT_S)
    except TimeoutError:  # a subscriber that lost a stream_end: take what it has (its misses count as drops)
        workers.stop.set()
        return workers.collect("done", RESULT_TIMEOUT_S)


def _wait_with_progress(done: Any, seconds: float, desc: str, show_progress: bool) -> None:
    """Call ``done(timeout)`` until it returns True, showing the run's progress."""
    started = time.monotonic()
    bar = _progress(seconds, desc) if show_progress else None
    while not done(0.25):
        if bar is not None:
            bar.n = round(min(seconds, time.monotonic() - started), 1)
            bar.refresh()
        if time.monotonic() - started > seconds + 60:
            raise TimeoutError("the streams did not end")
    if bar is not None:
        bar.close()


def _joined(thread: threading.Thread) -> Any:
    """``done(timeout)`` for _wait_with_progress: True once ``thread`` has finished."""

    def done(timeout: float) -> bool:
        thread.join(timeout)
        return not thread.is_alive()

    return done


def _measure_runtime(n_subscribers: int, streams: int, fps: int, frames_per_stream: int, sockets_per_process: int,
                     show_progress: bool) -> dict[str, Any]:
    """The runtime's publish path: a Runtime fed by a SyntheticEngine, streams opened over the ROUTER."""
    from ksdiff_runtime.server.runtime import Runtime

    stream_ids = [f"bench-{i}" for i in range(streams)]
    engine = SyntheticEngine(frames_per_stream, fps)
    tasks_before = _task_cpu()
    # admission off: the synthetic engine costs nothing, and every stream asked for is what is measured
    rt = Runtime(engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False).start()
    # the runtime's threads: its io and engine threads, and its ZeroMQ context's I/O thread
    runtime_tids = set(_task_cpu()) - set(tasks_before)
    python_names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    workers: _Workers | None = None
    try:
        _say(show_progress, f"{n_subscribers} subscriber(s), runtime: starting "
             f"{math.ceil(n_subscribers / sockets_per_process)} subscriber process(es), waiting for hello ...")
        workers = _Workers(rt.pub_endpoint, n_subscribers, sockets_per_process, stream_ids)
        workers.collect("ready", READY_TIMEOUT_S)
        window, tasks0 = _CpuWindow(), _task_cpu()
        _open_streams(rt, stream_ids)
        _wait_with_progress(rt.wait_until_idle, frames_per_stream / fps, f"{n_subscribers} sub, runtime",
                            show_progress)  # idle: every stream_end published
        window.stop()
        threads_cpu = _runtime_threads_cpu(tasks0, runtime_tids, python_names)
        done = _collect_results(workers)
        runtime_drops = rt.drops
    finally:
        if workers is not None:
            workers.close()
        rt.stop()
    subs = sorted((s for w in done.values() for s in w["subscribers"]), key=lambda s: s["sub"])
    result = _delivery(subs, streams, frames_per_stream)
    result.update({
        "processes": len(done),
        "runtime_drops": runtime_drops,
        "frames_emitted": engine.frames_emitted,
        # the hop is the same for every subscriber: take it from one
        "runtime_hop_ms": _ms_stats(subs[0]["hop_ns"]),
        "engine_tick_late_ms": _ms_stats(np.asarray(engine.tick_late_ns, np.int64)),
        "cpu": window.report(sum(w["cpu_s"] for w in done.values())) | {"runtime_threads_s": threads_cpu},
    })
    return result


def _floor_publisher(pub: zmq.Socket, stream_ids: list[str], frames_per_stream: int, fps: int,
                     go: threading.Event, stop: threading.Event) -> None:
    """The floor's publisher thread: hello every 0.1 s until ``go``, then the same frames as the
    runtime publishes (stamped, then clipped, gaze computed, encoded and sent, as Runtime._publish_frame
    does) on the same schedule, all from this one thread: no engine thread, outbox or io thread."""
    from ksdiff_runtime import __version__, motion

    hello = protocol.encode_hello(__version__, fps)
    while not go.wait(0.1):
        if stop.is_set():
            return
        pub.send_multipart(hello)
    rng = np.random.default_rng(0)
    period_ns = round(1e9 / fps)
    next_tick = time.monotonic_ns()
    for index in range(frames_per_stream):
        delay_s = (next_tick - time.monotonic_ns()) / 1e9
        if delay_s > 0 and stop.wait(delay_s):  # pacing, like the synthetic engine's schedule
            return
        for sid in stream_ids:
            now = time.monotonic_ns()
            bs = np.clip(rng.random(schema.NUM_BLENDSHAPES, dtype=np.float32), 0.0, 1.0)
            head = rng.uniform(-0.2, 0.2, schema.NUM_HEAD).astype(np.float32)
            pub.send_multipart(protocol.encode_frame(
                sid, index, index, fps, index / fps, bs, head, motion.gaze_from_blendshapes(bs), now, now, 0.0, 0.0,
                index == frames_per_stream - 1), flags=zmq.NOBLOCK)
        next_tick += period_ns
    for sid in stream_ids:
        pub.send_multipart(protocol.encode_stream_end(sid, "sdk", "ended", frames_per_stream, time.monotonic_ns()))


def _measure_floor(n_subscribers: int, streams: int, fps: int, frames_per_stream: int, sockets_per_process: int,
                   show_progress: bool) -> dict[str, Any]:
    """The floor: the same frames and subscribers with a bare PUB socket in one thread instead of the
    Runtime. What ZeroMQ and the subscriber processes alone cost on this machine."""
    from ksdiff_runtime.outputs.zmq import PUB_SNDHWM

    stream_ids = [f"bench-{i}" for i in range(streams)]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)  # as the Runtime's PUB
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)  # read now: from here on the socket is the thread's
    go, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_floor_publisher, name="ksdiff-floor",
                              args=(pub, stream_ids, frames_per_stream, fps, go, stop), daemon=True)
    workers: _Workers | None = None
    try:
        thread.start()
        _say(show_progress, f"{n_subscribers} subscriber(s), floor: starting "
             f"{math.ceil(n_subscribers / sockets_per_process)} subscriber process(es), waiting for hello ...")
        workers = _Workers(endpoint, n_subscribers, sockets_per_process, stream_ids)
        workers.collect("ready", READY_TIMEOUT_S)
        window = _CpuWindow()
        go.set()
        _wait_with_progress(_joined(thread), frames_per_stream / fps, f"{n_subscribers} sub, floor", show_progress)
        window.stop()
        done = _collect_results(workers)
    finally:
        stop.set()
        thread.join(timeout=5)
        if workers is not None:
            workers.close()
        ctx.destroy(linger=0)
    subs = sorted((s for w in done.values() for s in w["subscribers"]), key=lambda s: s["sub"])
    result = _delivery(subs, streams, frames_per_stream)
    result["cpu"] = window.report(sum(w["cpu_s"] for w in done.values()))
    return result


def _ms_stats(values_ns: np.ndarray) -> dict[str, float | None]:
    if values_ns.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ms = values_ns / 1e6
    return {"p50": round(float(np.percentile(ms, 50)), 4), "p90": round(float(np.percentile(ms, 90)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4), "max": round(float(ms.max()), 4)}


def _per_frame_extremes(subs: list[dict[str, Any]], frames_per_stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame published: the latency of its fastest and of its slowest subscriber (ns). The
    fastest shows when the publisher had the frame on the wire; the gap to the slowest is the
    subscribers' own share (their scheduling and decoding)."""
    keys = np.concatenate([s["stream_idx"].astype(np.int64) * (frames_per_stream + 1) + s["seq"] for s in subs])
    lat = np.concatenate([s["latency_ns"] for s in subs])
    if keys.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((lat, keys))
    keys, lat = keys[order], lat[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return lat[starts], np.maximum.reduceat(lat, starts)


def _delivery(subs: list[dict[str, Any]], streams: int, frames_per_stream: int) -> dict[str, Any]:
    """Frames received, drops and latency over all subscribers, and per subscriber."""
    expected = streams * frames_per_stream
    rows = []
    for s in subs:
        # frames never received: gaps between seqs, plus any after the last one received
        tail = sum(frames_per_stream - 1 - s["last_seq"].get(i, -1) for i in range(streams))
        rows.append({
            "sub": s["sub"], "expected": expected, "received": int(s["latency_ns"].size),
            "drops": s["seq_gaps"] + tail, "out_of_order": s["out_of_order"], "stream_ends": len(s["ended"]),
            "latency_ms": _ms_stats(s["latency_ns"]),
        })
    all_lat = np.concatenate([s["latency_ns"] for s in subs])
    fastest, slowest = _per_frame_extremes(subs, frames_per_stream)
    return {
        "frames_expected_per_subscriber": expected,
        "frames_received_min": min(r["received"] for r in rows),
        "frames_received_total": int(all_lat.size),
        "drops": sum(r["drops"] for r in rows),
        "latency_ms": _ms_stats(all_lat),
        "latency_before_decode_ms": _ms_stats(np.concatenate([s["arrival_ns"] for s in subs])),
        "fastest_subscriber_latency_ms": _ms_stats(fastest),
        "slowest_subscriber_latency_ms": _ms_stats(slowest),
        "cdf_ms": [round(float(v), 4) for v in np.percentile(all_lat / 1e6, CDF_QUANTILES)] if all_lat.size else [],
        "per_subscriber": rows,
    }


def bench_one(n_subscribers: int, *, streams: int = DEFAULT_STREAMS, fps: int = DEFAULT_FPS,
              seconds: float = DEFAULT_SECONDS, sockets_per_process: int = DEFAULT_SOCKETS_PER_PROCESS,
              floor: bool = True, show_progress: bool = False) -> dict[str, Any]:
    """One subscriber count: the runtime measured, then (``floor``) the same without the Runtime."""
    frames_per_stream = max(1, round(seconds * fps))
    load_1min = os.getloadavg()[0]
    run: dict[str, Any] = {"subscribers": n_subscribers, "sockets_per_process": sockets_per_process,
                           "load_1min_before_run": round(load_1min, 2)}
    run.update(_measure_runtime(n_subscribers, streams, fps, frames_per_stream, sockets_per_process, show_progress))
    lat = run["latency_ms"]
    run["target_met"] = bool(lat["p99"] is not None and lat["p99"] < TARGET_P99_MS and run["drops"] == 0)
    if floor:
        run["floor"] = _measure_floor(n_subscribers, streams, fps, frames_per_stream, sockets_per_process,
                                      show_progress)
        del run["floor"]["per_subscriber"]
    others = [run["cpu"]["other_processes_cores"], run.get("floor", {}).get("cpu", {}).get("other_processes_cores")]
    run["disturbed"] = any(o is not None and o > DISTURBED_CORES for o in others)
    return run


def run_publish_bench(subscribers: tuple[int, ...] = DEFAULT_SUBSCRIBERS, *, streams: int = DEFAULT_STREAMS,
                      fps: int = DEFAULT_FPS, seconds: float = DEFAULT_SECONDS,
                      sockets_per_process: int = DEFAULT_SOCKETS_PER_PROCESS, floor: bool = True,
                      show_progress: bool = False) -> dict[str, Any]:
    """Every subscriber count in turn, each with a fresh Runtime; the document of bench_one results."""
    started = time.monotonic()
    doc: dict[str, Any] = {
        "what": "publish -> receive latency of the runtime's PUB socket: a real Runtime (outbox, io thread, "
                "encode_frame, ZeroMQ PUB on 127.0.0.1) fed by a synthetic engine (no model), real SUB sockets "
                "in other processes decoding every frame. Model and end-to-end latency: `python -m benchmarks.bench`.",
        "latency_definition": "monotonic ns after protocol.decode in the subscriber - the frame's published_ns",
        "floor_definition": "the same frames, schedule and subscriber processes with a bare ZeroMQ PUB socket "
                            "in one thread instead of the Runtime: what ZeroMQ and the subscribers cost here",
        "settings": {"subscribers": list(subscribers), "streams": streams, "fps": fps, "seconds": seconds,
                     "sockets_per_process": sockets_per_process, "floor": floor, "target_p99_ms": TARGET_P99_MS},
        "machine": _machine(),
        "runs": [],
    }
    for n in subscribers:
        run = bench_one(n, streams=streams, fps=fps, seconds=seconds, sockets_per_process=sockets_per_process,
                        floor=floor, show_progress=show_progress)
        doc["runs"].append(run)
        _say(show_progress, _row(run))
    doc["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


# --- output --------------------------------------------------------------------------------------------
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _machine() -> dict[str, Any]:
    import platform

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                             cpu_model)
    except OSError:
        pass
    return {"cpu_model": cpu_model, "cpu_cores": _cores(), "platform": platform.platform(),
            "python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


def _progress(total: float, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="s", leave=False, dynamic_ncols=True,
                bar_format="{desc}: {n:.0f}/{total:.0f} s |{bar}|")


HEADER = (f"{'subs':>4} {'procs':>5} {'expected/sub':>12} {'recv min':>8} {'drops':>5} {'rt drops':>8} "
          f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'fastest p99':>11} {'hop p99':>7} "
          f"{'floor p99':>9} {'other cpu':>10}  target")


def _fmt(v: float | None, width: int) -> str:
    return f"{'-' if v is None else f'{v:.3f}':>{width}}"


def _row(run: dict[str, Any]) -> str:
    lat = run["latency_ms"]
    floor = run.get("floor", {}).get("latency_ms", {}).get("p99")
    others = [run["cpu"]["other_processes_cores"], run.get("floor", {}).get("cpu", {}).get("other_processes_cores")]
    other = "/".join("-" if o is None else f"{o:.2f}" for o in others[: 2 if "floor" in run else 1])
    return (f"{run['subscribers']:>4} {run['processes']:>5} {run['frames_expected_per_subscriber']:>12} "
            f"{run['frames_received_min']:>8} {run['drops']:>5} {run['runtime_drops']:>8} {_fmt(lat['p50'], 7)} "
            f"{_fmt(lat['p90'], 7)} {_fmt(lat['p99'], 7)} {_fmt(lat['max'], 7)} "
            f"{_fmt(run['fastest_subscriber_latency_ms']['p99'], 11)} {_fmt(run['runtime_hop_ms']['p99'], 7)} "
            f"{_fmt(floor, 9)} {other:>10}  {'met' if run['target_met'] else 'MISSED'}"
            f"{' (disturbed)' if run['disturbed'] else ''}")


def _max_other(doc: dict[str, Any]) -> float | None:
    """The most cores other processes used during any run (None: unknown)."""
    others = [c["other_processes_cores"] for r in doc["runs"] for c in (r["cpu"], r.get("floor", {}).get("cpu", {}))
              if c.get("other_processes_cores") is not None]
    return max(others) if others else None


def summary(doc: dict[str, Any]) -> str:
    s, m = doc["settings"], doc["machine"]
    other = _max_other(doc)
    lines = [
        f"publish -> receive latency: {s['streams']} streams x {s['fps']} fps, {s['seconds']:g} s per run, "
        f"up to {s['sockets_per_process']} SUB socket(s) per subscriber process; {m['cpu_cores']} cores "
        f"({m['cpu_model']}), load average {m['load_average_at_start'][0]:.2f} at start, "
        f"{m['load_average_at_end'][0]:.2f} at end"
        + ("" if other is None else f", other processes <= {other:.2f} cores during the runs"),
        "the model is replaced by a synthetic engine: only publishing is measured (model and end-to-end latency: "
        "`python -m benchmarks.bench`)",
        HEADER,
        *(_row(r) for r in doc["runs"]),
        "latency = decoded in the subscriber - published_ns (ms); fastest p99 = p99 over frames of the first "
        "subscriber to decode each frame; hop = published_ns - engine hand-over; floor = the same frames and "
        "subscribers from a bare PUB socket without the Runtime; other cpu = cores busy with other processes during "
        f"the runtime/floor run; target: p99 < {s['target_p99_ms']:g} ms and 0 drops",
    ]
    if any(r["disturbed"] for r in doc["runs"]):
        lines.append(f"(disturbed): other processes used more than {DISTURBED_CORES:g} cores during the run; rerun "
                     "on a quiet machine")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    q = np.asarray(CDF_QUANTILES, np.float64)
    target = doc["settings"]["target_p99_ms"]
    for i, run in enumerate(doc["runs"]):
        if run["cdf_ms"]:
            ax.plot(run["cdf_ms"], q, color=f"C{i}", label=f"{run['subscribers']} subscriber(s), runtime")
        if run.get("floor", {}).get("cdf_ms"):
            ax.plot(run["floor"]["cdf_ms"], q, color=f"C{i}", ls=":",
                    label=f"{run['subscribers']} subscriber(s), floor (no Runtime)")
    ax.axvline(target, color="r", lw=1.2, ls="--", label=f"target p99 {target:g} ms")
    ax.axhline(99, color="k", lw=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("publish -> decoded in subscriber (ms, log)")
    ax.set_ylabel("percentile of frames")
    ax.set_title("latency CDF, all subscribers")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)

    labels = [str(r["subscribers"]) for r in doc["runs"]]
    x = np.arange(len(labels))
    series = [("runtime p50", lambda r: r["latency_ms"]["p50"]), ("runtime p99", lambda r: r["latency_ms"]["p99"]),
              ("fastest subscriber p99", lambda r: r["fastest_subscriber_latency_ms"]["p99"]),
              ("floor p99 (no Runtime)", lambda r: r.get("floor", {}).get("latency_ms", {}).get("p99"))]
    width = 0.8 / len(series)
    for j, (name, get) in enumerate(series):
        values = [get(r) or 0.0 for r in doc["runs"]]
        bars = bx.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=name, color=f"C{j}")
        for b, v in zip(bars, values, strict=True):
            bx.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    bx.axhline(target, color="r", lw=1.2, ls="--", label=f"target p99 {target:g} ms")
    bx.set_xticks(x, labels)
    bx.set_yscale("log")
    bx.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    bx.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5, 1, 2 rather than 10^x
    bx.yaxis.set_minor_formatter(NullFormatter())
    bx.set_xlabel("subscribers")
    bx.set_ylabel("ms (log)")
    bx.set_title("publish -> decoded, per subscriber count")
    bx.grid(alpha=0.3, axis="y", which="both")
    bx.legend(fontsize=8)
    s, m = doc["settings"], doc["machine"]
    other = _max_other(doc)
    fig.suptitle(f"python -m benchmarks.publish: {s['streams']} streams x {s['fps']} fps, synthetic engine (no "
                 f"model); {m['cpu_cores']} cores"
                 + ("" if other is None else f", other processes <= {other:.2f} cores during the runs"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.publish",
        description="Benchmark the runtime's publishing alone: a real Runtime (outbox, io thread, wire protocol "
        "encoding, ZeroMQ PUB on 127.0.0.1) driven by a synthetic engine instead of the model (one frame per "
        "stream every 1/fps s), and real SUB sockets in subscriber processes that decode every frame. Then, for "
        "comparison, the same frames from a bare PUB socket without the Runtime (the floor). Reports "
        "latency p50/p90/p99/max, drops and the runtime's drop counter per subscriber count, and writes "
        "publish.json and publish.png. Model and end-to-end latency are measured by `python -m benchmarks.bench`.",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks"),
                   help="directory for publish.json and publish.png (default: benchmarks/)")
    p.add_argument("--subscribers", default=",".join(map(str, DEFAULT_SUBSCRIBERS)),
                   help="comma-separated subscriber counts, one run each (default 1,8,32)")
    p.add_argument("--streams", type=int, default=DEFAULT_STREAMS, help=f"streams (default {DEFAULT_STREAMS})")
    p.add_argument("--fps", type=int, default=DEFAULT_FPS, help=f"frames per second per stream (default {DEFAULT_FPS})")
    p.add_argument("--seconds", type=float, help=f"length of each run (default {DEFAULT_SECONDS:g}, --quick "
                                                 f"{QUICK_SECONDS:g})")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:g} s runs")
    p.add_argument("--sockets-per-process", type=int, default=DEFAULT_SOCKETS_PER_PROCESS,
                   help=f"SUB sockets per subscriber process (default {DEFAULT_SOCKETS_PER_PROCESS}; 1: every "
                        "subscriber its own process)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the floor runs (the same frames and subscribers from a bare PUB socket, without the "
                        "Runtime: what ZeroMQ and the subscribers alone cost on this machine)")
    return p


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    subscribers = tuple(int(v) for v in args.subscribers.split(",") if v.strip())
    if not subscribers or min(subscribers) < 1 or args.streams < 1 or args.fps < 1 or args.sockets_per_process < 1:
        print("error: --subscribers, --streams, --fps and --sockets-per-process must be positive", flush=True)
        return 2
    print(f"bench-publish: {args.streams} streams x {args.fps} fps, {seconds:g} s per run, subscribers "
          f"{','.join(map(str, subscribers))}; the model is replaced by a synthetic engine, so only publishing "
          "is measured", flush=True)
    if not getattr(args, "verbose", False):
        # the runtime logs every stream opened and ended: that would bury the progress lines
        logging.getLogger("ksdiff_runtime.serve").setLevel(logging.WARNING)
    print(HEADER, flush=True)
    doc = run_publish_bench(subscribers, streams=args.streams, fps=args.fps, seconds=seconds,
                            sockets_per_process=args.sockets_per_process, floor=not args.no_floor,
                            show_progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "publish.json", args.out / "publish.png"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, png_path)
    print()
    print(summary(doc))
    print(f"-> {json_path}, {png_path} ({doc['elapsed_s']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
