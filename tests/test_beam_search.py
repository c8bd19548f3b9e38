"""Beam search: parity with transformers, laws (hypothesis), beam sampling, compile keys.

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

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from budget import examples

import xladecode
from checkpoints import make_checkpoint
from xladecode.lm import LanguageModel
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
