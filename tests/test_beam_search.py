"""Beam search: parity with transformers, laws (hypothesis), beam sampling, compile keys, and
hand-worked examples on a scripted table model.

Compile budget: every distinct (batch, prompt width, max_new_tokens,
num_beams, num_return_sequences, number of EOS ids, do_sample, jit) is one
trace / XLA compile, so each test keeps its shapes fixed and lets hypothesis
vary only values (prompt contents, lengths inside the fixed width, batch
composition, length_penalty, early_stopping, EOS id values).

The tie rule for beams is ``xladecode.testing.assert_same_beams``: two runs
that should agree may still return different hypotheses in a slot when float
rounding reorders near-equal scores; that is accepted only if the two
hypotheses' ``sequences_scores`` agree within ``BEAM_TIE``. Any other
difference is a bug.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import given, strategies as st
from budget import examples

import xladecode
from checkpoints import make_checkpoint
from scripted import TableModel
from xladecode import beam_search as bs, sampling
from xladecode.decoding import DecodeOptions, stop_string_fields
from xladecode.lm import LanguageModel
from xladecode.options import EarlyStopping
from xladecode.stop_strings import tables_from_vocab
from xladecode.testing import (BEAM_TIE, SCORE_ATOL, assert_beam_equals_brute_force,
                               assert_beam_scores_are_logprobs, assert_decoders_agree, assert_one_beam_equals_greedy,
                               assert_row_invariance, assert_same_beams, assert_sampling_reproducible,
                               check_pad_after_eos, end_of, from_language_model, language_model_logits,
                               language_model_one_beam, left_pad, strategies as xst)
from xladecode.testing.reference import brute_force_beams, log_softmax

SETTINGS = examples(10)
EARLY = [True, False, "never"]
PENALTIES = [-1.0, 0.0, 1.0, 2.0]


def assert_well_formed(new, eos: set[int], pad: int, max_new: int):
    """After a hypothesis' first EOS only pad follows (finished beams are never extended)."""
    new = np.asarray(new)
    assert new.shape[1] == max_new
    check_pad_after_eos(new, eos, pad)


# =====================================================================
# 1. Parity with transformers (PyTorch) beam search
# =====================================================================

P_VOCAB, P_NEW, P_PAD = 41, 8, 1  # pad 1, not 0: transformers fills with EOS when pad_token_id is 0
P_LENGTHS = (7, 2, 5)
P_WIDTH = max(P_LENGTHS)

# (num_beams, num_return_sequences, length_penalty, early_stopping): every
# value of each appears; only 4 distinct (num_beams, nrs) shapes are compiled.
# For these prompts, in every combo with length_penalty > 0, another
# early_stopping value would return other beams, so the mode is really tested
# (checked by test_parity_combos_cover_early_eos_and_max_length).
COMBOS = [
    (2, 2, 2.0, False),
    (2, 2, 0.0, True),
    (3, 2, -1.0, "never"),
    (3, 2, 2.0, False),
    (3, 2, 1.0, True),
    (2, 2, 2.0, "never"),  # here "never" (max-length bound) and False really differ
    (4, 2, 0.0, False),
    (4, 4, 1.0, "never"),
]


def _combo_id(c):
    return f"beams{c[0]}-nrs{c[1]}-lp{c[2]:g}-early{c[3]}"


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """A random GPT-2 (transformers) and the same checkpoint in xladecode, plus a frequent EOS id."""
    folder = tmp_path_factory.mktemp("beam_parity")
    ref = make_checkpoint(folder, n_layer=2, n_head=2, n_embd=24, vocab_size=P_VOCAB, n_positions=64,
                          seed=3, eos_token_id=3)
    lm = xladecode.load(folder)
    rng = np.random.default_rng(0)
    rows = [[int(t) for t in rng.integers(0, P_VOCAB, n)] for n in P_LENGTHS]
    ids, mask = left_pad(rows, P_WIDTH, pad_id=P_PAD)
    # EOS = the token a free greedy run emits most often, so it fires mid-way in some beams.
    free = lm.generate(ids, mask, max_new_tokens=P_NEW, eos_token_id=[], pad_token_id=P_PAD).sequences
    eos = int(np.bincount(free[:, P_WIDTH:].ravel(), minlength=P_VOCAB).argmax())
    return ref, lm, ids, mask, eos


def _ours(lm, ids, mask, eos, combo, jit_compile=True):
    nb, nrs, lp, early = combo
    return lm.generate(ids, mask, max_new_tokens=P_NEW, num_beams=nb, num_return_sequences=nrs,
                       length_penalty=lp, early_stopping=early, eos_token_id=eos, pad_token_id=P_PAD,
                       output_scores=True, jit_compile=jit_compile)


