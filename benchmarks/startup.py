"""`python -m benchmarks.startup`: where `ksdiff-runtime serve`'s start-up time goes, phase by phase.

    python -m benchmarks.startup [--runs 3] [--busy 0 2]

Each start-up is a fresh Python process that runs the real `serve()` (cli/serve.py; defaults: no source, loopback
sockets on free ports) with timestamps around its phases, and stops it (SIGINT) once it logs "ready in":

    interpreter   from the process's spawn to its first line (Python itself and site-packages)
    import        `import ksdiff_runtime.cli.serve`
    outputs       build_outputs (none asked for here)
    backend       load_backend: choosing a backend (auto; a dependency's import) and loading the model
      sessions      of which ONNX Runtime sessions made by the model's backend (the graphs' load and optimisation)
    engine        the StreamingEngine made: recogniser, voice gate and front-end threads
    warm-up       engine.warm_up: the passes a first stream touches ...
      probe         ... and the capacity probe's paced rounds (admission's measurement, docs/SERVE.md)
    runtime       Runtime.start: sockets bound, threads started
    ready         serve's own "ready in X s" (from build_engine's start to ready)
    spawn->ready  what a user waits for: from the process's spawn to "ready in"

``--busy N``: N other processes spin on the CPU (``python -c "while True: pass"``, as a game and OBS do) during the
runs of that condition; conditions alternate run by run, so a drift of the machine falls on both. Prints the table
(median and range per phase) and writes benchmarks/startup.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.live import CpuBurner, machine

OUT = Path(__file__).with_name("startup.json")
RUN_TIMEOUT_S = 300.0
PHASES = ("interpreter", "import", "outputs", "backend", "sessions", "engine", "warm-up", "probe", "runtime",
          "ready", "spawn->ready")


def child(spawned: float) -> None:
    """One start-up in this process: the real serve() with its phases timed; prints one JSON line of seconds."""
    first_line = time.time()
    times: dict[str, float] = {"interpreter": first_line - spawned}
    t = time.perf_counter()
    import logging

    import ksdiff_runtime.cli.serve as serve_mod

    times["import"] = time.perf_counter() - t
    import ksdiff_runtime.backends as backends
    from ksdiff_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ksdiff_runtime.engine.engine import StreamingEngine
    from ksdiff_runtime.server.config import ServeConfig
    from ksdiff_runtime.server.runtime import Runtime

    def timed(owner: Any, name: str, phase: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
        """``owner.name`` adds its time to ``phase`` (calls for which ``when`` holds)."""
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if when(*args, **kwargs):
                    times[phase] = times.get(phase, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)

    timed(serve_mod, "build_outputs", "outputs")
    timed(backends, "load_backend", "backend")
    timed(OnnxRuntimeBackend, "_session", "sessions")
    timed(StreamingEngine, "__init__", "engine")
    timed(StreamingEngine, "warm_up", "warm-up")
    timed(StreamingEngine, "_warm_streams", "probe", when=lambda *a, paced=False, **k: paced)
    timed(Runtime, "start", "runtime")
    ready = threading.Event()

    class Ready(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("ready in "):
                times["ready"] = float(record.args[0])  # type: ignore[index]
                times["spawn->ready"] = time.time() - spawned
                ready.set()

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ksdiff_runtime.server").addHandler(Ready())
    logging.getLogger("ksdiff_runtime.server").setLevel(logging.INFO)

    def stop_when_ready() -> None:  # serve() stops on SIGINT, as on a user's Ctrl-C
        if ready.wait(RUN_TIMEOUT_S):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=stop_when_ready, daemon=True).start()
    config = ServeConfig(pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0")
    code = serve_mod.serve(config)
    if code != 0 or not ready.is_set():
        raise SystemExit(f"serve exited with {code} (ready: {ready.is_set()})")
    # the probe's rounds are part of warm_up: shown apart, and taken out of the warm-up's own row
    times["warm-up"] -= times.get("probe", 0.0)
    times["torch_imported"] = float("torch" in sys.modules)
    print("STARTUP " + json.dumps(times), flush=True)


def one_startup() -> dict[str, float]:
    spawned = time.time()
    out = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--child", repr(spawned)],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("STARTUP ")), None)
    if line is None:
        raise RuntimeError(f"start-up failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(line.removeprefix("STARTUP "))


def summary(runs: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per phase: median, min, max."""
    return {p: [round(f(r.get(p, 0.0) for r in runs), 3) for f in (statistics.median, min, max)]  # type: ignore[operator]
            for p in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="start-ups per condition (default 3)")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2],
                        help="conditions: how many other processes spin on the CPU (default 0 and 2)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    load_before = os.getloadavg()
    runs: dict[int, list[dict[str, float]]] = {busy: [] for busy in args.busy}
    for i in range(args.runs):
        for busy in args.busy:  # alternated: a machine's drift falls on every condition
            with CpuBurner(busy):
                r = one_startup()
            runs[busy].append(r)
            print(f"run {i + 1}/{args.runs}, {busy} busy: spawn->ready {r['spawn->ready']:.2f} s "
                  f"(backend {r['backend']:.2f}, warm-up {r['warm-up']:.2f} + probe {r.get('probe', 0):.2f})",
                  flush=True)
    table = {busy: summary(rs) for busy, rs in runs.items()}
    print(f"\n{'phase':<14}" + "".join(f"{f'{b} busy: median (range) s':>32}" for b in args.busy))
    for p in PHASES:
        print(f"{p:<14}" + "".join(f"{f'{m:.2f} ({lo:.2f}-{hi:.2f})':>32}"
                                   for m, lo, hi in (table[b][p] for b in args.busy)))
    doc = {"machine": machine(), "load_before": load_before, "load_after": os.getloadavg(),
           "runs": {str(b): rs for b, rs in runs.items()}, "summary": {str(b): t for b, t in table.items()}}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
