"""Tests for xladecode.processors against transformers' PyTorch processors.

Each processor is checked, on random inputs drawn by hypothesis, against the
``transformers.generation.logits_process`` class it mirrors.  Every one of our
functions runs three ways -- eagerly, as a plain ``tf.function`` graph and
under XLA -- and all three must agree with the reference.

To keep the file fast, inputs always have the same shapes (batch ``B``,
buffer ``L``, vocab ``V``, ``N_WORDS`` x ``WORD_LEN`` bad words), so each
compiled function is traced exactly once; ``ThreeWays`` asserts that after
every call, which is also the proof that changing an option value (penalty,
k, p, n-gram size, step...) never retraces.
"""

import doctest

import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp
from budget import examples
from transformers.generation import logits_process as hf

from xladecode import processors as P
from xladecode.decoding import DecodeOptions, process_logits

B, L, V = 3, 12, 17
N_WORDS, WORD_LEN = 4, 3
SETTINGS = examples(25)  # CI sees the same examples


# ---------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------


from three_ways import ThreeWays, assert_bit_identical, assert_matches  # noqa: E402  (shared with test_new_samplers.py)

RP = ThreeWays(P.repetition_penalty)
NGRAM = ThreeWays(P.no_repeat_ngram)
BAD = ThreeWays(P.bad_words)
MIN_NEW = ThreeWays(P.min_new_tokens)
SUPPRESS = ThreeWays(P.suppress_tokens)
FORCED = ThreeWays(P.forced_eos)
TEMP = ThreeWays(P.temperature)
TOP_K = ThreeWays(P.top_k)
TOP_P = ThreeWays(P.top_p)


def reference(processor, input_ids, logits):
    """Apply a transformers processor to numpy inputs; numpy float32 out."""
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
    return processor(ids, torch.tensor(logits)).numpy()


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

# Drawing many scores from a small grid makes ties (and exact zeros) common.
SCORE_GRID = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
# No subnormals: XLA:CPU flushes them to zero (1e-45 == 0 there, not in torch),
# a platform float mode and not a processor property.
SCORES = st.one_of(st.sampled_from(SCORE_GRID), st.floats(-10, 10, width=32, allow_subnormal=False))


def f32(lo, hi):
    """Python floats in [lo, hi] that are exactly representable in float32."""
    tiny = float(np.finfo(np.float32).tiny)
    return (st.floats(lo, hi, allow_subnormal=False).map(lambda x: float(np.float32(x)))
            .filter(lambda v: v == 0 or abs(v) >= tiny))


def logits_st(elements=SCORES):
    return hnp.arrays(np.float32, (B, V), elements=elements)


@st.composite
def prefixes(draw, alphabet=V):
    """An unpadded buffer: ``cur_len`` real tokens, then unwritten garbage.

    The garbage deliberately includes ids outside the vocabulary: the
    processors must never look at (or crash on) unwritten slots.
    """
    cur_len = draw(st.one_of(st.integers(1, 3), st.integers(1, L)))  # short contexts are edge cases
    real = draw(hnp.arrays(np.int32, (B, L), elements=st.integers(0, alphabet - 1)))
    garbage = draw(hnp.arrays(np.int32, (B, L), elements=st.integers(-3, 3 * V)))
    written = np.broadcast_to(np.arange(L) < cur_len, (B, L))
    return np.where(written, real, garbage).astype(np.int32), written.copy(), cur_len


@st.composite
def padded_batches(draw, alphabet):
    """Rows of different lengths, left-padded to end together at ``cur_len``.

    Pad slots hold ordinary ids from the same alphabet, so any processor that
    wrongly read them would change its answer.
    """
    cur_len = draw(st.integers(1, L))
    counts = [draw(st.one_of(st.integers(1, 2), st.integers(1, cur_len))) for _ in range(B)]
    tokens = draw(hnp.arrays(np.int32, (B, L), elements=st.integers(0, alphabet - 1)))
    mask = np.zeros((B, L), dtype=bool)
    for row, count in enumerate(counts):
        mask[row, cur_len - count : cur_len] = True
    return tokens, mask, cur_len


WORDS = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=WORD_LEN), min_size=1, max_size=N_WORDS)
EOS_IDS = st.lists(st.integers(0, V - 1), min_size=1, max_size=3, unique=True)


# ---------------------------------------------------------------------------
# Processors vs transformers
# ---------------------------------------------------------------------------