@pytest.mark.parametrize("combo", COMBOS, ids=_combo_id)
def test_beam_search_matches_transformers(parity, combo):
    ref, lm, ids, mask, eos = parity
    nb, nrs, lp, early = combo
    out = _ours(lm, ids, mask, eos, combo)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                              max_new_tokens=P_NEW, num_beams=nb, num_return_sequences=nrs,
                              length_penalty=lp, early_stopping=early, do_sample=False, eos_token_id=eos,
                              pad_token_id=P_PAD, return_dict_in_generate=True, output_scores=True)
        their_token_scores = ref.compute_transition_scores(
            theirs.sequences, theirs.scores, theirs.beam_indices, normalize_logits=False).numpy()
    their_seqs = theirs.sequences.numpy()
    rows, width = len(ids) * nrs, P_WIDTH + P_NEW
    assert out.sequences.shape == (rows, width) and their_seqs.shape[0] == rows
    assert out.scores.shape == (rows, P_NEW) and out.sequences_scores.shape == (rows,)
    np.testing.assert_array_equal(out.sequences[:, :P_WIDTH], np.repeat(ids, nrs, axis=0))

    # transformers trims trailing columns that no returned hypothesis reaches; ours keeps them as pad.
    common = their_seqs.shape[1]
    assert P_WIDTH < common <= width
    their_new = np.full([rows, P_NEW], P_PAD, np.int64)
    their_new[:, :common - P_WIDTH] = their_seqs[:, P_WIDTH:]
    assert (out.sequences[:, common:] == P_PAD).all()
    assert_same_beams(out.sequences[:, P_WIDTH:], out.sequences_scores, their_new,
                      theirs.sequences_scores.numpy(), f"vs transformers {_combo_id(combo)}")
    assert_well_formed(out.sequences[:, P_WIDTH:], {eos}, P_PAD, P_NEW)

    # Per-token scores of each returned hypothesis (transformers' transition scores), 0 after its end.
    same = (out.sequences[:, P_WIDTH:] == their_new).all(axis=1)
    their_scores = np.zeros([rows, P_NEW], np.float32)
    their_scores[:, :their_token_scores.shape[1]] = their_token_scores
    np.testing.assert_allclose(out.scores[same], their_scores[same], atol=SCORE_ATOL, rtol=0)

    # jit_compile=False runs the same graph without XLA: same result (tie rule).
    plain = _ours(lm, ids, mask, eos, combo, jit_compile=False)
    assert_same_beams(plain.sequences[:, P_WIDTH:], plain.sequences_scores, out.sequences[:, P_WIDTH:],
                      out.sequences_scores, f"no XLA {_combo_id(combo)}")


def test_parity_combos_cover_early_eos_and_max_length(parity):
    """Guards the parity test against vacuity: in the combos above EOS ends some returned
    hypotheses before max_new_tokens, and others run to max_new_tokens."""
    _, lm, ids, mask, eos = parity
    early_end = reached_max = 0
    for combo in COMBOS:
        new = _ours(lm, ids, mask, eos, combo).sequences[:, P_WIDTH:]
        ends = [end_of(row, {eos}) for row in new]
        early_end += sum(e < P_NEW for e in ends)
        reached_max += sum(e == P_NEW and row[-1] != eos for e, row in zip(ends, new))
    assert early_end > 0, "EOS never fired before max_new_tokens"
    assert reached_max > 0, "no hypothesis ran to max_new_tokens"
    # ... and where length_penalty > 0 the early_stopping value matters: another value returns
    # other beams. (With length_penalty <= 0 short hypotheses win and every mode agrees here.)
    for nb, nrs, lp, mode in [c for c in COMBOS if c[2] > 0]:
        got = _ours(lm, ids, mask, eos, (nb, nrs, lp, mode)).sequences
        others = [m for m in EARLY if repr(m) != repr(mode)]
        assert any(not np.array_equal(got, _ours(lm, ids, mask, eos, (nb, nrs, lp, m)).sequences)
                   for m in others), f"early_stopping={mode!r} changes nothing in {_combo_id((nb, nrs, lp, mode))}"


# =====================================================================
# 2. Laws on the shared tiny model (vocab 37)
# =====================================================================

VOCAB = 37
WIDTH = 8  # prompt buffer width
NEW = 6
ROWS = 3  # batches are padded to ROWS prompts
NB, NRS = 3, 2

prompt = xst.prompts(VOCAB, WIDTH)
batch = st.lists(prompt, min_size=1, max_size=ROWS)
# EOS sets are indices into the model's most frequent outputs; their SIZE is a compile key.
eos_choice = st.sampled_from([(0,), (1,), (0, 1), (1, 2)])
penalty = st.sampled_from(PENALTIES)
early = st.sampled_from(EARLY)


