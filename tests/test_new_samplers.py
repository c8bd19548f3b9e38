"""Tests for the issue-16 samplers in xladecode.processors against transformers.

min-p, typical, epsilon and eta sampling, sequence bias and renormalisation
are each checked on hypothesis-drawn inputs against the
``transformers.generation.logits_process`` class of the same name, run three
ways (eagerly, as a graph, under XLA).  Shapes are fixed, so every compiled
function is traced once: that is also the proof that changing an option value
never recompiles.

Float32 rounding differs between TF and torch (softmax and sums run in
different orders), so draws where a probability lies within float noise of a
cut are set aside with ``assume``: there, either answer is right.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp
from budget import examples
from transformers.generation import logits_process as hf

from xladecode import sequence_bias as SB
from xladecode import truncation as T
from xladecode.decoding import DecodeOptions, warp_logits

B, L, V = 3, 12, 17
N_SEQ, SEQ_LEN = 4, 3
SETTINGS = examples(25)
KEEPS = [1, 3, V + 2]  # min_tokens_to_keep values (Python ints: compile keys)


from three_ways import ThreeWays, assert_bit_identical, assert_matches, traced_once  # noqa: E402


def _per_keep(fn):
    return {keep: ThreeWays(functools.partial(fn, min_tokens_to_keep=keep)) for keep in KEEPS}


MIN_P = _per_keep(T.min_p)
TYPICAL = _per_keep(T.typical_p)
EPSILON = _per_keep(T.epsilon_cutoff)
ETA = _per_keep(T.eta_cutoff)
TRUNCATE = ThreeWays(T.truncate)
BIAS = ThreeWays(SB.sequence_bias)
RENORM = ThreeWays(T.renormalize_logits)


def reference(processor, logits, input_ids=None):
    ids = np.zeros((logits.shape[0], 1)) if input_ids is None else input_ids
    return processor(torch.as_tensor(np.asarray(ids, np.int64)), torch.tensor(logits)).numpy()


# ---------------------------------------------------------------------------
# Strategies and float-noise guards
# ---------------------------------------------------------------------------

SCORE_GRID = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]  # ties are common
CONTINUOUS = st.floats(-8, 8, width=32, allow_subnormal=False)


@st.composite
def logits_st(draw, ties=True, neg_inf=True):
    """``[B, V]`` float32 scores; some ``-inf`` (as after top-k), never a whole row.

    ``ties=False`` draws distinct finite scores, for the rules whose tie
    handling differs from transformers (tested separately).
    """
    if ties:
        elements = st.one_of(st.sampled_from(SCORE_GRID), CONTINUOUS)
        logits = draw(hnp.arrays(np.float32, (B, V), elements=elements))
    else:
        logits = draw(hnp.arrays(np.float32, (B, V), elements=CONTINUOUS, unique=True))
    # Peaked and flat rows: with a small spread every cut falls among tokens.
    logits *= np.float32(draw(st.sampled_from([1.0, 0.25])))
    if neg_inf:
        logits[draw(hnp.arrays(bool, (B, V)))] = -np.inf
    logits[:, 0] = np.where(np.isneginf(logits).all(-1), 0.0, logits[:, 0])
    return logits


def f32(lo, hi):
    return st.floats(lo, hi, allow_subnormal=False).map(lambda x: float(np.float32(x)))


def probs64(logits):
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entropy64(probs):
    return -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), -1, keepdims=True)


def near(values, cut, tol=1e-4):
    """Some value within relative float noise of ``cut``, but not equal (broadcasting).

    Exact equality is no knife edge: it comes from tied float32 scores, which
    both libraries turn into the same probabilities.
    """
    gap = np.abs(values - cut)
    return bool(np.any((gap > 0) & (gap <= tol * np.maximum(np.abs(cut), 1e-30))))


# ---------------------------------------------------------------------------
# Truncation warpers vs transformers
# ---------------------------------------------------------------------------


@SETTINGS
@given(logits_st(), f32(0.0, 1.0))
def test_min_p_matches_transformers(logits, p):
    probs = probs64(logits)
    assume(not near(probs, p * probs.max(-1, keepdims=True)))
    ref = reference(hf.MinPLogitsWarper(p), logits)
    assert_matches(MIN_P[1](logits, np.float32(p)), ref)


@SETTINGS
@given(logits_st(ties=False), f32(0.0, 1.0), st.sampled_from(KEEPS[1:]))
def test_min_p_min_tokens_to_keep_matches_transformers(logits, p, keep):
    probs = probs64(logits)
    assume(not near(probs, p * probs.max(-1, keepdims=True)))
    ref = reference(hf.MinPLogitsWarper(p, min_tokens_to_keep=keep), logits)
    assert_matches(MIN_P[keep](logits, np.float32(p)), ref)


def _near_typical_cut(logits, mass):
    probs = probs64(logits)
    with np.errstate(divide="ignore"):
        distance = np.abs(-np.log(probs) - entropy64(probs))
    order = np.argsort(distance, axis=-1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, -1), -1)
    return near(cumulative, mass)


@SETTINGS
@given(logits_st(), f32(0.01, 0.99))
def test_typical_p_matches_transformers(logits, mass):
    assume(not _near_typical_cut(logits, mass))
    ref = reference(hf.TypicalLogitsWarper(mass), logits)
    assert_matches(TYPICAL[1](logits, np.float32(mass)), ref)


@SETTINGS
@given(logits_st(ties=False), f32(0.01, 0.99), st.sampled_from(KEEPS[1:]))
def test_typical_p_min_tokens_to_keep_matches_transformers(logits, mass, keep):
    assume(not _near_typical_cut(logits, mass))
    ref = reference(hf.TypicalLogitsWarper(mass, min_tokens_to_keep=keep), logits)
    assert_matches(TYPICAL[keep](logits, np.float32(mass)), ref)


@SETTINGS
@given(logits_st(), st.one_of(st.sampled_from([0.001, 0.01, 0.05, 0.2]), f32(0.001, 0.5)),
       st.sampled_from(KEEPS))
def test_epsilon_cutoff_matches_transformers(logits, epsilon, keep):
    # transformers keeps every token tied with the n-th best here too, so
    # the tie-heavy draws compare exactly for every min_tokens_to_keep.
    assume(not near(probs64(logits), epsilon))
    ref = reference(hf.EpsilonLogitsWarper(epsilon, min_tokens_to_keep=keep), logits)
    assert_matches(EPSILON[keep](logits, np.float32(epsilon)), ref)


@SETTINGS
@given(logits_st(), st.one_of(st.sampled_from([0.001, 0.01, 0.1, 0.3, 0.6]), f32(0.001, 0.9)),
       st.sampled_from(KEEPS))
def test_eta_cutoff_matches_transformers(logits, epsilon, keep):
    probs = probs64(logits)
    eta = np.minimum(epsilon, np.sqrt(epsilon) * np.exp(-entropy64(probs)))
    assume(not near(probs, eta))
    ref = reference(hf.EtaLogitsWarper(epsilon, min_tokens_to_keep=keep), logits)
    assert_matches(ETA[keep](logits, np.float32(epsilon)), ref)


def test_min_tokens_to_keep_keeps_the_whole_tie_group():
    # Scores 3, 2, 2, then -5s: min_p = 0.9 leaves only the 3; keeping 2
    # tokens must choose between the tied 2s. torch.topk picks one of them,
    # we keep both (as our top_k does).
    logits = np.full((B, V), -5.0, np.float32)
    logits[:, :3] = [3.0, 2.0, 2.0]
    keep2 = ThreeWays(functools.partial(T.min_p, min_tokens_to_keep=2))
    for out in keep2(logits, np.float32(0.9)):
        assert np.isfinite(out[:, :3]).all() and np.isneginf(out[:, 3:]).all()
    ref = reference(hf.MinPLogitsWarper(0.9, min_tokens_to_keep=2), logits)
    assert np.isfinite(ref).sum(-1).tolist() == [2] * B


@pytest.mark.parametrize("warper, value", [(T.min_p, 0.5), (T.typical_p, 0.5), (T.epsilon_cutoff, 0.1),
                                           (T.eta_cutoff, 0.1)])
def test_truncation_keeps_one_token_by_default(warper, value):
    # p = [.98, .0066 x 3]: each warper's rule leaves only the first token, and the default
    # min_tokens_to_keep (1, as transformers') adds none back.
    out = warper(tf.constant([[5.0, 0.0, 0.0, 0.0]]), tf.constant(value)).numpy()
    assert np.isfinite(out).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("which, warper, value", [(0, T.min_p, 0.5), (1, T.typical_p, 0.5),
                                                  (2, T.epsilon_cutoff, 0.1), (3, T.eta_cutoff, 0.1)])
def test_truncate_runs_each_warper_alone_with_its_floor(which, warper, value):
    # truncate(min_p, typical, epsilon, eta) with only one warper on is that warper, and
    # min_tokens_to_keep reaches it: keep 2 -> the two best tokens of p = [.98, .0066 x 3].
    logits = tf.constant([[5.0, 0.0, -0.1, -0.2]])
    args = [tf.constant(x) for x in (0.0, 1.0, 0.0, 0.0)]
    args[which] = tf.constant(value)
    for keep in (1, 2):
        got = T.truncate(logits, *args, min_tokens_to_keep=keep).numpy()
        np.testing.assert_array_equal(got, warper(logits, tf.constant(value), keep).numpy())
        assert np.isfinite(got).sum() == keep
    options = DecodeOptions.off(4, **{("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")[which]:
                                      tf.constant(value)})
    assert np.isfinite(warp_logits(logits, options, min_tokens_to_keep=2).numpy()).sum() == 2


def test_typical_p_one_is_off_even_when_another_warper_is_on():
    # p = [1 - 6e-9, 2e-9 x 3]: in float32 the first token alone already sums to 1.0, so running
    # typical_p with mass 1 would drop the other three. mass 1 is off: min_p's result stands.
    logits, tiny = tf.constant([[20.0, 0.0, 0.0, 0.0]]), tf.constant(1e-12)
    got = T.truncate(logits, tiny, tf.constant(1.0), tf.constant(0.0), tf.constant(0.0)).numpy()
    np.testing.assert_array_equal(got, T.min_p(logits, tiny).numpy())
    assert np.isfinite(got).all()


def test_off_values_are_bit_exact_no_ops():
    # min_p = 0, epsilon = 0, eta = 0 remove nothing even when run, and
    # truncate() with everything off (typical_p = 1) skips every warper.
    logits = np.random.default_rng(0).normal(size=(B, V)).astype(np.float32)
    logits[0, 0], logits[1, 1], logits[2, 2] = -0.0, -np.inf, -200.0
    assert_bit_identical(MIN_P[1](logits, np.float32(0.0)), logits)
    assert_bit_identical(EPSILON[1](logits, np.float32(0.0)), logits)
    assert_bit_identical(ETA[1](logits, np.float32(0.0)), logits)
    off = [np.float32(v) for v in (0.0, 1.0, 0.0, 0.0)]
    assert_bit_identical(TRUNCATE(logits, *off), logits)
    logits[2, 2] = np.nan  # skipped warpers never even look at the scores
    assert_bit_identical(TRUNCATE(logits, *off), logits)


def _hf_truncation(min_p, typical, epsilon, eta):
    """transformers' warper list for these values, as ``generate`` builds it."""
    chain = hf.LogitsProcessorList()
    if min_p > 0:
        chain.append(hf.MinPLogitsWarper(min_p))
    if typical < 1:
        chain.append(hf.TypicalLogitsWarper(typical))
    if 0 < epsilon < 1:
        chain.append(hf.EpsilonLogitsWarper(epsilon))
    if 0 < eta < 1:
        chain.append(hf.EtaLogitsWarper(eta))
    return chain