@SETTINGS
@given(logits_st(), prefixes(), st.one_of(st.just(1.0), f32(0.2, 3.0)))
def test_repetition_penalty_matches_transformers(logits, prefix, penalty):
    tokens, mask, cur_len = prefix
    outs = RP(logits, tokens, mask, np.float32(penalty))
    ref = reference(hf.RepetitionPenaltyLogitsProcessor(float(penalty)), tokens[:, :cur_len], logits)
    assert_matches(outs, ref)


@SETTINGS
@given(logits_st(), prefixes(alphabet=3), st.integers(0, 6))
def test_no_repeat_ngram_matches_transformers(logits, prefix, n):
    # A 3-letter alphabet makes repeated n-grams (and so bans) frequent.
    tokens, mask, cur_len = prefix
    outs = NGRAM(logits, tokens, mask, cur_len, n)
    if n == 0:  # disabled (transformers rejects 0 instead)
        assert_bit_identical(outs, logits)
    else:
        assert_matches(outs, reference(hf.NoRepeatNGramLogitsProcessor(n), tokens[:, :cur_len], logits))


@SETTINGS
@given(logits_st(), prefixes(alphabet=4), WORDS, st.one_of(st.none(), st.integers(0, 3)))
def test_bad_words_matches_transformers(logits, prefix, words, eos):
    tokens, mask, cur_len = prefix
    # Fixed [N_WORDS, WORD_LEN] packing: unused rows have length 0.
    ids, lengths = P.pack_bad_words(words, V, eos_token_id=eos, num_words=N_WORDS, max_word_len=WORD_LEN)
    outs = BAD(logits, tokens, mask, cur_len, ids, lengths)
    if lengths.sum() == 0:  # every word was the EOS id; transformers refuses an empty list
        assert_bit_identical(outs, logits)
    else:
        proc = hf.NoBadWordsLogitsProcessor(words, eos_token_id=eos)
        assert_matches(outs, reference(proc, tokens[:, :cur_len], logits))


@SETTINGS
@given(logits_st(), st.integers(1, 5), st.integers(0, 6), st.integers(0, 6), EOS_IDS)
def test_min_new_tokens_matches_transformers(logits, prompt_len, step, min_new, eos_ids):
    outs = MIN_NEW(logits, step, min_new, P.eos_mask_from_ids(eos_ids, V))
    proc = hf.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos_ids)
    assert_matches(outs, reference(proc, np.zeros((B, prompt_len + step)), logits))


@SETTINGS
@given(logits_st(), st.lists(st.integers(0, V - 1), max_size=5))
def test_suppress_tokens_matches_transformers(logits, ids):
    outs = SUPPRESS(logits, P.vocab_mask_from_ids(ids, V))
    if not ids:
        assert_bit_identical(outs, logits)
    else:
        assert_matches(outs, reference(hf.SuppressTokensLogitsProcessor(ids), np.zeros((B, 1)), logits))


@SETTINGS
@given(logits_st(), st.integers(1, 5), st.integers(0, 6), st.integers(1, 7), EOS_IDS)
def test_forced_eos_matches_transformers(logits, prompt_len, step, max_new, eos_ids):
    outs = FORCED(logits, step, max_new, P.eos_mask_from_ids(eos_ids, V))
    # transformers counts the prompt: max_length = prompt + max_new_tokens.
    proc = hf.ForcedEOSTokenLogitsProcessor(prompt_len + max_new, eos_ids)
    assert_matches(outs, reference(proc, np.zeros((B, prompt_len + step)), logits))


def test_forced_eos_sets_every_eos_to_zero_and_ignores_earlier_bans():
    eos = P.eos_mask_from_ids([2, 5], V)
    logits = np.full((B, V), -np.inf, np.float32)  # even EOS banned beforehand
    for out in FORCED(logits, 3, 4, eos):
        assert (out[:, [2, 5]] == 0).all() and np.isneginf(np.delete(out, [2, 5], axis=1)).all()


# ---------------------------------------------------------------------------
# Warpers vs transformers
# ---------------------------------------------------------------------------


@SETTINGS
@given(logits_st(), f32(0.05, 5.0))
def test_temperature_matches_transformers(logits, t):
    outs = TEMP(logits, np.float32(t))
    assert_matches(outs, reference(hf.TemperatureLogitsWarper(float(t)), np.zeros((B, 1)), logits))


