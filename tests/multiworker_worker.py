"""One worker of a two-process ``MultiWorkerMirroredStrategy`` job on 127.0.0.1.

Run by ``tests/test_multiworker.py`` (twice, as task 0 and task 1)::

    python tests/multiworker_worker.py CHECKPOINT TASK PORT0 PORT1 VICTIM

Each worker decodes one fixed batch with ``generate_distributed``, prints
its rows as a JSON line ``{"task": TASK, "sequences": [...]}`` and then
``ready``. Task VICTIM then waits to be killed (the test kills it once it
has printed ``ready``). The other task decodes the batch again, now with a
dead peer that never joins: it must fail with a clear error, not hang, and
prints ``{"error": type, "message": ...}``.

The batch is built from fixed numbers here and in the test (``BATCH``), so
the test can compare against single-process ``lm.generate`` itself.
"""

from __future__ import annotations

import json
import os
import sys

# Fixed inputs: 5 rows (not a multiple of the 2 replicas), varied left padding,
# per-row seeds, sampling. The test imports these.
IDS = [[3, 17, 2, 9, 30, 11], [0, 0, 5, 8, 1, 36], [0, 4, 4, 21, 7, 2],
       [0, 0, 0, 12, 19, 6], [33, 1, 14, 27, 3, 8]]
MASK = [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
SEEDS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
OPTIONS = dict(do_sample=True, top_k=10, temperature=1.0, max_new_tokens=5)


def main(checkpoint: str, task: int, ports: list[int], victim: int) -> int:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": task},
    })
    import numpy as np
    import tensorflow as tf

    import xladecode
    from xladecode.distribute import generate_distributed

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    lm = xladecode.load(checkpoint)
    ids, mask, seeds = (np.array(a, np.int32) for a in (IDS, MASK, SEEDS))

    def run():
        return generate_distributed(lm, strategy, ids, mask, seed=seeds, **OPTIONS).sequences.tolist()

    print(json.dumps({"task": task, "sequences": run()}), flush=True)
    print("ready", flush=True)
    if task == victim:
        sys.stdin.read()  # killed here by the test: it never joins the second run
        return 0
    try:
        run()
    except Exception as error:  # the point of the test: which error, and that it comes at all
        print(json.dumps({"error": type(error).__name__, "message": str(error)}), flush=True)
        return 3
    print(json.dumps({"error": None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), [int(sys.argv[3]), int(sys.argv[4])], int(sys.argv[5])))