@pytest.fixture(scope="module")
def frequent(law_lm):
    """The three tokens this model's beams produce most often from random prompts, before
    the last step (so that, as EOS, they end hypotheses early)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (ROWS, WIDTH)).astype(np.int32)
    new = _beams(law_lm, ids, np.ones_like(ids), []).sequences[:, WIDTH:-1]
    counts = np.bincount(new.ravel(), minlength=VOCAB)
    return [int(t) for t in np.argsort(-counts, kind="stable")[:3]]


def _pad_batch(rows, width=WIDTH):
    """Pads to ``width`` and to ROWS rows (repeating row 0) so shapes never change."""
    full = rows + [rows[0]] * (ROWS - len(rows))
    return left_pad(full, width, pad_id=0)


def _beams(lm, ids, mask, eos, *, num_beams=NB, nrs=NRS, max_new=NEW, pad=0, **kwargs):
    return lm.generate(ids, mask, max_new_tokens=max_new, num_beams=num_beams, num_return_sequences=nrs,
                       eos_token_id=eos, pad_token_id=pad, output_scores=True, **kwargs)


@pytest.fixture(scope="module")
def one_beam(law_lm):
    """``beam_search(num_beams=1)`` compiled with XLA, fed the options ``generate`` would build
    for a greedy call (``generate(num_beams=1)`` itself runs the greedy loop)."""
    return language_model_one_beam(law_lm)


@SETTINGS
@given(rows=batch, eos=st.sampled_from([(), (0,), (1,)]))
def test_one_beam_equals_greedy(law, frequent, one_beam, rows, eos):
    ids, mask = _pad_batch(rows)
    # length_penalty 1.0 (the default): the beam score is the mean token log-prob.
    assert_one_beam_equals_greedy(one_beam, law.xla, law.logits, ids, mask, max_new_tokens=NEW,
                                  eos_token_id=[frequent[i] for i in eos], pad_token_id=0)


@SETTINGS
@given(rows=batch, eos=eos_choice, lp=penalty, early_stopping=early)
def test_xla_equals_no_xla(law, frequent, rows, eos, lp, early_stopping):
    eos = [frequent[i] for i in eos]
    ids, mask = _pad_batch(rows)
    xla, _ = assert_decoders_agree(law.xla, law.eager, ids, mask, what="XLA vs no XLA", max_new_tokens=NEW,
                                   num_beams=NB, num_return_sequences=NRS, eos_token_id=eos, pad_token_id=0,
                                   length_penalty=lp, early_stopping=early_stopping)
    assert_well_formed(xla.tokens, set(eos), 0, NEW)


@SETTINGS
@given(rows=batch, eos=eos_choice, lp=penalty)
def test_never_stopping_early_is_never_worse(law_lm, frequent, rows, eos, lp):
    """The live beams do not depend on early_stopping; it only decides when to stop accepting
    finished hypotheses. "never" stops only when no live beam can still enter the finished set
    (an exact bound), so rank by rank its scores are >= those of True and False; with
    length_penalty <= 0 its bound is False's, so the results are identical."""
    eos = [frequent[i] for i in eos]
    ids, mask = _pad_batch(rows)
    out = {repr(m): _beams(law_lm, ids, mask, eos, length_penalty=lp, early_stopping=m) for m in EARLY}
    never = out[repr("never")].sequences_scores.reshape(ROWS, NRS)
    for mode in (True, False):
        other = out[repr(mode)].sequences_scores.reshape(ROWS, NRS)
        assert (never >= other - BEAM_TIE).all(), (mode, never, other)
    if lp <= 0:
        np.testing.assert_array_equal(out[repr("never")].sequences, out[repr(False)].sequences)


@pytest.fixture(scope="module")
def exact_lm(law_lm):
    """The tiny model without shape bucketing: a prompt alone is decoded at exactly its width."""
    return LanguageModel(law_lm.model, bucket_shapes=False)


# Alone, a prompt is decoded at its own width, one compile per width: two lengths only.
short_prompt = st.sampled_from([1, 4]).flatmap(
    lambda n: st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))


@SETTINGS
@given(target=short_prompt, others=st.lists(prompt, max_size=ROWS - 1), where=st.integers(0, ROWS - 1),
       lp=penalty, early_stopping=early)
def test_padding_and_batch_composition_invariance(law, exact_lm, frequent, target, others, where, lp,
                                                  early_stopping):
    """A prompt's beams are the same alone (unpadded, unbucketed), left-padded (to WIDTH), and
    among any neighbours (bucketing adds a filler prompt to the batch of 3)."""
    assert_row_invariance(law.xla, target, pad_to=WIDTH, neighbours=others, position=where, batch_width=WIDTH,
                          fill_rows=ROWS, alone_decode=from_language_model(exact_lm), max_new_tokens=NEW,
                          num_beams=NB, num_return_sequences=NRS, eos_token_id=[frequent[0]], pad_token_id=0,
                          length_penalty=lp, early_stopping=early_stopping)


@SETTINGS
@given(rows=batch, eos=eos_choice, lp=penalty, early_stopping=early)
def test_sequence_scores_are_length_penalised_logprob_sums(law, frequent, rows, eos, lp, early_stopping):
    """sequences_scores = sum of the model's log-probs of the new tokens (through EOS) / new_length**lp,
    recomputed without cache; ``scores`` holds those per-token log-probs, 0 after the end."""
    ids, mask = _pad_batch(rows)
    assert_beam_scores_are_logprobs(law.xla, law.logits, ids, mask, max_new_tokens=NEW, num_beams=NB,
                                    num_return_sequences=NRS, eos_token_id=sorted(set(frequent[i] for i in eos)),
                                    pad_token_id=0, length_penalty=lp, early_stopping=early_stopping)