@SETTINGS
@given(logits_st(st.one_of(SCORES, st.just(-np.inf))), st.integers(0, V + 5))
def test_top_k_matches_transformers(logits, k):
    outs = TOP_K(logits, k)
    if k == 0:
        assert_bit_identical(outs, logits)
    else:
        assert_matches(outs, reference(hf.TopKLogitsWarper(k), np.zeros((B, 1)), logits))


def _near_top_p_cut(logits, p, tol=1e-4):
    """True if some cumulative probability is within float noise of ``1 - p``.

    There, float32 rounding (TF and torch sum in different orders) may flip a
    token either way, so such draws are not meaningful comparisons.
    """
    s = np.sort(logits.astype(np.float64), axis=-1)
    probs = np.exp(s - s.max(axis=-1, keepdims=True))
    cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
    return bool(np.any(np.abs(cumulative - (1 - p)) < tol))


@SETTINGS
@given(logits_st(), st.one_of(st.just(1.0), f32(0.01, 0.999)))
def test_top_p_matches_transformers(logits, p):
    outs = TOP_P(logits, np.float32(p))
    if p == 1.0:
        assert_bit_identical(outs, logits)
        return
    assume(not _near_top_p_cut(logits, p))
    ref = reference(hf.TopPLogitsWarper(float(p)), np.zeros((B, 1)), logits)
    ref_kept = ~np.isneginf(ref)
    np.testing.assert_array_equal(ref[ref_kept], logits[ref_kept])
    for out in outs:
        kept = ~np.isneginf(out)
        np.testing.assert_array_equal(out[kept], logits[kept])
        # We keep everything transformers keeps ...
        assert (kept | ~ref_kept).all()
        # ... plus, at most, tokens tied with its smallest kept score: torch
        # drops an arbitrary part of a tie group straddling the cut (its sort
        # is not stable), we keep the whole group. See the top_p docstring.
        for row in range(B):
            extra = kept[row] & ~ref_kept[row]
            assert (logits[row, extra] == logits[row, ref_kept[row]].min()).all()


def test_top_p_keeps_whole_tie_group_at_the_cut():
    # Four equal tokens, p = 0.6: the cut (1 - p = 0.4) lands inside the tie,
    # after the first token (cumulative 0.25). transformers drops one of the
    # four, chosen by torch.sort's tie order; we keep all four.
    logits = np.zeros((B, V), np.float32)
    logits[:, 4:] = -np.inf
    for out in TOP_P(logits, np.float32(0.6)):
        assert np.isfinite(out[:, :4]).all() and np.isneginf(out[:, 4:]).all()
    ref = reference(hf.TopPLogitsWarper(0.6), np.zeros((B, 1)), logits)
    assert np.isfinite(ref[:, :4]).sum(axis=-1).tolist() == [3] * B


def test_disabled_warpers_are_bit_exact_no_ops():
    # -0.0, a NaN, and a score whose probability underflows to exactly 0 (which
    # transformers' warper would remove even with top_p == 1.0).
    logits = np.random.default_rng(0).normal(size=(B, V)).astype(np.float32)
    logits[0, 0], logits[1, 1], logits[2, 2] = -0.0, np.nan, -200.0
    assert_bit_identical(TOP_P(logits, np.float32(1.0)), logits)
    assert_bit_identical(TOP_K(logits, 0), logits)
    seen_ids = np.tile(np.arange(L, dtype=np.int32), (B, 1))
    assert_bit_identical(RP(logits, seen_ids, np.ones((B, L), bool), np.float32(1.0)), logits)


# ---------------------------------------------------------------------------
# Left padding
# ---------------------------------------------------------------------------