@SETTINGS
@given(logits_st(ties=False), st.sampled_from([0.0, 0.05, 0.3]), st.sampled_from([1.0, 0.5, 0.9]),
       st.sampled_from([0.0, 0.01, 0.05]), st.sampled_from([0.0, 0.02, 0.2]))
def test_truncate_chain_matches_transformers_order(logits, min_p, typical, epsilon, eta):
    ref = reference(_hf_truncation(min_p, typical, epsilon, eta), logits)
    # Knife-edge guard for a whole chain: adding a constant to every score
    # changes no probability, only the float rounding, so a draw whose answer
    # survives the shift has no cut within float noise.
    assume(np.array_equal(np.isneginf(ref), np.isneginf(reference(
        _hf_truncation(min_p, typical, epsilon, eta), logits + np.float32(0.25)))))
    outs = TRUNCATE(logits, *[np.float32(v) for v in (min_p, typical, epsilon, eta)])
    assert_matches(outs, ref)


_WARP_THEN_TRUNCATE = tf.function(
    lambda logits, options, values: T.truncate(warp_logits(logits, options), *values), jit_compile=True)


@examples(12)
@given(logits_st(ties=False, neg_inf=False), st.sampled_from([0.7, 1.0, 1.5]), st.sampled_from([0, 3, 8]),
       st.sampled_from([1.0, 0.9]), st.sampled_from([0.0, 0.1]), st.sampled_from([1.0, 0.8]),
       st.sampled_from([0.0, 0.02]))
