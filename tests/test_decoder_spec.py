"""The decoder's specification, as exact examples on a scripted model (no GPT-2 here).

``bigram_model()`` returns fixed logits that depend only on the last token: its
next-token distribution is the table below. Every expected array in this
file was worked out by hand from that table (the arithmetic is in the
comments), so these tests read as the definition of greedy decoding, EOS
handling, min_new_tokens, top-k and beam search finalisation.

    token   next-token probabilities            (EOS = 5, pad = 0)
    1       2: .60   3: .40
    2       4: .55   5: .45
    3       5: .90   1: .06   0, 2, 3, 4: .01 each
    4       3: .70   5: .30
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from scripted import TableModel
from xladecode import beam_search, decoding
from xladecode.decoding import DecodeOptions
from xladecode.lm import LanguageModel

EOS, PAD, V = 5, 0, 6
PROBS = {1: {2: .60, 3: .40}, 2: {4: .55, 5: .45}, 3: {5: .90, 1: .06, 0: .01, 2: .01, 3: .01, 4: .01},
         4: {3: .70, 5: .30}}


def _table() -> np.ndarray:
    """log-probabilities; impossible transitions get -30 (e**-30 ~ 1e-13: no effect on any
    float32 log-prob below), rows 0 and 5 are uniform (never reached before EOS)."""
    table = np.full([V, V], -30.0, np.float32)
    table[[0, 5]] = math.log(1 / V)
    for token, row in PROBS.items():
        for nxt, p in row.items():
            table[token, nxt] = math.log(p)
    return table


def bigram_model() -> TableModel:
    """The table above as a protocol model: logits ``table[last token]``, no weights, no attention."""
    return TableModel(_table())


@pytest.fixture(scope="module")
def lm():
    return LanguageModel(bigram_model(), generation_config=dict(eos_token_id=EOS, pad_token_id=PAD))


def test_greedy_follows_the_argmax_chain_and_pads_after_eos(lm):
    # 1 -> 2 (.60) -> 4 (.55) -> 3 (.70) -> EOS (.90), then pad.
    out = lm.generate([[1]], max_new_tokens=6, output_scores=True)
    np.testing.assert_array_equal(out.sequences, [[1, 2, 4, 3, 5, 0, 0]])
    want = [math.log(.60), math.log(.55), math.log(.70), math.log(.90), 0, 0]  # 0 after EOS
    np.testing.assert_allclose(out.scores, [want], atol=1e-5)


def test_left_padding_and_a_list_of_eos_ids(lm):
    ids, mask = [[0, 1], [3, 2]], [[0, 1], [1, 1]]
    # row 0: 1 -> 2 4 3 EOS;  row 1: ... 2 -> 4 3 EOS.
    out = lm.generate(ids, mask, max_new_tokens=5)
    np.testing.assert_array_equal(out.sequences, [[0, 1, 2, 4, 3, 5, 0],
                                                  [3, 2, 4, 3, 5, 0, 0]])
    # With 3 also an EOS id, both rows stop at their first 3, and pad follows.
    out = lm.generate(ids, mask, max_new_tokens=5, eos_token_id=[5, 3])
    np.testing.assert_array_equal(out.sequences, [[0, 1, 2, 4, 3, 0, 0],
                                                  [3, 2, 4, 3, 0, 0, 0]])


def test_min_new_tokens_bans_eos_until_reached(lm):
    # 3 -> EOS at once; with min_new_tokens=2 EOS is banned for steps 0 and 1:
    # 3 -> 1 (.06, best non-EOS) -> 2 (.60) -> 4 (.55, EOS allowed again but .45 < .55) -> 3.
    assert lm.generate([[3]], max_new_tokens=4).sequences.tolist() == [[3, 5, 0, 0, 0]]
    out = lm.generate([[3]], max_new_tokens=4, min_new_tokens=2)
    np.testing.assert_array_equal(out.sequences, [[3, 1, 2, 4, 3]])


def test_top_k_one_sampling_is_greedy_for_any_seed(lm):
    for seed in [(0, 0), (1, 2), (123, 456)]:
        out = lm.generate([[1]], max_new_tokens=6, do_sample=True, top_k=1, temperature=1.7, seed=seed)
        np.testing.assert_array_equal(out.sequences, [[1, 2, 4, 3, 5, 0, 0]])


def test_top_k_two_samples_only_the_two_best(lm):
    # From 3, top-2 keeps {5, 1}: every sampled first token is one of them.
    seeds = np.stack([np.arange(64), np.zeros(64, int)], 1)
    out = lm.generate(np.full([64, 1], 3), max_new_tokens=1, do_sample=True, top_k=2, seed=seeds)
    assert set(out.sequences[:, 1].tolist()) == {5, 1}


def test_beam_search_finalisation(lm):
    """num_beams=2 from [1], 3 new tokens, length_penalty 1 (score = sum logprob / new length).

    step 0  live: 12 (ln .6 = -0.511), 13 (ln .4 = -0.916)
    step 1  candidates: 135 EOS -1.022 | 124 -1.109 | 125 EOS -1.310 | 131 -3.730
            135 is among the top 2 -> finished, -1.022 / 2 = -0.511
            125 is not among the top 2 -> dropped;   live: 124, 131
    step 2  candidates: 1243 -1.466 | 1245 EOS -2.313 | 1312 -4.241 | 1313 -4.646
            last step: the top 2 finish: 1243 -1.466 / 3 = -0.488, 1245 -2.313 / 3 = -0.771
    final   best 2 finished: 1243 (-0.488), 135 (-0.511)
    """
    out = lm.generate([[1]], max_new_tokens=3, num_beams=2, num_return_sequences=2, length_penalty=1.0,
                      early_stopping=True, output_scores=True)
    np.testing.assert_array_equal(out.sequences, [[1, 2, 4, 3], [1, 3, 5, 0]])
    np.testing.assert_allclose(out.sequences_scores,
                               [math.log(.6 * .55 * .7) / 3, math.log(.4 * .9) / 2], atol=1e-5)
    np.testing.assert_allclose(out.scores, [[math.log(.6), math.log(.55), math.log(.7)],
                                            [math.log(.4), math.log(.9), 0.0]], atol=1e-5)


def test_one_compiled_program_serves_every_option_value(lm):
    lm.generate([[1]], max_new_tokens=3, do_sample=True, seed=(1, 1))
    before = lm.compile_count
    for top_k, temperature in [(1, 0.5), (2, 1.0), (0, 2.0)]:
        lm.generate([[2]], max_new_tokens=3, do_sample=True, top_k=top_k, temperature=temperature, seed=(2, 2))
    assert lm.compile_count == before


def test_options_built_off_decode_plain_greedy_and_beams():
    """``DecodeOptions.off``: one new token, pad 0, no EOS, no processor or warper, lp 1."""
    model, ids = bigram_model(), tf.constant([[1]])
    off = DecodeOptions.off(V)
    logits = tf.constant([[0.5, -1.0, 2.0, 0.0, 1.0, -3.0]])
    np.testing.assert_array_equal(decoding.warp_logits(logits, off).numpy(), logits.numpy())
    seq, scores = decoding.sample_loop(model, ids, tf.ones_like(ids), off, 2, do_sample=False)
    assert seq.numpy().tolist() == [[1, 2, 0]]  # 1 -> 2 (.60), then the buffer's pad
    np.testing.assert_allclose(scores.numpy(), [[math.log(.6), 0.0]], atol=1e-6)
    seq, _ = decoding.sample_loop(model, ids, tf.ones_like(ids), off, 2, do_sample=True)
    assert seq.shape == (1, 3) and seq.numpy()[0, 1] in (2, 3) and seq.numpy()[0, 2] == 0
    # Beams, 3 tokens, no EOS: 12 / 13, then 135 (.36) and 124 (.33), then 1243 (.231) and 1245 (.099).
    seq, _, seq_scores = beam_search.beam_search(model, ids, tf.ones_like(ids),
                                                 DecodeOptions.off(V, max_new_tokens=tf.constant(3)), 3, 2, 2)
    assert seq.numpy().tolist() == [[1, 2, 4, 3], [1, 2, 4, 5]]
    np.testing.assert_allclose(seq_scores.numpy(), [math.log(.231) / 3, math.log(.099) / 3], atol=1e-5)