@SETTINGS
@given(
    logits_st(),
    padded_batches(alphabet=4),
    f32(0.2, 3.0),
    st.integers(1, 4),
    WORDS,
)
def test_left_padding_is_ignored(logits, batch, penalty, n, words):
    """Each padded row gives the same result as its unpadded tokens alone."""
    tokens, mask, cur_len = batch
    ids, lengths = P.pack_bad_words(words, V, num_words=N_WORDS, max_word_len=WORD_LEN)
    padded = {
        "rp": RP(logits, tokens, mask, np.float32(penalty)),
        "ngram": NGRAM(logits, tokens, mask, cur_len, n),
        "bad": BAD(logits, tokens, mask, cur_len, ids, lengths),
    }
    for row in range(B):
        real = tokens[row][mask[row]]  # the row without padding
        row_logits = logits[row : row + 1]
        refs = {
            "rp": hf.RepetitionPenaltyLogitsProcessor(float(penalty)),
            "ngram": hf.NoRepeatNGramLogitsProcessor(n),
            "bad": hf.NoBadWordsLogitsProcessor(words),
        }
        # Our own unpadded run: the same tokens left-aligned in a fresh buffer.
        unpadded_tokens = np.zeros((1, L), np.int32)
        unpadded_tokens[0, : len(real)] = real
        unpadded_mask = np.arange(L)[None, :] < len(real)
        ours_unpadded = {
            "rp": P.repetition_penalty(row_logits, unpadded_tokens, unpadded_mask, np.float32(penalty)),
            "ngram": P.no_repeat_ngram(row_logits, unpadded_tokens, unpadded_mask, len(real), n),
            "bad": P.bad_words(row_logits, unpadded_tokens, unpadded_mask, len(real), ids, lengths),
        }
        for name, outs in padded.items():
            ref = reference(refs[name], real[None, :], row_logits)
            assert_matches([out[row : row + 1] for out in outs], ref)
            assert_matches([ours_unpadded[name].numpy()], ref)


def test_repetition_penalty_ignores_pad_id_unlike_transformers():
    # Pad id 0 sits in slot 0; only ids 1 and 3 are real.
    logits = np.array([[2.0, -2.0, 1.0, 4.0]], np.float32)
    tokens = np.array([[0, 1, 3, 0]], np.int32)
    mask = np.array([[False, True, True, False]])
    out = P.repetition_penalty(logits, tokens, mask, np.float32(2.0)).numpy()
    np.testing.assert_array_equal(out, [[2.0, -4.0, 1.0, 2.0]])
    ref = reference(hf.RepetitionPenaltyLogitsProcessor(2.0), tokens[:, :3], logits)
    assert ref[0, 0] == 1.0  # transformers penalises the pad id too


def test_no_repeat_ngram_windows_do_not_span_padding():
    # Row: [pad 1 2] + real "3 1 2". Were padding counted, the 3-gram "1 2 3"
    # would exist and "1 2" would ban 3.
    tokens = np.array([[1, 2, 3, 1, 2, 0]], np.int32)
    mask = np.array([[False, False, True, True, True, False]])
    out = P.no_repeat_ngram(np.zeros((1, 5), np.float32), tokens, mask, 5, 3).numpy()
    assert np.isfinite(out).all()
    mask[0, :2] = True  # now "1 2 3" is real and 3 is banned
    out = P.no_repeat_ngram(np.zeros((1, 5), np.float32), tokens, mask, 5, 3).numpy()
    assert np.isneginf(out).tolist() == [[False, False, False, True, False]]


def test_bad_word_prefix_longer_than_the_row_never_matches():
    # Word "1 1 2" needs two context tokens. Row 0 has only one real token
    # (slot 0); row 1 has one real token after a pad that holds 1.
    ids, lengths = P.pack_bad_words([[1, 1, 2]], V)
    tokens = np.array([[1, 9, 9], [1, 1, 9]], np.int32)
    mask = np.array([[True, False, False], [False, True, False]])
    zeros = np.zeros((1, V), np.float32)
    for row, cur_len in [(0, 1), (1, 2)]:
        out = P.bad_words(zeros, tokens[row : row + 1], mask[row : row + 1], cur_len, ids, lengths)
        assert np.isfinite(out.numpy()).all()
    mask[1, 0] = True  # now "1 1" is real context and 2 is banned
    out = P.bad_words(zeros, tokens[1:], mask[1:], 2, ids, lengths).numpy()
    assert np.flatnonzero(np.isneginf(out)).tolist() == [2]


# ---------------------------------------------------------------------------
# Bad-words packing, zero words, validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 1), (0, WORD_LEN)])
def test_bad_words_with_zero_words_is_a_no_op(shape):
    logits = np.random.default_rng(1).normal(size=(B, V)).astype(np.float32)
    tokens = np.ones((B, L), np.int32)
    mask = np.ones((B, L), bool)
    fn = ThreeWays(P.bad_words)  # its own: these shapes differ from BAD's
    outs = fn(logits, tokens, mask, L, np.zeros(shape, np.int32), np.zeros(shape[:1], np.int32))
    assert_bit_identical(outs, logits)