@SETTINGS
@given(rows=batch, eos=eos_choice, pad=st.sampled_from([0, 36]), lp=penalty, early_stopping=early)
def test_finished_hypotheses_are_never_extended(law_lm, frequent, rows, eos, pad, lp, early_stopping):
    eos = [frequent[i] for i in eos]
    ids, mask = _pad_batch(rows)
    out = _beams(law_lm, ids, mask, eos, pad=pad, length_penalty=lp, early_stopping=early_stopping)
    assert_well_formed(out.sequences[:, WIDTH:], set(eos), pad, NEW)
    assert np.isfinite(out.sequences_scores).all() and np.isfinite(out.scores).all()
    # Best first within each prompt.
    by_prompt = out.sequences_scores.reshape(ROWS, NRS)
    assert (np.diff(by_prompt, axis=1) <= 0).all(), by_prompt


def test_eos_really_fires_in_beam_laws(law_lm, frequent):
    """Guards the laws above against vacuity: some returned hypotheses end at EOS before the last step."""
    rng = np.random.default_rng(1)
    ids, mask = _pad_batch([[int(t) for t in rng.integers(0, VOCAB, 5)] for _ in range(ROWS)])
    # length_penalty 0 (one of PENALTIES): ended hypotheses compete on raw log-prob sums.
    new = _beams(law_lm, ids, mask, list(frequent), length_penalty=0.0).sequences[:, WIDTH:]
    assert any(end_of(row, set(frequent)) < NEW for row in new), new.tolist()


@SETTINGS
@given(rows=batch, eos=st.sampled_from([(0,), (1,)]), lp=penalty, early_stopping=early)
def test_one_new_token_returns_the_top_next_tokens(law_lm, frequent, rows, eos, lp, early_stopping):
    """max_new_tokens=1: the hypotheses are the top-nrs next tokens by log-prob, best first."""
    eos = [frequent[i] for i in eos]
    ids, mask = _pad_batch(rows)
    out = _beams(law_lm, ids, mask, eos, nrs=NB, max_new=1, length_penalty=lp, early_stopping=early_stopping)
    logp = log_softmax(law_lm.logits(ids, mask, jit_compile=False)[:, -1])
    want = np.argsort(-logp, axis=-1, kind="stable")[:, :NB]
    got = out.sequences[:, WIDTH].reshape(ROWS, NB)
    for i in range(ROWS):
        want_scores = logp[i, want[i]]
        assert_same_beams(got[i][:, None], out.sequences_scores[i * NB:(i + 1) * NB], want[i][:, None],
                          want_scores, f"prompt {i}")
        np.testing.assert_allclose(out.sequences_scores[i * NB:(i + 1) * NB], want_scores, atol=SCORE_ATOL)


# --------------------------------------------------------------- brute force

BF_VOCAB, BF_EOS, BF_PAD = 4, 3, 0
BF_WIDTH, BF_NEW, BF_BEAMS, BF_NRS = 4, 3, 64, 3


@pytest.fixture(scope="module")
def micro_lm(tmp_path_factory):
    """A checkpoint whose whole continuation tree is small enough to enumerate."""
    folder = tmp_path_factory.mktemp("beam_micro")
    make_checkpoint(folder, n_layer=1, n_head=1, n_embd=8, vocab_size=BF_VOCAB, n_positions=16, seed=5,
                    eos_token_id=BF_EOS, std=1.0)
    return xladecode.load(folder)


def _brute_force(lm, target, lp):
    """Every hypothesis with its exact score ``sum logprob / new_length**lp``, best first."""
    return brute_force_beams(language_model_logits(lm), target, vocab_size=BF_VOCAB, max_new_tokens=BF_NEW,
                             eos=[BF_EOS], length_penalty=lp, pad=BF_PAD, width=BF_WIDTH + BF_NEW - 1)


def test_brute_force_enumerates_every_hypothesis(micro_lm):
    """Sanity of the enumeration itself: 1 + 3 + 9 EOS-ended and 9 * 4 full-length hypotheses."""
    hyps = _brute_force(micro_lm, [1, 2], 1.0)
    assert len(hyps) == 1 + 3 + 9 * 4 == len({seq for _, seq in hyps})


@examples(8)
@given(rows=st.lists(st.lists(st.integers(0, BF_VOCAB - 1), min_size=1, max_size=BF_WIDTH),
                     min_size=2, max_size=2),
       lp=penalty)
def test_exhaustive_beams_equal_brute_force(micro_lm, rows, lp):
    """With num_beams >= every prefix and early_stopping="never", beam search is exact search."""
    ids, mask = left_pad(rows, BF_WIDTH, pad_id=BF_PAD)
    assert_beam_equals_brute_force(from_language_model(micro_lm), language_model_logits(micro_lm), ids, mask,
                                   vocab_size=BF_VOCAB, width=BF_WIDTH + BF_NEW - 1, max_new_tokens=BF_NEW,
                                   num_beams=BF_BEAMS, num_return_sequences=BF_NRS, length_penalty=lp,
                                   early_stopping="never", eos_token_id=BF_EOS, pad_token_id=BF_PAD)


# =====================================================================
# 3. Beam sampling
# =====================================================================


