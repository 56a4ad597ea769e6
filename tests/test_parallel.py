"""Parts run at once (ksdiff_runtime.parallel): results in order, every part done before an error is raised."""

from __future__ import annotations

import threading

import pytest

from ksdiff_runtime.parallel import row_parts, run_parts


def test_parts_cover_the_rows_in_order_and_run_on_threads_of_their_own():
    parts = row_parts(7, 3, min_rows=1)
    assert parts == [(0, 2), (2, 4), (4, 7)]
    threads: dict[int, str] = {}
    together = threading.Barrier(3)

    def part(a: int, b: int) -> list[int]:
        threads[a] = threading.current_thread().name
        together.wait(10)  # passes only when all three parts are running at once
        return list(range(a, b))

    assert [i for p in run_parts(part, parts) for i in p] == list(range(7))
    assert threads[0] == threading.current_thread().name  # the first part on the calling thread
    assert len(set(threads.values())) == 3


def test_a_failing_part_raises_once_the_others_are_done():
    done: list[int] = []
    failed = threading.Event()

    def part(a: int, b: int) -> int:
        if a == 0:
            failed.set()
            raise ValueError("part 0 failed")
        assert failed.wait(10)  # still running when part 0 fails
        done.append(a)
        return a

    with pytest.raises(ValueError, match="part 0 failed"):
        run_parts(part, [(0, 1), (1, 2)])
    assert done == [1]  # the other part finished before the error reached the caller


def test_numpys_blas_is_kept_on_one_thread_once_the_runtime_runs(monkeypatch: pytest.MonkeyPatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    from ksdiff_runtime import parallel

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    assert blas_threads()  # numpy's BLAS is loaded
    monkeypatch.setattr(parallel, "_BLAS_SET", False)  # as in a process where the runtime has not run yet
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            if blas_threads() != [2] * len(blas_threads()):
                pytest.skip("BLAS runs one thread here whatever it is asked")
            parallel.one_blas_thread()
            assert blas_threads() == [1] * len(blas_threads())
            parallel.one_blas_thread()  # once set, later calls leave it
            assert blas_threads() == [1] * len(blas_threads())
    finally:
        threadpool_limits(limits=1, user_api="blas")  # the rest of this process as the runtime keeps it
