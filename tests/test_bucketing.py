"""Shape bucketing: varied calls share compiled graphs, and results do not change."""

import numpy as np
from hypothesis import given, strategies as st
from budget import examples

import pytest

from xladecode.plan import bucket, plan_shapes
from xladecode.testing import assert_decoders_agree, from_language_model, language_model_logits, left_pad, xladecode_noise


def test_bucket_rounds_up_to_powers_of_two():
    assert [bucket(n, 8) for n in (1, 8, 9, 16, 17, 100)] == [8, 8, 16, 16, 32, 128]
    assert [bucket(n, 1) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


@pytest.mark.parametrize("prompt, new, want", [
    (5, 3, (16, 32)),  # floors: prompt 16, buffer 32
    (17, 33, (32, 64)),
    (100, 100, (128, 128)),  # exactly n_positions
    (130, 20, (224, 32)),  # 256 + 32 do not fit: buffer kept, width fills the rest
    (60, 150, (64, 192)),  # 64 + 256 do not fit: width kept, buffer fills the rest
    (150, 100, (150, 106)),  # neither fits: exact width, buffer fills the rest
    (255, 1, (255, 1)),
])
def test_buckets_near_the_position_limit(prompt, new, want):
    plan = plan_shapes(batch=3, prompt_len=prompt, max_new_tokens=new, max_positions=256)
    assert (plan.width, plan.buffer, plan.compiled_batch) == (*want, 4)
    assert plan.width >= prompt and plan.buffer >= new and plan.width + plan.buffer <= 256


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
        keys.add(lm.prepare(ids, max_new_tokens=new).compile_key[:3])
    print(f"40 mixed calls -> {lm.compile_count} compiles for {len(keys)} buckets")
    assert lm.compile_count == len(keys) < 40


@pytest.fixture(scope="module")
def exact_lm(tiny_dir):
    import xladecode
    lm = xladecode.load(tiny_dir)
    lm.bucket_shapes = False
    return lm


@examples(6)
@given(rows=st.lists(st.lists(st.integers(0, 36), min_size=1, max_size=11), min_size=1, max_size=3),
       new=st.integers(1, 10), sample=st.booleans())
def test_bucketing_changes_no_result(tiny_lm, exact_lm, rows, new, sample):
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=new, do_sample=sample, top_k=0, seed=(3, 4), eos_token_id=5, pad_token_id=0)
    got, want = assert_decoders_agree(from_language_model(tiny_lm), from_language_model(exact_lm), ids, mask,
                                      logits=language_model_logits(tiny_lm), noise=xladecode_noise,
                                      what="bucketing", **kw)
    assert got.tokens.shape == want.tokens.shape == (len(rows), new)


def test_compiled_functions_are_bounded_lru(tiny_dir):
    """A long-running process keeps at most max_compiled_functions graphs; the least
    recently used is dropped (and recompiled if it comes back)."""
    import xladecode
    lm = xladecode.load(tiny_dir)
    lm.max_compiled_functions = 2
    for batch in (1, 2, 1, 4):  # batch buckets 1, 2, 1 (reused, now most recent), 4
        lm.generate(np.ones([batch, 3], np.int32), max_new_tokens=4)
    assert len(lm.functions) == 2 and lm.compile_count == 3
    lm.generate(np.ones([1, 3], np.int32), max_new_tokens=4)  # still cached (batch 2 was dropped)
    assert lm.compile_count == 3
    lm.generate(np.ones([2, 3], np.int32), max_new_tokens=4)  # was evicted: compiles again
    assert lm.compile_count == 4