def test_pack_bad_words_drops_single_token_eos_like_generate():
    ids, lengths = P.pack_bad_words([[5], [5, 6], [7]], V, eos_token_id=[5])
    assert ids.tolist() == [[5, 6], [7, 0]] and lengths.tolist() == [2, 1]
    ids, lengths = P.pack_bad_words([[5]], V, eos_token_id=5)
    assert ids.shape == (0, 1) and lengths.shape == (0,)
    assert ids.dtype == lengths.dtype == np.int32


@pytest.mark.parametrize(
    "words, match",
    [
        ([], r"`bad_words_ids`.*non-empty"),
        ("12", r"`bad_words_ids`.*non-empty list"),
        ([3, 4], r"`bad_words_ids`.*list of lists"),
        ([[1], []], r"`bad_words_ids`.*empty word at index 1.*\[0, 17\)"),
        ([[1, 17]], r"`bad_words_ids`.*token id 17 .*\[0, 17\)"),
        ([[-1]], r"`bad_words_ids`.*token id -1 .*\[0, 17\)"),
        ([[1.0]], r"`bad_words_ids`.*integer"),
        ([[True]], r"`bad_words_ids`.*integer"),
    ],
)
def test_pack_bad_words_validation(words, match):
    with pytest.raises(ValueError, match=match):
        P.pack_bad_words(words, V)


def test_pack_bad_words_padding_limits():
    with pytest.raises(ValueError, match="num_words=1"):
        P.pack_bad_words([[1], [2]], V, num_words=1)
    with pytest.raises(ValueError, match="max_word_len=1"):
        P.pack_bad_words([[1, 2]], V, max_word_len=1)


@pytest.mark.parametrize(
    "fn, ids, match",
    [
        (P.eos_mask_from_ids, 17, r"`eos_token_id`.*17.*\[0, 17\)"),
        (P.eos_mask_from_ids, [1, -2], r"`eos_token_id`.*-2.*\[0, 17\)"),
        (P.eos_mask_from_ids, [1.5], r"`eos_token_id`.*integer"),
        (P.vocab_mask_from_ids, [0, 40], r"`ids`.*40.*\[0, 17\)"),
        (P.vocab_mask_from_ids, [True], r"`ids`.*integer"),
    ],
)
def test_mask_validation(fn, ids, match):
    with pytest.raises(ValueError, match=match):
        fn(ids, V)


def test_masks_from_ids():
    assert P.eos_mask_from_ids(None, 4).tolist() == [False] * 4
    assert P.eos_mask_from_ids(np.array([3, 3, 0]), 4).tolist() == [True, False, False, True]
    assert P.vocab_mask_from_ids([], 3).dtype == bool
    with pytest.raises(ValueError, match="vocab_size"):
        P.vocab_mask_from_ids([0], 0)


