"""Data-parallel decoding: two replicas (the CPU split into 2 logical devices) give
exactly the rows that one device gives.

Logical devices must be configured before TensorFlow initialises its
devices, which the rest of the test session has long done: the check runs in
a fresh subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import xladecode
    from xladecode.distribute import distributed, generate_distributed

    lm = xladecode.load(sys.argv[1])
    lm.max_compiled_functions = 7  # settings the distributed model must keep
    lm.defaults = lm.defaults.merged(top_p=0.9)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 37, (5, 6)).astype(np.int32)  # 5 rows: not a multiple of 2 replicas
    mask = (np.arange(6) >= np.array([[0], [2], [1], [3], [0]])).astype(np.int32)
    seeds = rng.integers(0, 2**31, (5, 2))
    report = {}
    # Greedy as temperature 0 of the sampling program (a law of test_sampling.py):
    # both cases then share one compiled program per device.
    for name, temperature in {"greedy": 0.0, "sample": 1.0}.items():
        options = dict(do_sample=True, top_k=10, seed=seeds, temperature=temperature, max_new_tokens=7)
        one = lm.generate(ids, mask, output_scores=True, **options)
        two = generate_distributed(lm, strategy, ids, mask, output_scores=True, **options)
        report[name] = {"equal": bool((one.sequences == two.sequences).all()),
                        "shape": list(two.sequences.shape),
                        "score_diff": float(np.abs(one.scores - two.scores).max())}
    d = distributed(lm, strategy)
    # Speculation: the same rows, and GPT-2's verify head (a derived copy) mirrored like the weights.
    # (Graph mode without the XLA compile: what is checked here is placement, not XLA.)
    spec = dict(do_sample=False, max_new_tokens=7, prompt_lookup_num_tokens=2, jit_compile=False)
    report["speculative"] = bool((lm.generate(ids, mask, **spec).sequences
                                  == d.generate(ids, mask, **spec).sequences).all())
    report["verify_head"] = type(d.model.derived.verify_head).__name__
    report["settings"] = [d.max_compiled_functions, d.bucket_shapes == lm.bucket_shapes,
                          d.defaults == lm.defaults, d.tokenizer is lm.tokenizer]
    weights = d.model.weights["wte.weight"]
    report["weights"] = type(weights).__name__
    report["devices"] = [v.device for v in strategy.experimental_local_results(weights)]
    print(json.dumps(report))
""")


def test_two_replicas_equal_one_device_row_for_row(tiny_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-c", _TWO_REPLICAS, str(tiny_dir)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    for name in ("greedy", "sample"):
        assert report[name]["equal"], report
        assert report[name]["shape"] == [5, 13]  # the padding row is dropped
        assert report[name]["score_diff"] < 1e-4
    assert report["settings"] == [7, True, True, True]  # the wrapped model's settings are kept
    assert report["weights"] == "MirroredVariable"
    assert report["speculative"]
    assert report["verify_head"] == "MirroredVariable"
    assert [d.rsplit(":", 2)[-2:] for d in report["devices"]] == [["CPU", "0"], ["CPU", "1"]]
