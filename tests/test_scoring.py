"""Tests for xladecode.scoring and LanguageModel.score against transformers' loss.

The reference is ``GPT2LMHeadModel`` (PyTorch) on the same random tiny
checkpoint: its per-token log-softmax and its ``loss`` with ``labels``.  A
left-padded row must score exactly like the same text alone, unpadded.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from hypothesis import HealthCheck, assume, given, strategies as st
from hypothesis.extra import numpy as hnp
from budget import examples

import xladecode
from xladecode import scoring
from three_ways import traced_once

B, T, VOCAB = 3, 8, 37  # VOCAB: the shared tiny checkpoint's (conftest.tiny_dir)
SETTINGS = examples(8, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def torch_tiny(tiny_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def score_xla(tiny_lm):
    return tf.function(lambda ids, mask: scoring.score(tiny_lm.model, ids, mask), jit_compile=True)


def hf_row(model, row_ids):
    """transformers on one unpadded row: (per-token log-probs [n - 1], exp(loss))."""
    ids = torch.as_tensor(np.asarray(row_ids, np.int64))[None]
    with torch.no_grad():
        out = model(ids, labels=ids)
    logprobs = torch.log_softmax(out.logits[0, :-1].double(), -1)
    return logprobs.gather(-1, ids[0, 1:, None])[:, 0].numpy(), float(torch.exp(out.loss))


@st.composite
def left_padded(draw):
    """Rows of 1..T real tokens, left-padded; the pad slots hold random ids."""
    ids = draw(hnp.arrays(np.int32, (B, T), elements=st.integers(0, VOCAB - 1)))
    lengths = [draw(st.integers(1, T)) for _ in range(B)]
    mask = (np.arange(T)[None, :] >= T - np.array(lengths)[:, None]).astype(np.int32)
    return ids, mask


@SETTINGS
@given(batch=left_padded())
def test_padded_rows_score_like_transformers_on_each_row_alone(batch, torch_tiny, score_xla):
    ids, mask = batch
    logprobs, scored = (x.numpy() for x in score_xla(tf.constant(ids), tf.constant(mask)))
    ppl = scoring.perplexity(logprobs, scored).numpy()
    assert logprobs.shape == scored.shape == (B, T - 1)
    for row in range(B):
        n = int(mask[row].sum())
        np.testing.assert_array_equal(scored[row], np.arange(1, T) > T - n)  # first real token unscored
        np.testing.assert_array_equal(logprobs[row, :T - n], 0.0)
        if n == 1:
            assert np.isnan(ppl[row])
            continue
        want, want_ppl = hf_row(torch_tiny, ids[row, T - n:])
        np.testing.assert_allclose(logprobs[row, T - n:], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ppl[row], want_ppl, rtol=1e-4)
    assert traced_once(score_xla)


@SETTINGS
@given(batch=left_padded())
def test_batch_mean_equals_transformers_batched_loss(batch, torch_tiny, score_xla):
    """transformers on the padded batch, labels -100 on every unscored token.

    The first real token of a row is -100 too: its label would pair it with
    a pad position's logits, which predict nothing."""
    ids, mask = batch
    assume(mask.sum(1).max() > 1)  # some token is scored
    logprobs, scored = (x.numpy() for x in score_xla(tf.constant(ids), tf.constant(mask)))
    labels = np.where(np.concatenate([np.zeros((B, 1), bool), scored], 1), ids, -100)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        out = torch_tiny(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                         position_ids=torch.as_tensor(positions, dtype=torch.long),
                         labels=torch.as_tensor(labels, dtype=torch.long))
    np.testing.assert_allclose(-logprobs[scored].mean(), float(out.loss), rtol=1e-4)


def test_no_mask_means_no_padding(tiny_lm):
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 5)).astype(np.int32)
    with_mask = scoring.score(tiny_lm.model, ids, np.ones_like(ids))
    without = scoring.score(tiny_lm.model, ids)
    for a, b in zip(with_mask, without):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert without[1].numpy().all()


def test_perplexity_is_nan_without_scored_tokens():
    lp = tf.zeros([2, 3])
    mask = tf.constant([[False] * 3, [True, False, False]])
    ppl = scoring.perplexity(lp, mask).numpy()
    assert np.isnan(ppl[0]) and ppl[1] == 1.0


# ---------------------------------------------------------------------------
# LanguageModel.score on the real GPT-2 tokenizer
# ---------------------------------------------------------------------------

TEXTS = ["ROMEO: But soft, what light", "Hi", "a", "To be, or not to be: that is the question."]


def test_lm_score_matches_transformers(text_lm, text_model):
    torch_model = transformers.GPT2LMHeadModel.from_pretrained(text_model).eval()
    out = text_lm.score(TEXTS)
    assert out.input_ids.shape == out.attention_mask.shape
    assert out.token_logprobs.shape == out.mask.shape == (len(TEXTS), out.input_ids.shape[1] - 1)
    for row, text in enumerate(TEXTS):
        ids = text_lm.tokenizer.encode(text)
        n = len(ids)
        assert out.input_ids[row, -n:].tolist() == ids and out.attention_mask[row].sum() == n
        if n == 1:
            assert np.isnan(out.perplexity[row]) and not out.mask[row].any()
            continue
        want, want_ppl = hf_row(torch_model, ids)
        np.testing.assert_allclose(out.token_logprobs[row, -(n - 1):], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out.perplexity[row], want_ppl, rtol=1e-4)
    # A single string is a batch of one, scored the same.
    alone = text_lm.score(TEXTS[0])
    n = len(text_lm.tokenizer.encode(TEXTS[0]))
    np.testing.assert_allclose(alone.token_logprobs[0, -(n - 1):], out.token_logprobs[0, -(n - 1):],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("texts, match", [
    ([], "texts"), ([""], r"texts\[0\]"), (["ok", 3], r"texts\[1\]"), ([" a" * 100], "n_positions"),
])
def test_lm_score_rejects_bad_texts(text_lm, texts, match):
    with pytest.raises(ValueError, match=match):
        text_lm.score(texts)


def test_lm_score_needs_a_tokenizer(tiny_lm):
    with pytest.raises(ValueError, match="tokenizer"):
        xladecode.lm.LanguageModel(tiny_lm.model).score("hi")


def test_docstring_examples():
    import doctest

    assert doctest.testmod(scoring).failed == 0