def test_docstring_examples():
    result = doctest.testmod(P, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 15


# ---------------------------------------------------------------------------
# The composed chain the decoder runs (decoding.process_logits)
# ---------------------------------------------------------------------------


def _chain_without_skips(logits, tokens, token_mask, cur_len, step, o):
    """Every processor applied unconditionally, in transformers' order: the reference."""
    logits = P.repetition_penalty(logits, tokens, token_mask, o.repetition_penalty)
    logits = P.no_repeat_ngram(logits, tokens, token_mask, cur_len, o.no_repeat_ngram_size)
    logits = P.bad_words(logits, tokens, token_mask, cur_len, o.bad_words_ids, o.bad_words_lengths)
    logits = P.min_new_tokens(logits, step, o.min_new_tokens, o.eos_mask)
    logits = P.suppress_tokens(logits, o.suppress_mask)
    forced = P.forced_eos(logits, step, o.max_new_tokens, o.forced_eos_mask)
    return tf.where(tf.reduce_any(o.forced_eos_mask), forced, logits)


_PROCESS_XLA = tf.function(process_logits, jit_compile=True)


@SETTINGS
@given(
    logits=logits_st(),
    prefix=prefixes(alphabet=4),
    penalty=st.sampled_from([1.0, 1.5, 0.7]),
    n=st.sampled_from([0, 1, 2, 3]),
    min_new=st.sampled_from([0, 3]),
    step=st.integers(0, 4),
    suppress=st.lists(st.integers(0, V - 1), max_size=3),
    forced=st.lists(st.integers(0, V - 1), max_size=2),
    words=st.sampled_from([None, [[2], [3, 4]]]),
)
def test_skipping_off_processors_changes_nothing(logits, prefix, penalty, n, min_new, step, suppress,
                                                 forced, words):
    """process_logits skips processors whose option is off; the result equals running them all."""
    tokens, token_mask, cur_len = prefix
    eos = P.eos_mask_from_ids([5], V)
    if words is None:
        bad_ids, bad_lengths = np.zeros([0, 1], np.int32), np.zeros([0], np.int32)
    else:
        bad_ids, bad_lengths = P.pack_bad_words(words, V)
    options = DecodeOptions.off(V, **(dict(
        max_new_tokens=tf.constant(5), eos_mask=tf.constant(eos), min_new_tokens=tf.constant(min_new),
        forced_eos_mask=tf.constant(P.vocab_mask_from_ids(forced, V)),
        suppress_mask=tf.constant(P.vocab_mask_from_ids(suppress, V)),
        repetition_penalty=tf.constant(penalty, tf.float32), no_repeat_ngram_size=tf.constant(n),
        bad_words_ids=tf.constant(bad_ids), bad_words_lengths=tf.constant(bad_lengths))))
    args = (tf.constant(logits), tf.constant(tokens), tf.constant(token_mask), tf.constant(cur_len),
            tf.constant(step), options)
    want = _chain_without_skips(*args).numpy()
    np.testing.assert_array_equal(process_logits(*args).numpy(), want)
    np.testing.assert_array_equal(_PROCESS_XLA(*args).numpy(), want)


# ---------------------------------------------------------------------------
# Hand-worked edge cases (mutation run 2, tools/results/mutation.md)
# ---------------------------------------------------------------------------


def _banned(out):
    """The ids scored ``-inf`` in each row, as lists."""
    return [np.flatnonzero(np.isneginf(row)).tolist() for row in np.asarray(out)]


@pytest.mark.parametrize(
    "tokens, mask, cur_len, n, banned",
    [
        # n == 0 disables, even where every window would otherwise be open.
        ([1, 2, 3], [1, 1, 1], 3, 0, []),
        # Context "1": the only window "1 2" bans 2; 1 and 3 stay allowed.
        ([1, 2, 3, 1, 0], [1, 1, 1, 1, 0], 4, 2, [2]),
        # Context "4 2": "2 3" exists but follows 5, not 4, so nothing is banned ...
        ([5, 2, 3, 4, 2], [1, 1, 1, 1, 1], 5, 3, []),
        # ... while after "4 2 3" the same context bans 3.
        ([4, 2, 3, 4, 2], [1, 1, 1, 1, 1], 5, 3, [3]),
        # A full buffer (cur_len == L): the context token is in the last slot.
        ([1, 2, 1], [1, 1, 1], 3, 2, [2]),
        # n == 1 with a single real token, in the last slot after padding.
        ([7, 7, 3], [0, 0, 1], 3, 1, [3]),
    ],
)
def test_no_repeat_ngram_hand_worked(tokens, mask, cur_len, n, banned):
    out = P.no_repeat_ngram(np.zeros((1, 8), np.float32), np.array([tokens], np.int32),
                            np.array([mask], bool), cur_len, n)
    assert _banned(out) == [banned]


def test_bad_words_context_in_the_last_slot_of_a_full_buffer():
    # cur_len == L: the word "1 3" needs the token in slot L - 1 (1), not slot L - 2 (2).
    ids, lengths = P.pack_bad_words([[1, 3]], 5)
    tokens, mask = np.array([[2, 1]], np.int32), np.ones((1, 2), bool)
    assert _banned(P.bad_words(np.zeros((1, 5), np.float32), tokens, mask, 2, ids, lengths)) == [[3]]
    tokens = np.array([[1, 2]], np.int32)  # ends in 2: nothing to ban but the never-matching word
    assert _banned(P.bad_words(np.zeros((1, 5), np.float32), tokens, mask, 2, ids, lengths)) == [[]]


def test_out_of_vocab_ids_are_ignored():
    # An embedding vocab larger than the output layer (V = 4): the real ids 4, 5
    # and 9 have no score to penalise; only id 1 is penalised.
    logits = np.array([[2.0, -2.0, 1.0, 4.0]], np.float32)
    tokens = np.array([[1, 4, 5, 9]], np.int32)
    out = P.repetition_penalty(logits, tokens, np.ones((1, 4), bool), np.float32(2.0)).numpy()
    np.testing.assert_array_equal(out, [[2.0, -4.0, 1.0, 4.0]])


def test_repetition_penalty_divides_a_zero_score_even_by_an_infinite_penalty():
    # A score of 0 is non-negative, so it is divided (0 / inf = 0), like transformers;
    # multiplying it would give 0 * inf = NaN.
    logits = np.array([[0.0, -1.0, 2.0, 3.0]], np.float32)
    tokens, mask = np.array([[0, 1, 2]], np.int32), np.ones((1, 3), bool)
    out = P.repetition_penalty(logits, tokens, mask, np.float32(np.inf)).numpy()
    np.testing.assert_array_equal(out, [[0.0, -np.inf, 0.0, 3.0]])
    ref = reference(hf.RepetitionPenaltyLogitsProcessor(float("inf")), tokens, logits)
    np.testing.assert_array_equal(ref, out)


def test_step_per_row():
    # Speculative decoding: each row has its own step.
    eos = np.array([False, True, False])
    ones = np.ones((2, 3), np.float32)
    out = P.min_new_tokens(ones, np.array([0, 3], np.int32), 2, eos).numpy()
    np.testing.assert_array_equal(out, [[1.0, -np.inf, 1.0], [1.0, 1.0, 1.0]])
    out = P.forced_eos(ones, np.array([1, 3], np.int32), 4, eos).numpy()
    np.testing.assert_array_equal(out, [[1.0, 1.0, 1.0], [-np.inf, 0.0, -np.inf]])


def test_processors_take_numpy_int64_ids_and_01_masks():
    # Host inputs as users build them: np.array ids are int64, scalars may be
    # np.int64, and masks may be 0/1 integers (like transformers' attention_mask).
    # Every processor converts them to int32 / bool itself.
    i64, zeros, ones = np.int64, np.zeros((1, 5), np.float32), np.ones((1, 5), np.float32)
    tokens, mask = np.array([[1, 2, 1]]), np.array([[1, 1, 1]])
    assert tokens.dtype == mask.dtype == np.int64
    assert P.per_row(i64(3), tokens).numpy().tolist() == [3]
    assert P.per_row(i64(3), tokens).dtype == tf.int32
    # "1 2" already occurred, so after "1" the token 2 is banned.
    assert _banned(P.no_repeat_ngram(zeros, tokens, mask, i64(3), i64(2))) == [[2]]
    # The context ends in 1: "1 2" bans 2, "4" is always banned, "2 3" does not apply.
    words, lengths = np.array([[1, 2], [4, 0], [2, 3]]), np.array([2, 1, 2])
    assert _banned(P.bad_words(zeros, tokens, mask, i64(3), words, lengths)) == [[2, 4]]
    eos = np.array([0, 1, 0, 0, 0])
    np.testing.assert_array_equal(P.min_new_tokens(ones, i64(0), i64(2), eos), [[1, -np.inf, 1, 1, 1]])
    np.testing.assert_array_equal(P.min_new_tokens(ones, i64(2), i64(2), eos), ones)
    np.testing.assert_array_equal(P.forced_eos(ones, i64(3), i64(4), eos), [[-np.inf, 0, -np.inf, -np.inf, -np.inf]])
    np.testing.assert_array_equal(P.forced_eos(ones, i64(2), i64(4), eos), ones)
    np.testing.assert_array_equal(P.suppress_tokens(ones, np.array([1, 0, 0, 1, 0])), [[-np.inf, 1, 1, -np.inf, 1]])
    scores = np.array([[1.0, 3.0, 2.0, 0.0, -1.0]], np.float32)
    np.testing.assert_array_equal(P.top_k(scores, i64(2)), [[-np.inf, 3.0, 2.0, -np.inf, -np.inf]])


def test_processors_keep_the_logits_dtype():
    # neg_inf is "of the logits' dtype"; every processor builds its scores from
    # the logits' dtype, so float64 logits stay float64.
    for dtype in (tf.float16, tf.bfloat16, tf.float64):
        value = P.neg_inf(tf.zeros([1, 2], dtype))
        assert value.dtype == dtype and np.isneginf(float(value))
    logits = np.ones((1, 3), np.float64)
    eos = np.array([False, True, False])
    out = P.forced_eos(logits, 3, 4, eos)
    assert out.dtype == tf.float64
    np.testing.assert_array_equal(out, [[-np.inf, 0.0, -np.inf]])
    out = P.suppress_tokens(logits, eos)
    assert out.dtype == tf.float64
    np.testing.assert_array_equal(out, [[1.0, -np.inf, 1.0]])


def test_pack_bad_words_accepts_numpy_words():
    ids, lengths = P.pack_bad_words([np.array([1, 2]), [3]], V)
    assert ids.tolist() == [[1, 2], [3, 0]] and lengths.tolist() == [2, 1]


# Probabilities .125 .125 .25 .5 from scores -2 ln2, -2 ln2, -ln2, 0: float32
# exp rounds exp(-ln2) and exp(-2 ln2) to exactly .5 and .25, so the cumulative
# sums are exactly .125 .25 .5 1 (the other V - 4 scores are -inf, probability 0).
_LN2 = np.float32(np.log(2))
_DYADIC = np.full((B, V), -np.inf, np.float32)
_DYADIC[:, :4] = [-2 * _LN2, 0.0, -_LN2, -2 * _LN2]


def test_top_p_cut_exactly_on_a_cumulative_sum():
    # The premise: softmax of these scores is exact.
    np.testing.assert_array_equal(tf.nn.softmax(_DYADIC[:1, :4]), [[0.125, 0.5, 0.25, 0.125]])
    # transformers removes tokens whose cumulative probability is <= 1 - p, so a
    # cut that lands exactly on a cumulative sum removes that token too.
    for p, kept in [(0.5, [1]), (0.75, [1, 2])]:  # 1 - p = .5 and .25 exactly
        for out in TOP_P(_DYADIC, np.float32(p)):
            assert [np.flatnonzero(np.isfinite(row)).tolist() for row in out] == [kept] * B
        ref = reference(hf.TopPLogitsWarper(p), np.zeros((B, 1)), _DYADIC)
        assert [np.flatnonzero(np.isfinite(row)).tolist() for row in ref] == [kept] * B


def test_top_p_zero_keeps_only_the_maximum():
    # p == 0: every cumulative sum is <= 1 (the last one exactly), so all V
    # positions count as removed and the top token must be kept regardless.
    for out in TOP_P(_DYADIC, np.float32(0.0)):
        np.testing.assert_array_equal(out[:, 1], 0.0)
        assert np.isneginf(np.delete(out, 1, axis=1)).all()
    tied = np.full((B, V), -np.inf, np.float32)
    tied[:, [3, 8]] = 2.0  # cumulative .5, 1: a tie for the maximum is kept whole
    for out in TOP_P(tied, np.float32(0.0)):
        assert [np.flatnonzero(np.isfinite(row)).tolist() for row in out] == [[3, 8]] * B


def test_vocab_size_must_be_a_positive_integer_and_id_arrays_are_flattened():
    from xladecode.processors import check_vocab_size, vocab_mask_from_ids

    assert check_vocab_size(1) == 1 and check_vocab_size(np.int64(7)) == 7
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="vocab_size"):
            check_vocab_size(bad)
    # A numpy array of any rank is a list of ids.
    assert vocab_mask_from_ids(np.array([[1, 2], [3, 3]]), 5).tolist() == [False, True, True, True, False]
    assert vocab_mask_from_ids(np.array([4]), 5).tolist() == [False, False, False, False, True]


