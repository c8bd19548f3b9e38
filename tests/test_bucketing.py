"""Shape bucketing: varied calls share compiled graphs, and results do not change."""

import numpy as np
from hypothesis import given, settings, strategies as st

import pytest

from laws import assert_same_sample, assert_same_tokens, left_pad
from xladecode.lm import LanguageModel, bucket


def test_bucket_rounds_up_to_powers_of_two():
    assert [bucket(n, 8) for n in (1, 8, 9, 16, 17, 100)] == [8, 8, 16, 16, 32, 128]
    assert [bucket(n, 1) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def test_mixed_calls_compile_once_per_bucket(tiny_dir):
    import xladecode
    lm = xladecode.load(tiny_dir)
    rng = np.random.default_rng(0)
    keys = set()
    for _ in range(40):
        batch, length, new = int(rng.integers(1, 5)), int(rng.integers(1, 14)), int(rng.integers(1, 14))
        ids = rng.integers(0, 37, (batch, length)).astype(np.int32)
        out = lm.generate(ids, max_new_tokens=new, do_sample=True, temperature=float(rng.choice([0, 0.5, 1.5])),
                          top_k=int(rng.integers(0, 10)), top_p=float(rng.uniform(0.5, 1)),
                          repetition_penalty=float(rng.uniform(0.8, 1.5)), seed=(int(rng.integers(9)), 1))
        assert out.sequences.shape == (batch, length + new)
        keys.add((bucket(batch, 1), bucket(length, 8), bucket(new, 8)))
    print(f"40 mixed calls -> {lm.compile_count} compiles for {len(keys)} buckets")
    assert lm.compile_count == len(keys) < 40


@pytest.fixture(scope="module")
def exact_lm(tiny_dir):
    import xladecode
    lm = xladecode.load(tiny_dir)
    lm.bucket_shapes = False
    return lm


@settings(max_examples=6, deadline=None, derandomize=True)
@given(rows=st.lists(st.lists(st.integers(0, 36), min_size=1, max_size=11), min_size=1, max_size=3),
       new=st.integers(1, 10), sample=st.booleans())
def test_bucketing_changes_no_result(tiny_lm, exact_lm, rows, new, sample):
    exact = exact_lm
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=new, do_sample=sample, top_k=0, seed=(3, 4), eos_token_id=5, pad_token_id=0)
    got = tiny_lm.generate(ids, mask, **kw).sequences
    want = exact.generate(ids, mask, **kw).sequences
    assert got.shape == want.shape == (len(rows), ids.shape[1] + new)
    for i, row in enumerate(rows):
        if not sample:
            assert_same_tokens(tiny_lm, row, got[i, ids.shape[1]:], want[i, ids.shape[1]:], "bucketing")
        else:
            assert_same_sample(tiny_lm, row, got[i, ids.shape[1]:], want[i, ids.shape[1]:], (3, 4))


def test_compiled_functions_are_bounded_lru(tiny_dir):
    """A long-running process keeps at most max_compiled_functions graphs; the least
    recently used is dropped (and recompiled if it comes back)."""
    import xladecode
    lm = xladecode.load(tiny_dir)
    lm.max_compiled_functions = 2
    ids = np.ones([1, 3], np.int32)
    for new in (4, 12, 4, 20):  # buffers 8, 16, 8 (reused, now most recent), 32
        lm.generate(ids, max_new_tokens=new)
    assert len(lm._compiled) == 2 and lm.compile_count == 3
    lm.generate(ids, max_new_tokens=4)  # still cached (the 16-buffer graph was dropped)
    assert lm.compile_count == 3
    lm.generate(ids, max_new_tokens=12)  # was evicted: compiles again
    assert lm.compile_count == 4
