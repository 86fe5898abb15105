"""The codec pool serves the earliest deadline first, hands errors to the future and cancels
queued jobs at shutdown."""

import threading

import pytest

from omni.engine.codec_pool import CodecPool


def _blocked_pool():
    """A one-worker pool whose worker is held by a first job until the returned event is set."""
    pool = CodecPool(1)
    release, started = threading.Event(), threading.Event()
    pool.submit(lambda: (started.set(), release.wait(10)), deadline=0.0)
    assert started.wait(10)
    return pool, release


def test_earliest_deadline_runs_first_and_ties_keep_submission_order():
    pool, release = _blocked_pool()
    ran = []
    futures = [pool.submit(lambda name=name: ran.append(name), deadline=deadline)
               for name, deadline in (("later chunk", 30.0), ("first chunk b", 5.0), ("dry soonest", 20.0),
                                      ("first chunk a", 5.0 - 1e-9), ("first chunk c", 5.0))]
    assert pool.pending() == 5
    release.set()
    for future in futures:
        future.result(timeout=10)
    assert ran == ["first chunk a", "first chunk b", "first chunk c", "dry soonest", "later chunk"]
    pool.shutdown(wait=True)


def test_a_failing_job_reaches_its_future_and_the_worker_goes_on():
    pool = CodecPool(1)

    def fail():
        raise ValueError("window failed")

    failed = pool.submit(fail, deadline=1.0)
    with pytest.raises(ValueError, match="window failed"):
        failed.result(timeout=10)
    assert pool.submit(lambda: 42, deadline=2.0).result(timeout=10) == 42
    pool.shutdown(wait=True)


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones():
    pool, release = _blocked_pool()
    queued = pool.submit(lambda: "never", deadline=1.0)
    pool.shutdown(wait=False)
    assert queued.cancelled()
    release.set()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None, deadline=0.0)