@pytest.mark.parametrize("keep", [1, 3, 9])
def test_top_k_and_top_p_floor_matches_transformers(keep):
    # min_tokens_to_keep as transformers' warpers take it (beam sampling passes EOS ids + 1);
    # 9 is more than the vocabulary of 7: every token stays.
    logits = np.random.default_rng(keep).normal(size=[4, 7]).astype(np.float32)
    logits[1, 2] = -np.inf
    for k in (1, 2, 5):
        want = hf.TopKLogitsWarper(k, min_tokens_to_keep=keep)(None, torch.tensor(logits)).numpy()
        got = P.top_k(tf.constant(logits), tf.constant(k), min_tokens_to_keep=keep).numpy()
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"top_k={k}")
    for p in (0.0, 0.3, 0.9):
        want = hf.TopPLogitsWarper(p, min_tokens_to_keep=keep)(None, torch.tensor(logits)).numpy()
        got = P.top_p(tf.constant(logits), tf.constant(p), min_tokens_to_keep=keep).numpy()
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"top_p={p}")
    assert P.raised_top_k(tf.constant(2), keep).numpy() == max(2, keep)
    assert P.raised_top_k(tf.constant(0), keep).numpy() == 0  # off stays off


def test_top_p_floor_must_be_at_least_one():
    with pytest.raises(ValueError, match="min_tokens_to_keep"):
        P.top_p(tf.zeros([1, 3]), tf.constant(0.5), min_tokens_to_keep=0)
