"""``MultiWorkerMirroredStrategy`` for real: two worker processes on 127.0.0.1.

Both workers get exactly the rows of single-process ``lm.generate``; then
one worker is killed at a known point and the other fails with a clear
error instead of hanging.

Synchronisation is by markers, never by time: a worker prints its rows and
``ready`` after the first job; the victim then blocks on stdin (so the
survivor's second job cannot finish without it) until the test kills it.
The survivor's collective then fails as soon as gRPC sees the dead peer.
The only clock is a watchdog that kills every worker if the test hangs, so
a regression fails the test (with the workers' stderr) instead of blocking
the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from multiworker_worker import IDS, MASK, OPTIONS, SEEDS

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "multiworker_worker.py"
VICTIM = 1  # task 0 is the collective and coordination leader: the survivor keeps them
WATCHDOG_S = 900  # safety net only (generous for a starved machine): a hang fails instead of blocking


def _free_ports(n: int) -> list[int]:
    """Ports the kernel hands out for port 0 (held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_equal_one_process_and_a_dead_worker_fails_the_other(tiny_lm, tiny_dir, tmp_path):
    ports = _free_ports(2)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    logs = [open(tmp_path / f"worker{task}.err", "w+") for task in (0, 1)]
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(tiny_dir), str(task), *map(str, ports),
                                 str(VICTIM)], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=logs[task], text=True) for task in (0, 1)]
    watchdog = threading.Timer(WATCHDOG_S, lambda: [w.kill() for w in workers])
    watchdog.start()
    try:
        # The single-process reference, computed while the workers start up.
        expected = tiny_lm.generate(np.array(IDS), np.array(MASK), seed=np.array(SEEDS), **OPTIONS).sequences
        victim, survivor = workers[VICTIM], workers[1 - VICTIM]
        victim_rows = victim.stdout.readline()
        assert victim.stdout.readline() == "ready\n", _stderr(logs)
        victim.kill()  # at a known point: after its first job, before it joins the second
        victim.wait()
        out, _ = survivor.communicate()
    finally:
        watchdog.cancel()
        for w in workers:
            w.kill()
            w.wait()
    lines = out.splitlines()
    assert len(lines) == 3 and lines[1] == "ready", (out, _stderr(logs))

    for rows in (json.loads(victim_rows), json.loads(lines[0])):
        np.testing.assert_array_equal(np.array(rows["sequences"]), expected)
    assert expected.shape == (5, 11)  # 5 rows over 2 replicas: the padding row was dropped

    failure = json.loads(lines[2])
    assert survivor.returncode == 3, (out, _stderr(logs))
    assert failure["error"] == "UnavailableError", failure
    assert failure["message"].startswith("distributed generate failed: a worker of the job died"), failure
    assert f"/job:worker/replica:0/task:{VICTIM}" in failure["message"], failure


def _stderr(logs) -> str:
    text = []
    for log in logs:
        log.flush()
        log.seek(0)
        text.append(log.read()[-3000:])
    return "\n---\n".join(text)