def test_beam_sampling_is_reproducible_and_well_formed(law, frequent):
    rng = np.random.default_rng(2)
    rows = [[int(t) for t in rng.integers(0, VOCAB, n)] for n in (8, 3, 5)]
    ids, mask = _pad_batch(rows)
    eos = [frequent[0]]
    kw = dict(max_new_tokens=NEW, num_beams=NB, num_return_sequences=NRS, eos_token_id=eos, pad_token_id=0,
              do_sample=True)

    first = assert_sampling_reproducible(law.xla, ids, mask, seed=(1, 2), **kw)
    outs = [first] + [law.xla(ids, mask, seed=seed, **kw) for seed in [(3, 4), (5, 6), (7, 8)]]
    assert len({o.tokens.tobytes() for o in outs}) > 1, "different seeds gave the same beams"
    for o in outs:
        assert_well_formed(o.tokens, set(eos), 0, NEW)
        assert np.isfinite(o.sequence_scores).all() and np.isfinite(o.scores).all()
        assert (o.sequence_scores <= 0).all()
        # The score is the (length-penalised, default 1.0) sum of the returned per-token scores.
        lengths = np.array([end_of(row, set(eos)) for row in o.tokens])
        np.testing.assert_allclose(o.scores.sum(1) / lengths, o.sequence_scores, atol=1e-5, rtol=1e-5)


# =====================================================================
# 4. Compile keys
# =====================================================================


def test_option_values_do_not_recompile(law_lm):
    """length_penalty, early_stopping and EOS id VALUES are tensors; the NUMBER of EOS ids is a key."""
    lm = LanguageModel(law_lm.model)  # the same weights with a fresh compile cache and count
    ids, mask = left_pad([[1, 2, 3], [4]], 3)

    def run(**kw):
        return lm.generate(ids, mask, max_new_tokens=3, num_beams=2, num_return_sequences=2,
                           pad_token_id=0, **kw)

    run(eos_token_id=5)
    assert lm.compile_count == 1
    for lp, early_stopping, eos in [(0.0, True, 7), (-1.0, "never", 5), (2.0, False, 11), (1.0, True, 0)]:
        run(length_penalty=lp, early_stopping=early_stopping, eos_token_id=eos)
    assert lm.compile_count == 1
    run(eos_token_id=[5, 7])
    assert lm.compile_count == 2
    run(eos_token_id=[11, 0], length_penalty=-1.0, early_stopping="never")
    assert lm.compile_count == 2


# =====================================================================
# 5. Scripted examples: hand-worked beams on a table model (no weights)
# =====================================================================
#
# ``beam_search`` is called directly, so it runs eagerly and compiles nothing.
# Every expected array below is worked out by hand from the test's table; the
# arithmetic is in the docstrings (logs: ln .5 = -0.693, ln .4 = -0.916,
# ln .3 = -1.204, ln .2 = -1.609, ln .6 = -0.511).

FALSE, TRUE, NEVER = int(EarlyStopping.HEURISTIC), int(EarlyStopping.ON_FULL), int(EarlyStopping.NEVER)


def _scripted(model, prompts, mask=None, *, max_new, num_beams, nrs=1, eos=(), do_sample=False,
              num_eos_ids=None, **values):
    """``beam_search`` with ``DecodeOptions.off`` plus ``values`` (tensors or Python scalars);
    returns numpy ``(sequences, sequences_scores)``."""
    ids = tf.constant(prompts, tf.int32)
    mask = tf.ones_like(ids) if mask is None else tf.constant(mask, tf.int32)
    eos_mask = np.zeros(model.vocab_size, bool)
    eos_mask[list(eos)] = True
    values = {name: v if isinstance(v, tf.Tensor) else tf.constant(v) for name, v in values.items()}
    options = DecodeOptions.off(model.vocab_size, max_new_tokens=tf.constant(max_new),
                                eos_mask=tf.constant(eos_mask), **values)
    extra = {} if num_eos_ids is None else dict(num_eos_ids=num_eos_ids)
    seqs, _, scores = bs.beam_search(model, ids, mask, options, max_new, num_beams, nrs, do_sample=do_sample,
                                     **extra)
    return seqs.numpy(), scores.numpy()


def test_scripted_no_repeat_ngram_sees_only_written_tokens():
    """no_repeat_ngram_size=2 on each beam's own tokens; the unwritten slot (still pad) is not text.

    Prompt 1 2 1, pad id 4; from 1: 2 (.6), 4 (.3), EOS 3 (.1). "1 2" already occurs, so 2 is
    banned and the one new token is 4 (ln .3): pad's id is a token like any other, and the
    pad still sitting in the next slot must not count as a "1 4" bigram."""
    model = TableModel.from_rows(5, {1: {2: .6, 4: .3, 3: .1}})
    seqs, scores = _scripted(model, [[1, 2, 1]], max_new=1, num_beams=1, eos=(3,), pad_token_id=4)
    np.testing.assert_array_equal(seqs, [[1, 2, 1, 2]])  # the processor is really needed
    seqs, scores = _scripted(model, [[1, 2, 1]], max_new=1, num_beams=1, eos=(3,), pad_token_id=4,
                             no_repeat_ngram_size=2)
    np.testing.assert_array_equal(seqs, [[1, 2, 1, 4]])
    np.testing.assert_allclose(scores, [math.log(.3)], atol=1e-5)


