"""Stateless seeded sampling: distribution, reproducibility and decoder laws."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from budget import examples

from xladecode import processors, sampling
from xladecode.testing import (assert_decoders_agree, assert_return_sequences_independent, assert_row_invariance,
                               assert_sample_frequencies, assert_sampling_limits_are_greedy,
                               assert_sampling_reproducible, left_pad, next_token_logits, strategies as xst)
from xladecode.testing.reference import chi_square, chi_square_critical
from three_ways import traced_once

VOCAB, WIDTH, NEW = 37, 8, 6
SETTINGS = examples(10)
prompt = xst.prompts(VOCAB, WIDTH)
seed = xst.seeds()
CHI_ALPHA = 1e-3  # false-failure rate of each chi-square check (fixed seeds: deterministic)


def _draws(logits: np.ndarray, n: int, step: int = 0) -> np.ndarray:
    """n independent samples from one logits row: n rows, each with its own seed."""
    seeds = np.stack([np.arange(n), np.full(n, 12345)], 1).astype(np.int32)
    keys = sampling.row_keys(tf.constant(seeds), tf.zeros([n], tf.int32))
    batch = tf.constant(np.repeat(logits[None], n, 0).astype(np.float32))
    return sampling.gumbel_sample(batch, keys, tf.constant(step)).numpy()


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (5, 1.0, 0.7), (0, 0.8, 1.3), (8, 0.9, 1.0)])
def test_sample_frequencies_match_filtered_softmax(top_k, top_p, temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, 20).astype(np.float32)
    warped = processors.temperature(tf.constant(logits[None]), tf.constant(temperature))
    warped = processors.top_k(warped, tf.constant(top_k))
    warped = processors.top_p(warped, tf.constant(top_p, tf.float32)).numpy()[0]
    probs = np.exp(warped - warped.max())
    probs /= probs.sum()
    n = 40000
    counts = np.bincount(_draws(warped, n), minlength=20)
    assert (counts[probs == 0] == 0).all(), "a filtered token was sampled"
    stat, df = chi_square(counts, probs, min_expected=0)  # no pooling: every token's own bin
    critical = chi_square_critical(df, CHI_ALPHA)
    assert stat < critical, f"chi2={stat:.1f} >= {critical:.1f} (df={df})"


def test_each_step_draws_fresh_uniform_noise():
    keys = sampling.row_keys(tf.constant([[7, 9]]), tf.constant([0]))
    a = sampling.uniform(keys, tf.constant(0), 5000).numpy()
    b = sampling.uniform(keys, tf.constant(1), 5000).numpy()
    assert 0 < a.min() and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.02 and abs(np.corrcoef(a[0], b[0])[0, 1]) < 0.05
    counts = np.histogram(a, bins=10, range=(0, 1))[0]
    stat, df = chi_square(counts, np.full(10, 0.1), min_expected=0)
    assert stat < chi_square_critical(df, CHI_ALPHA)


def test_row_stream_depends_only_on_seed_and_sample_index():
    seeds = tf.constant([[1, 2], [3, 4], [1, 2]])
    keys = sampling.row_keys(seeds, tf.constant([0, 0, 1])).numpy()
    alone = sampling.row_keys(tf.constant([[1, 2]]), tf.constant([0])).numpy()
    assert keys[0] == alone[0] and keys[0] != keys[2] and keys[0] != keys[1]


@SETTINGS
@given(b=xst.prompt_batches(VOCAB, WIDTH, max_rows=3, fill_rows=3), s=seed)
def test_same_seed_same_tokens_with_and_without_xla(law, b, s):
    kw = dict(max_new_tokens=NEW, do_sample=True, top_k=0, seed=s, eos_token_id=5, pad_token_id=0)
    assert_sampling_reproducible(law.xla, b.input_ids, b.attention_mask, **kw)
    assert_decoders_agree(law.eager, law.xla, b.input_ids, b.attention_mask, logits=law.logits, noise=law.noise,
                          what="sampling without XLA", **kw)


@SETTINGS
@given(target=prompt, others=st.lists(prompt, max_size=2), extra_pad=st.integers(0, 4), s=seed)
def test_sampled_row_ignores_batch_position_padding_and_neighbours(law, target, others, extra_pad, s):
    """Alone, left-padded, and last in a batch whose other rows have other seeds: the same sample."""
    assert_row_invariance(law.xla, target, pad_to=min(len(target) + extra_pad, WIDTH), neighbours=others,
                          position=len(others), batch_width=WIDTH, fill_rows=3,
                          neighbour_seed=lambda i: (i + 99, 7), logits=law.logits, noise=law.noise,
                          max_new_tokens=NEW, do_sample=True, top_k=0, seed=s, eos_token_id=5, pad_token_id=0)


@SETTINGS
@given(b=xst.prompt_batches(VOCAB, WIDTH, min_rows=3, max_rows=3), s=seed)
def test_top_k_1_and_temperature_0_are_greedy(law, b, s):
    # temperature -> 0: logits/T plus Gumbel noise (|g| < 17.4 for our 24-bit
    # uniforms) can only differ from argmax where the raw top-2 gap < 17.4 * T.
    assert_sampling_limits_are_greedy(law.xla, b.input_ids, b.attention_mask, logits=law.logits,
                                      cold_temperature=1e-5, noise_span=17.4, max_new_tokens=NEW, seed=s,
                                      eos_token_id=5, pad_token_id=0)


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (5, 1.0, 0.7), (0, 0.6, 1.3)])
def test_decoder_sample_frequencies_match_filtered_softmax(law, top_k, top_p, temperature):
    """The decoder end to end (model, warpers, sampler): 4000 first-token samples of one prompt."""
    assert_sample_frequencies(law.xla, law.logits, [3, 14, 15, 9], draws=4000, seed=(11, 12), top_k=top_k,
                              top_p=top_p, temperature=temperature, alpha=CHI_ALPHA, eos_token_id=[],
                              pad_token_id=0)


@SETTINGS
@given(rows=st.lists(prompt, min_size=3, max_size=3), s=seed, n=st.integers(1, 3),
       sample=st.booleans())
def test_no_repeat_ngram_output_never_repeats(law_lm, rows, s, n, sample):
    ids, mask = left_pad(rows, WIDTH)
    out = law_lm.generate(ids, mask, max_new_tokens=NEW, no_repeat_ngram_size=n, do_sample=sample,
                           seed=s, eos_token_id=[], pad_token_id=0).sequences
    for i, row in enumerate(rows):
        text = list(row) + out[i, WIDTH:].tolist()
        grams = [tuple(text[j:j + n]) for j in range(len(text) - n + 1)]
        new_grams = grams[max(0, len(row) - n + 1):]  # n-grams that end in a generated token
        seen = grams[:max(0, len(row) - n + 1)]
        for j, g in enumerate(new_grams):
            assert g not in seen + new_grams[:j], f"repeated {n}-gram {g} in {text}"


@SETTINGS
@given(rows=st.lists(prompt, min_size=3, max_size=3), s=seed, m=st.integers(1, NEW))
def test_min_new_tokens_delays_eos(law_lm, rows, s, m):
    ids, mask = left_pad(rows, WIDTH)
    frequent = _frequent(law_lm)
    out = law_lm.generate(ids, mask, max_new_tokens=NEW, min_new_tokens=m, do_sample=True, seed=s,
                           eos_token_id=frequent, pad_token_id=0).sequences[:, WIDTH:]
    assert not np.isin(out[:, :m], frequent).any()


@SETTINGS
@given(rows=st.lists(prompt, min_size=3, max_size=3), s=seed, sample=st.booleans())
def test_bad_words_never_appear(law_lm, rows, s, sample):
    ids, mask = left_pad(rows, WIDTH)
    free = law_lm.generate(ids, mask, max_new_tokens=NEW, do_sample=sample, seed=s, eos_token_id=[],
                            pad_token_id=0).sequences[:, WIDTH:]
    single = int(free[0, 0])
    pair = [int(free[1, 1]), int(free[1, 2])]  # a bigram the model did produce
    out = law_lm.generate(ids, mask, max_new_tokens=NEW, do_sample=sample, seed=s, eos_token_id=[],
                           pad_token_id=0, bad_words_ids=[[single], pair]).sequences
    for i, row in enumerate(rows):
        text = list(row) + out[i, WIDTH:].tolist()
        assert single not in out[i, WIDTH:]
        for j in range(len(row), len(text)):
            assert text[j - 1:j + 1] != pair, f"bad bigram {pair} generated in {text}"


def _frequent(lm):
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, WIDTH)).astype(np.int32)
    new = lm.generate(ids, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).sequences[:, WIDTH:]
    return [int(t) for t in np.argsort(-np.bincount(new.ravel(), minlength=VOCAB), kind="stable")[:2]]


def test_option_values_do_not_recompile(law_lm):
    ids, mask = left_pad([[1, 2, 3], [4, 5]], 5)
    base = dict(max_new_tokens=4, do_sample=True, pad_token_id=0)
    law_lm.generate(ids, mask, seed=(0, 0), **base)
    before = law_lm.compile_count
    for i, opts in enumerate([
        dict(temperature=0.5), dict(top_k=3), dict(top_p=0.5), dict(seed=(9, 9)),
        dict(repetition_penalty=1.7), dict(min_new_tokens=2), dict(eos_token_id=[1, 2, 3]),
        dict(eos_token_id=7), dict(no_repeat_ngram_size=2), dict(suppress_tokens=[4, 6]),
        dict(forced_eos_token_id=3), dict(temperature=0.0, top_k=0, top_p=0.3),
    ]):
        law_lm.generate(ids, mask, **(base | {"seed": (i, 1)} | opts))
    assert law_lm.compile_count == before, "an option value triggered a recompile"
    law_lm.generate(ids, mask, **(base | {"max_new_tokens": 30}))  # same buffer bucket (32): no compile
    assert law_lm.compile_count == before
    law_lm.generate(ids, mask, **(base | {"max_new_tokens": 33}))  # a new buffer (48 = 64 - 16) does compile
    assert law_lm.compile_count == before + 1


def test_num_return_sequences_gives_distinct_reproducible_samples(law_lm, law):
    ids, mask = left_pad([[1, 2, 3], [4, 5]], 5)
    kw = dict(max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=(5, 6), eos_token_id=[],
              pad_token_id=0)
    out = law_lm.generate(ids, mask, **kw).sequences
    assert out.shape == (6, 11)
    np.testing.assert_array_equal(out[0, :5], out[2, :5])  # grouped by prompt
    assert len({tuple(r) for r in out[:3, 5:].tolist()}) > 1
    # Return sequence j of a prompt is the same whatever nrs is (its own stream).
    kw.pop("num_return_sequences")
    assert_return_sequences_independent(law.xla, ids, mask, counts=(2, 3), **kw)


def test_scores_are_processed_logprobs_of_chosen_tokens(law_lm, law):
    ids, mask = left_pad([[1, 2, 3], [9, 8, 7, 6]], 4)
    for kw in (dict(), dict(do_sample=True, temperature=0.7, top_k=0, seed=(3, 4))):
        out = law_lm.generate(ids, mask, max_new_tokens=5, eos_token_id=[], pad_token_id=0,
                               output_scores=True, **kw)
        t = kw.get("temperature", 1.0)
        for i in range(2):
            prompt = ids[i][mask[i] == 1].tolist()
            new = out.sequences[i, 4:].tolist()
            for j, tok in enumerate(new):
                logits = next_token_logits(law.logits, prompt, temperature=t)(new[:j])
                want = logits[tok] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
                assert abs(out.scores[i, j] - want) < 1e-4


def test_sampling_is_not_greedy(law_lm):
    """Guard against a sampler that silently returns argmax."""
    ids, mask = left_pad([[1, 2, 3]] * 3, 3)
    greedy = law_lm.generate(ids, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=0).sequences
    seeds = np.asarray([[i, 0] for i in range(3)])
    sampled = law_lm.generate(ids, mask, max_new_tokens=6, do_sample=True, top_k=0, temperature=1.5,
                               seed=seeds, eos_token_id=[], pad_token_id=0).sequences
    assert not (sampled == greedy).all()
    assert len({tuple(r) for r in sampled.tolist()}) > 1


WARP_V = 700


@tf.function(jit_compile=True)
def _warp(logits, k, p, t):
    from xladecode.decoding import DecodeOptions
    options = DecodeOptions.off(WARP_V, top_k=k, top_p=p, temperature=t)
    from xladecode.decoding import warp_logits
    return warp_logits(logits, options)


@examples(30)
@given(k=st.sampled_from([0, 1, 2, 40, 255, 256, 257, 600, 700, 900]),
       p=st.sampled_from([1.0, 0.95, 0.5, 0.05]), t=st.sampled_from([1.0, 0.7]),
       seed_=st.integers(0, 1000), ties=st.booleans())
def test_fast_top_k_path_equals_full_sort(k, p, t, seed_, ties):
    """The partial-sort path of warp_logits keeps exactly the tokens of the full filters."""
    rng = np.random.default_rng(seed_)
    logits = rng.normal(0, 3, (3, WARP_V)).astype(np.float32)
    if ties:
        logits = np.round(logits)  # many exact ties, also at the k-th score
    got = _warp(tf.constant(logits), tf.constant(k), tf.constant(p, tf.float32),
                tf.constant(t, tf.float32)).numpy()
    want = processors.temperature(tf.constant(logits), tf.constant(t))
    want = processors.top_p(processors.top_k(want, tf.constant(k)), tf.constant(p)).numpy()
    scaled = logits / t
    pool_edge = -np.sort(-scaled, axis=1)[:, 255]
    for row in range(3):
        g, w = np.isfinite(got[row]), np.isfinite(want[row])
        if 0 < k <= 256 and w.sum() > g.sum():
            # The documented edge case (decoding.warp_logits): survivors tied with
            # the 256th score outside the candidate pool are dropped.
            dropped = w & ~g
            assert (scaled[row][dropped] == pool_edge[row]).all(), "dropped a token that is not an edge tie"
            assert (g <= w).all()
        else:
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(got[row][g], want[row][g])
    assert traced_once(_warp)