def test_recommended_wiring_matches_generate_warper_order(logits, t, k, top_p, min_p, typical, eta):
    """temperature, top-k, top-p (decoding.warp_logits) then truncate(): generate's order."""
    chain = hf.LogitsProcessorList()
    if t != 1.0:
        chain.append(hf.TemperatureLogitsWarper(t))
    if k:
        chain.append(hf.TopKLogitsWarper(k))
    if top_p < 1:
        chain.append(hf.TopPLogitsWarper(top_p))
    chain.extend(_hf_truncation(min_p, typical, 0.0, eta))
    ref = reference(chain, logits)
    shifted = reference(chain, logits + np.float32(0.25))
    assume(np.array_equal(np.isneginf(ref), np.isneginf(shifted)))
    options = DecodeOptions.off(V, **(dict(temperature=tf.constant(t, tf.float32), top_k=tf.constant(k),
                                            top_p=tf.constant(top_p, tf.float32))))
    values = tuple(tf.constant(v, tf.float32) for v in (min_p, typical, 0.0, eta))
    out = _WARP_THEN_TRUNCATE(tf.constant(logits), options, values).numpy()
    assert traced_once(_WARP_THEN_TRUNCATE)
    assert_matches([out], ref)


# ---------------------------------------------------------------------------
# Sequence bias
# ---------------------------------------------------------------------------