def test_scripted_renormalize_logits_after_the_processors():
    """From 1: EOS 2 (.5), 3 (.4), 0 (.1); EOS suppressed, then renormalized: 3 scores ln(.4 / .5)."""
    model = TableModel.from_rows(4, {1: {2: .5, 3: .4, 0: .1}})
    suppress = np.array([False, False, True, False])
    for renormalize, want in [(False, math.log(.4)), (True, math.log(.8))]:
        seqs, scores = _scripted(model, [[1]], max_new=1, num_beams=1, eos=(2,), suppress_mask=suppress,
                                 renormalize_logits=renormalize)
        np.testing.assert_array_equal(seqs, [[1, 3]])
        np.testing.assert_allclose(scores, [want], atol=1e-5)


def test_scripted_beam_sampling_keeps_one_non_eos_token_per_eos_id():
    """Beam sampling with min_p=0.99 keeps min_tokens_to_keep = 1 EOS id + 1 = 2 tokens, as in
    transformers; the candidate sets below hold every kept token, so no draw matters.

    2 beams, length_penalty 2, EOS 2, 2 new tokens. From 1: EOS (.5), 3 (.3), 4 (.2): min_p keeps
    only EOS (.3 < .99 * .5), the floor adds 3, not 4. From 3 and from 4: 5 (1.0).
    step 0  EOS -0.693 (top 2: finished, -0.693 / 1**2) | 3 -1.204 (live)
    step 1  (last) 3 5: -1.204 / 2**2 = -0.301
    final   [1 3 5] -0.301, [1 EOS] -0.693   (keeping 4 too would return [1 4 5], -1.609 / 4)"""
    model = TableModel.from_rows(6, {1: {2: .5, 3: .3, 4: .2}, 3: {5: 1.0}, 4: {5: 1.0}})
    seqs, scores = _scripted(model, [[1]], max_new=2, num_beams=2, nrs=2, eos=(2,), do_sample=True,
                             min_p=0.99, length_penalty=2.0)
    np.testing.assert_array_equal(seqs, [[1, 3, 5], [1, 2, 0]])
    np.testing.assert_allclose(scores, [math.log(.3) / 4, math.log(.5)], atol=1e-5)


def test_scripted_beam_sampling_without_eos_keeps_two_tokens():
    """No EOS id: the floor is 2, as transformers' (there is nothing to end a beam, but the
    second beam still needs a token). From 1: 3 (.5), 4 (.3), 5 (.2); from 3 and 4: 5 (1.0).
    top_k=1 raised to 2 keeps 3 and 4; 2 new tokens, length_penalty 1:
    [1 3 5] ln .5 / 2 = -0.347, [1 4 5] ln .3 / 2 = -0.602."""
    model = TableModel.from_rows(6, {1: {3: .5, 4: .3, 5: .2}, 3: {5: 1.0}, 4: {5: 1.0}})
    seqs, scores = _scripted(model, [[1]], max_new=2, num_beams=2, nrs=2, do_sample=True, top_k=1,
                             num_eos_ids=0)
    np.testing.assert_array_equal(seqs, [[1, 3, 5], [1, 4, 5]])
    np.testing.assert_allclose(scores, [math.log(.5) / 2, math.log(.3) / 2], atol=1e-5)


@pytest.mark.parametrize("warper", [dict(top_k=1), dict(top_p=0.4)])
def test_scripted_beam_sampling_floor_reaches_top_k_and_top_p(warper):
    """The same floor for top-k and top-p, as transformers' TopK/TopPLogitsWarper(min_tokens_to_keep):
    top_k=1 is raised to 2; top_p=0.4 (EOS alone holds .5) keeps 3 as well. Same table and
    arithmetic as the test above. Without the floor only EOS survives from 1 and the search
    returns [1 EOS] and the empty second hypothesis."""
    model = TableModel.from_rows(6, {1: {2: .5, 3: .3, 4: .2}, 3: {5: 1.0}, 4: {5: 1.0}})
    seqs, scores = _scripted(model, [[1]], max_new=2, num_beams=2, nrs=2, eos=(2,), do_sample=True,
                             length_penalty=2.0, **warper)
    np.testing.assert_array_equal(seqs, [[1, 3, 5], [1, 2, 0]])
    np.testing.assert_allclose(scores, [math.log(.3) / 4, math.log(.5)], atol=1e-5)


