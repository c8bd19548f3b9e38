"""Scoring given text: per-token log-probabilities and perplexity.

Generation asks "what comes next?"; scoring asks "how likely is this text?".
One full forward pass over the (left-padded) batch gives the logits at every
position; the log-probability of token ``t + 1`` is read from position
``t``::

    tokens      [pad, The, cat, sat]      attention_mask [0, 1, 1, 1]
    scored            .    ^    ^         "cat" given "The", "sat" given "The cat"
    mask              [F,  T,   T]        (T - 1 columns: nothing predicts the first token)

A position is scored when it AND the one before it are real tokens, so the
first real token of each row (which has no context) and all padding give 0
and are masked out.  Perplexity is ``exp(-mean log p)`` over the scored
tokens of a row, what transformers reports as ``exp(loss)`` with the labels
of pad positions set to -100.

The model needs a full-sequence forward, ``model.forward(input_ids,
attention_mask) -> float32 [B, T, V]`` (``gpt2.GPT2.forward``); the decoder
protocol's cached ``step`` is not used.  Everything is a pure function of
tensors, so ``tf.function(score, jit_compile=True)`` compiles it once per
shape.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

__all__ = ["ScoreOutput", "perplexity", "score"]


def score(model, input_ids, attention_mask=None):
    """Log-probability of every token given the tokens before it.

    Args:
      model: has ``forward(input_ids, attention_mask) -> float32 [B, T, V]``.
      input_ids: int32 ``[B, T]``, left-padded, ids in ``[0, V)``.
      attention_mask: int ``[B, T]`` (1 = real token, 0 = left padding), or
        None for no padding.

    Returns:
      ``(token_logprobs, mask)``: float32 ``[B, T - 1]`` where column ``t`` is
      ``log p(input_ids[:, t + 1] | input_ids[:, :t + 1])``, 0 where not
      scored; bool ``[B, T - 1]``, True where scored (both the token and the
      one before it are real).

    The log-softmax is taken one row of ``V`` at a time in float32
    (``logit[target] - logsumexp(logits)``), never written out as a second
    ``[B, T, V]`` tensor.
    """
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    if attention_mask is None:
        attention_mask = tf.ones_like(input_ids)
    real = tf.cast(attention_mask, tf.bool)
    logits = tf.cast(model.forward(input_ids, attention_mask), tf.float32)[:, :-1, :]  # [B, T-1, V]
    targets = input_ids[:, 1:]
    picked = tf.gather(logits, targets, batch_dims=2)  # [B, T-1]
    logprobs = picked - tf.reduce_logsumexp(logits, axis=-1)
    mask = real[:, :-1] & real[:, 1:]
    return tf.where(mask, logprobs, 0.0), mask


def perplexity(token_logprobs, mask):
    """Per-row perplexity ``exp(-sum log p / scored tokens)``.

    Args:
      token_logprobs: float32 ``[B, N]`` (0 where not scored).
      mask: bool ``[B, N]``.

    Returns:
      float32 ``[B]``; NaN for a row with no scored token (a one-token text
      has no prediction to score).

    Example:
      >>> lp = tf.math.log(tf.constant([[0.5, 0.5, 0.0], [0.25, 1.0, 1.0]]))
      >>> mask = tf.constant([[True, True, False], [True, False, False]])
      >>> np.round(perplexity(tf.where(mask, lp, 0.0), mask).numpy(), 4).tolist()
      [2.0, 4.0]
    """
    token_logprobs = tf.convert_to_tensor(token_logprobs, tf.float32)
    count = tf.reduce_sum(tf.cast(mask, tf.float32), axis=-1)
    total = tf.reduce_sum(tf.where(mask, token_logprobs, 0.0), axis=-1)
    mean = total / tf.maximum(count, 1.0)
    return tf.where(count > 0, tf.exp(-mean), float("nan"))


@dataclasses.dataclass
class ScoreOutput:
    """What ``LanguageModel.score`` returns (numpy arrays).

    Attributes:
      input_ids: int32 ``[batch, T]``: the left-padded tokens that were scored.
      attention_mask: int32 ``[batch, T]``.
      token_logprobs: float32 ``[batch, T - 1]``: column ``t`` scores token
        ``t + 1``; 0 where not scored.
      mask: bool ``[batch, T - 1]``: True where scored.
      perplexity: float32 ``[batch]`` (NaN for a one-token text).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_logprobs: np.ndarray
    mask: np.ndarray
    perplexity: np.ndarray