BIAS_VALUES = st.one_of(f32(-4.0, 4.0), st.just(-np.inf))
SEQUENCES = st.dictionaries(st.lists(st.integers(0, 3), min_size=1, max_size=SEQ_LEN).map(tuple),
                            BIAS_VALUES, min_size=1, max_size=N_SEQ)


@st.composite
def prefixes(draw, alphabet=4):
    """Unpadded rows: ``cur_len`` real tokens, then garbage (even outside the vocab)."""
    cur_len = draw(st.one_of(st.integers(1, 3), st.integers(1, L)))
    real = draw(hnp.arrays(np.int32, (B, L), elements=st.integers(0, alphabet - 1)))
    garbage = draw(hnp.arrays(np.int32, (B, L), elements=st.integers(-3, 3 * V)))
    written = np.broadcast_to(np.arange(L) < cur_len, (B, L))
    return np.where(written, real, garbage).astype(np.int32), written.copy(), cur_len


@SETTINGS
@given(logits_st(), prefixes(), SEQUENCES)
def test_sequence_bias_matches_transformers(logits, prefix, biases):
    tokens, mask, cur_len = prefix
    ids, lengths, values = SB.pack_sequence_bias(biases, V, num_sequences=N_SEQ, max_sequence_len=SEQ_LEN)
    outs = BIAS(logits, tokens, mask, cur_len, ids, lengths, values)
    proc = hf.SequenceBiasLogitsProcessor({k: float(v) for k, v in biases.items()})
    ref = reference(proc, logits, tokens[:, :cur_len])
    for out in outs:
        np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(logits_st(neg_inf=False), SEQUENCES, st.data())
def test_sequence_bias_ignores_left_padding(logits, biases, data):
    # Each row of a left-padded batch gets what transformers gives that row
    # alone, unpadded: pad slots (here ordinary ids) never complete a prefix.
    cur_len = data.draw(st.integers(1, L))
    tokens = data.draw(hnp.arrays(np.int32, (B, L), elements=st.integers(0, 3)))
    counts = [data.draw(st.integers(1, cur_len)) for _ in range(B)]
    mask = np.zeros((B, L), bool)
    for row, count in enumerate(counts):
        mask[row, cur_len - count:cur_len] = True
    ids, lengths, values = SB.pack_sequence_bias(biases, V, num_sequences=N_SEQ, max_sequence_len=SEQ_LEN)
    outs = BIAS(logits, tokens, mask, cur_len, ids, lengths, values)
    proc = hf.SequenceBiasLogitsProcessor({k: float(v) for k, v in biases.items()})
    for row, count in enumerate(counts):
        ref = reference(proc, logits[row:row + 1], tokens[row:row + 1, cur_len - count:cur_len])
        for out in outs:
            np.testing.assert_allclose(out[row:row + 1], ref, rtol=1e-6, atol=1e-6)