def test_scripted_candidate_pool_is_one_plus_eos_ids_times_beams():
    """K = max(2, 1 + num_eos_ids) * num_beams candidates per step; a step whose K candidates all
    end (EOS or a stop string) ends the search.

    1 beam, early_stopping "never", length_penalty 2, 2 new tokens. From 1: 2 (.4), 3 (.3),
    4 (.2); from 4: 5 (1.0). Token 3 is "!".
    * EOS ids {2, 3}: K = 3: 2 finishes (-0.916), 4 lives; "never" bounds 4 at the maximum
      length, -1.609 / 2**2 = -0.402 > -0.916, so step 1 runs: [1 4 5], -1.609 / 4 = -0.402.
    * EOS id 2 and stop string "!": K = 2 (num_eos_ids=1, the default): 2 and 3 both end,
      so the search ends at once: [1 2], -0.916."""
    model = TableModel.from_rows(6, {1: {2: .4, 3: .3, 4: .2, 5: .1}, 4: {5: 1.0}})
    kw = dict(max_new=2, num_beams=1, early_stopping=NEVER, length_penalty=2.0)
    seqs, scores = _scripted(model, [[1]], eos=(2, 3), num_eos_ids=2, **kw)
    np.testing.assert_array_equal(seqs, [[1, 4, 5]])
    np.testing.assert_allclose(scores, [math.log(.2) / 4], atol=1e-5)
    tables = tables_from_vocab([b"a", b"b", b"c", b"!", b"d", b"e"], ["!"])
    seqs, scores = _scripted(model, [[1]], eos=(2,), **stop_string_fields(tables), **kw)
    np.testing.assert_array_equal(seqs, [[1, 2, 0]])
    np.testing.assert_allclose(scores, [math.log(.4)], atol=1e-5)


def test_scripted_stop_strings_end_candidates_on_their_own_text():
    """Stop strings "aec" and "bd"; tokens 0..5 read a b c d e z; EOS 5 ("z"), pad 0 ("a").
    1 beam, length_penalty 1, 2 new tokens.

    row 0  prompt [pad, e]: text "e" (left padding is not text, so "aec" cannot complete).
           From e: c (.6), d (.3): no hit; step 1: c -> z (1.0): [e c z], -0.511 / 2 = -0.255.
    row 1  prompt [c, b]: from b: d (.5) completes "bd" (the candidate's new token is checked):
           finished, -0.693; c (.3) lives but -1.204 < -0.693: no better hypothesis can come.
           [c b d], -0.693."""
    model = TableModel.from_rows(6, {1: {3: .5, 2: .3, 5: .2}, 4: {2: .6, 3: .3, 5: .1}, 2: {5: 1.0}, 3: {1: 1.0}})
    tables = tables_from_vocab([b"a", b"b", b"c", b"d", b"e", b"z"], ["aec", "bd"])
    seqs, scores = _scripted(model, [[0, 4], [2, 1]], [[0, 1], [1, 1]], max_new=2, num_beams=1, eos=(5,),
                             **stop_string_fields(tables))
    np.testing.assert_array_equal(seqs, [[0, 4, 2, 5], [2, 1, 3, 0]])
    np.testing.assert_allclose(scores, [math.log(.6) / 2, math.log(.5)], atol=1e-5)


# The early-stopping examples share one table. EOS 1, pad 0.
#   2 -> EOS .5, 3 .4, 8 .1      3 -> 4 (1.0)      5 -> EOS .5, 3 .5 (a tie)
#   6 -> 7 .6, 8 .4              7 -> 7 (1.0)      8 -> 8 (1.0)
#   9 -> EOS .5, 10 .3, 11 .2    10 -> EOS .6, 12 .4     11 -> 12 (1.0)     12 -> EOS (1.0)
@pytest.fixture(scope="module")
def stopping():
    return TableModel.from_rows(13, {2: {1: .5, 3: .4, 8: .1}, 3: {4: 1.0}, 5: {1: .5, 3: .5}, 6: {7: .6, 8: .4},
                           7: {7: 1.0}, 8: {8: 1.0}, 9: {1: .5, 10: .3, 11: .2}, 10: {1: .6, 12: .4},
                           11: {12: 1.0}, 12: {1: 1.0}})


def test_scripted_early_stopping_bounds_at_current_or_maximum_length(stopping):
    """1 beam from [2], length_penalty 1, 2 new tokens.
    step 0  EOS -0.693 finishes (top 1); 3 lives with -0.916.
    False:   best possible at the current length: -0.916 / 1 < -0.693: stop.   [2 EOS], -0.693
    True:    the finished set (1 beam) is full: stop.                          [2 EOS], -0.693
    "never": at the maximum length: -0.916 / 2 = -0.458 > -0.693: go on; step 1 (last):
             3 -> 4: -0.916 / 2 = -0.458 beats -0.693.                         [2 3 4], -0.458"""
    for mode, seq, score in [(FALSE, [2, 1, 0], math.log(.5)), (TRUE, [2, 1, 0], math.log(.5)),
                             (NEVER, [2, 3, 4], math.log(.4) / 2)]:
        seqs, scores = _scripted(stopping, [[2]], max_new=2, num_beams=1, eos=(1,), early_stopping=mode)
        np.testing.assert_array_equal(seqs, [seq], err_msg=f"early_stopping={mode}")
        np.testing.assert_allclose(scores, [score], atol=1e-5)


def test_scripted_a_tie_with_the_worst_finished_cannot_improve(stopping):
    """1 beam from [5], early_stopping False, length_penalty 1: EOS and 3 tie at ln .5 (EOS, the
    lower id, ranks first and finishes). The live 3 can at best equal -0.693 at this length,
    not beat it: stop. (Going on would find [5 3 4], -0.693 / 2.)"""
    seqs, scores = _scripted(stopping, [[5]], max_new=2, num_beams=1, eos=(1,), early_stopping=FALSE)
    np.testing.assert_array_equal(seqs, [[5, 1, 0]])
    np.testing.assert_allclose(scores, [math.log(.5)], atol=1e-5)


