"""--replica-pin-cores: which cores a replica of a given local rank gets, and that pinning reaches
every thread of the process (not only the caller, which is all os.sched_setaffinity(0) pins)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from omni.server.replicas import replica_cores


def test_each_local_rank_gets_its_own_cores():
    allowed = [0, 1, 2, 3, 5, 7]  # a node that withholds cores 4 and 6
    assert replica_cores(0, 1, allowed) == [0]
    assert replica_cores(1, 1, allowed) == [1]
    assert replica_cores(1, 2, allowed) == [2, 3]
    assert replica_cores(2, 2, allowed) == [5, 7]
    assert replica_cores(3, 2, allowed) is None  # no cores left for this rank: the replica runs unpinned
    assert replica_cores(-1, 1, allowed) is None  # no rank known
    ranks = [replica_cores(rank, 2, allowed) for rank in range(3)]
    assert len({core for cores in ranks for core in cores}) == 6  # disjoint


def test_pinning_reaches_threads_started_before_and_after():
    core = max(os.sched_getaffinity(0))
    script = textwrap.dedent(f"""
        import os, threading, time
        from omni.server.replicas import pin_process
        stop = threading.Event()
        before = threading.Thread(target=stop.wait); before.start()
        pin_process([{core}])
        after = threading.Thread(target=stop.wait); after.start()
        time.sleep(0.1)
        tasks = os.listdir("/proc/self/task")
        masks = set(frozenset(os.sched_getaffinity(int(task))) for task in tasks)
        stop.set(); before.join(); after.join()
        print(len(tasks), sorted(map(sorted, masks)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    tasks, masks = out.stdout.split(" ", 1)
    assert int(tasks) >= 3, out.stdout  # the main thread and both waiting threads were looked at
    assert masks.strip() == f"[[{core}]]", out.stdout