def test_sequence_bias_sums_biases_on_the_same_last_token():
    ids, lengths, values = SB.pack_sequence_bias([[[2], 1.0], [[1, 2], 0.5], [[3, 1, 2], 0.25]], 5)
    tokens = np.array([[3, 1, 0], [0, 1, 0]], np.int32)
    mask = np.array([[True, True, False]] * 2)
    out = SB.sequence_bias(np.zeros((2, 5), np.float32), tokens, mask, 2, ids, lengths, values).numpy()
    np.testing.assert_array_equal(out, [[0, 0, 1.75, 0, 0], [0, 0, 1.5, 0, 0]])


def test_pack_sequence_bias_forms_and_padding():
    # The list form, later duplicates winning, as transformers' dict conversion does.
    ids, lengths, values = SB.pack_sequence_bias([[[1, 2], 1.0], [[1, 2], -2.0], [[4], 3]], 5,
                                                num_sequences=4, max_sequence_len=3)
    assert ids.tolist() == [[1, 2, 0], [4, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [2, 1, 0, 0] and values.tolist() == [-2.0, 3.0, 0.0, 0.0]
    assert ids.dtype == np.int32 and lengths.dtype == np.int32 and values.dtype == np.float32


@pytest.mark.parametrize("value, match", [
    ({}, "non-empty"),
    ([], "non-empty"),
    ("ab", "non-empty"),
    ({(): 1.0}, "non-empty tuple"),
    ({(1, 5): 1.0}, r"\[0, 5\)"),
    ({(1, -1): 1.0}, r"\[0, 5\)"),
    ({(1.0,): 1.0}, "integers"),
    ({(1,): "x"}, "real number"),
    ({(1,): float("nan")}, "real number or -inf"),
    ({(1,): float("inf")}, "real number or -inf"),
    ([[1, 2, 3]], "pair"),
])
def test_pack_sequence_bias_rejects_bad_input(value, match):
    with pytest.raises(ValueError, match=match):
        SB.pack_sequence_bias(value, 5)


def test_pack_sequence_bias_accepts_a_bare_id_and_numpy_sequences():
    ids, lengths, values = SB.pack_sequence_bias({3: -1.0}, 5)  # a bare id is a one-token sequence
    assert ids.tolist() == [[3]] and lengths.tolist() == [1] and values.tolist() == [-1.0]
    ids, lengths, _ = SB.pack_sequence_bias([[np.array([1, 2]), 2.5]], 5)
    assert ids.tolist() == [[1, 2]] and lengths.tolist() == [2]


def test_pack_sequence_bias_errors_name_the_entry():
    with pytest.raises(ValueError, match="sequence 1 contains 9"):
        SB.pack_sequence_bias({(1,): 1.0, (9,): 1.0}, 5)
    with pytest.raises(ValueError, match="bias 1 is nan"):
        SB.pack_sequence_bias({(1,): 1.0, (2,): float("nan")}, 5)


def test_sequence_bias_takes_int64_tables():
    ids, lengths, values = SB.pack_sequence_bias({(3,): -1.0, (1, 2): 2.5}, vocab_size=4)
    tokens, mask = tf.constant([[0, 1, 0]]), tf.constant([[True, True, False]])
    out = SB.sequence_bias(tf.zeros([1, 4]), tokens, mask, tf.constant(2), ids.astype(np.int64),
                           lengths.astype(np.int64), values)
    assert out.numpy().tolist() == [[0.0, 0.0, 2.5, -1.0]]


def test_pack_sequence_bias_shape_limits():
    with pytest.raises(ValueError, match="num_sequences=1"):
        SB.pack_sequence_bias({(1,): 1.0, (2,): 1.0}, 5, num_sequences=1)
    with pytest.raises(ValueError, match="max_sequence_len=1"):
        SB.pack_sequence_bias({(1, 2): 1.0}, 5, max_sequence_len=1)


# ---------------------------------------------------------------------------
# Renormalisation
# ---------------------------------------------------------------------------


@SETTINGS
@given(logits_st())
def test_renormalize_logits_matches_transformers(logits):
    ref = reference(hf.LogitNormalization(), logits)
    assert_matches(RENORM(logits), ref)
    for out in RENORM(logits):
        np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, rtol=1e-5)