def test_scripted_a_prompt_that_cannot_improve_takes_no_more_hypotheses(stopping):
    """Per prompt, not per batch: [2] stops improving after step 0 (as in the test above) while
    [6] keeps the loop running; [2]'s later hypothesis 2 3 4 (-0.458, better!) must not enter,
    as in transformers, where that prompt is done.
    [6]: 6 -> 7 (-0.511) lives, no hypothesis finished (so its worst is "none"); step 1: 7 7,
    -0.511 / 2 = -0.255."""
    seqs, scores = _scripted(stopping, [[2], [6]], max_new=2, num_beams=1, eos=(1,), early_stopping=FALSE,
                             seeds=np.zeros([2, 2], np.int32), sample_index=np.zeros([2], np.int32))
    np.testing.assert_array_equal(seqs, [[2, 1, 0], [6, 7, 7]])
    np.testing.assert_allclose(scores, [math.log(.5), math.log(.6) / 2], atol=1e-5)


def test_scripted_early_stopping_true_ends_a_full_prompt(stopping):
    """2 beams from [9], length_penalty 1 (DecodeOptions.off's), 3 new tokens.
    step 0  EOS -0.693 (top 2: finished) | 10 -1.204 | 11 -1.609    live: 10, 11
    step 1  11 12 -1.609 | 10 EOS -1.715 (top 2: finished, -1.715 / 2 = -0.857) | 10 12 -2.120
            finished [EOS -0.693, 10 EOS -0.857]: full.  live: 11 12, 10 12
            best live at this length: -1.609 / 2 = -0.805 > -0.857, so not hopeless
    True:   full: stop.                               [9 EOS], [9 10 EOS]: -0.693, -0.857
    False:  step 2 (last): 11 12 EOS -1.609 / 3 = -0.536, 10 12 EOS -2.120 / 3 = -0.707
                                                      [9 11 12 EOS], [9 EOS]: -0.536, -0.693
    DecodeOptions.off's early_stopping is False. With a second prompt [6] that keeps the loop
    running (its 2 beams 6 7 7 7, 6 8 8 8 never end early), True still takes no hypothesis
    into [9]'s full set."""
    true = ([[9, 1, 0, 0], [9, 10, 1, 0]], [math.log(.5), math.log(.18) / 2])
    false = ([[9, 11, 12, 1], [9, 1, 0, 0]], [math.log(.2) / 3, math.log(.5)])
    kw = dict(max_new=3, num_beams=2, nrs=2, eos=(1,))
    for extra, (want_seqs, want_scores) in [({}, false), (dict(early_stopping=FALSE), false),
                                            (dict(early_stopping=TRUE), true)]:
        seqs, scores = _scripted(stopping, [[9]], **kw, **extra)
        np.testing.assert_array_equal(seqs, want_seqs, err_msg=str(extra))
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    seqs, scores = _scripted(stopping, [[9], [6]], **kw, early_stopping=TRUE,
                             seeds=np.zeros([2, 2], np.int32), sample_index=np.zeros([2], np.int32))
    np.testing.assert_array_equal(seqs, true[0] + [[6, 7, 7, 7], [6, 8, 8, 8]])
    np.testing.assert_allclose(scores, true[1] + [math.log(.6) / 3, math.log(.4) / 3], atol=1e-5)


def test_sampled_candidates_are_returned_best_first():
    """Gumbel-top-k: with exactly k finite scores in a row, the sample is all of them whatever
    the noise, returned best first with their (un-noised) scores."""
    inf = float("inf")
    totals = tf.constant([[-1.0, -inf, -3.0, -2.0, -inf, -0.5],
                          [-inf, -0.25, -6.0, -4.0, -1.5, -inf]])
    keys = sampling.row_keys(tf.constant([[1, 2], [3, 4]]), tf.zeros([2], tf.int32))
    for step in range(3):
        scores, cand = bs._candidates(totals, 4, keys, tf.constant(step))
        np.testing.assert_array_equal(cand.numpy(), [[5, 0, 3, 2], [1, 4, 3, 2]])
        np.testing.assert_array_equal(scores.numpy(), [[-0.5, -1.0, -2.0, -3.0], [-0.25, -1.5, -4.0, -6.0]])


def test_gumbel_top_one_follows_softmax():
    """The first sampled candidate is a Gumbel-max draw: token i with probability softmax(totals)_i.
    20000 rows, each its own key (the tolerance, 0.02, is > 5 standard deviations)."""
    rows, probs = 20000, np.array([.4, .3, .2, .1])
    totals = tf.constant(np.tile(np.log(probs), [rows, 1]), tf.float32)
    seeds = tf.stack([tf.range(rows), tf.fill([rows], 7)], 1)
    keys = sampling.row_keys(seeds, tf.zeros([rows], tf.int32))
    _, cand = bs._candidates(totals, 1, keys, tf.constant(0))
    freq = np.bincount(cand.numpy()[:, 0], minlength=4) / rows
    np.testing.assert_allclose(freq, probs, atol=0.02)
