"""The newer truncation samplers: min-p, typical, epsilon and eta sampling, and renormalisation.

Where transformers applies them (``GenerationMixin._get_logits_processor``):

* the truncation warpers run only when sampling, after temperature, top-k and
  top-p, in the order min-p, typical, epsilon, eta (:func:`truncate`);
* ``renormalize_logits`` is the very LAST step, after the warpers.

``min_tokens_to_keep`` is a Python int here (a compile key), because
transformers derives it from compile keys too: 1 when sampling, and
``len(eos_token_id) + 1`` for beam sampling. It lets the "keep the best n"
rule use ``tf.math.top_k`` with a static ``n`` (a partial sort) instead of
sorting the whole vocabulary. Where transformers keeps exactly n tokens with
``torch.topk`` we keep every token tied with the n-th best, as
``processors.top_k`` does; without exact ties the two agree. Shapes and
conventions: see the :mod:`xladecode.processors` docstring.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import processors


def _keep_best(logits, min_tokens_to_keep: int):
    """bool ``[B, V]``: the ``min_tokens_to_keep`` best scores of each row (ties kept)."""
    n = max(1, min(int(min_tokens_to_keep), logits.shape[-1]))
    nth_best = tf.math.top_k(logits, n).values[:, -1:]  # [B, 1]
    return logits >= nth_best


def min_p(logits, p, min_tokens_to_keep: int = 1):
    """Keep the tokens at least ``p`` times as likely as the most likely one.

    ``MinPLogitsWarper``: remove every token with ``prob < p * max_prob``,
    then keep the ``min_tokens_to_keep`` best anyway.  ``p == 0`` removes
    nothing (``generate`` adds the warper whenever ``min_p`` is set, so 0 is
    the natural "off"); ``p == 1`` keeps the tokens tied for the maximum.

    Args:
      logits: float32 ``[B, V]``.
      p: float32 scalar tensor in ``[0, 1]``.
      min_tokens_to_keep: Python int >= 1.

    Returns:
      float32 ``[B, V]``.

    Example (probabilities .1 .2 .3 .4; 0.4 * 0.4 = 0.16 keeps .2, .3, .4):
      >>> logits = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
      >>> np.isfinite(min_p(logits, tf.constant(0.4)).numpy()).tolist()
      [[False, True, True, True]]
    """
    logits = tf.convert_to_tensor(logits)
    probs = tf.nn.softmax(logits, axis=-1)
    threshold = tf.cast(p, logits.dtype) * tf.reduce_max(probs, axis=-1, keepdims=True)
    remove = (probs < threshold) & ~_keep_best(logits, min_tokens_to_keep)
    return tf.where(remove, processors.neg_inf(logits), logits)


def _entropy(log_probs):
    """float32 ``[B, 1]``: ``-sum p log p``, where a token of probability 0 adds 0 (not NaN)."""
    p_log_p = tf.where(log_probs > -np.inf, tf.exp(log_probs) * log_probs, tf.zeros_like(log_probs))
    return -tf.reduce_sum(p_log_p, axis=-1, keepdims=True)


def typical_p(logits, mass, min_tokens_to_keep: int = 1):
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy.

    ``TypicalLogitsWarper``: order the tokens by their distance
    ``|-log p - H|`` to the entropy ``H``, ascending, and keep the shortest
    prefix of that order whose probability reaches ``mass``: every token
    whose distance is ``<=`` that of the first token at which the running
    sum reaches ``mass`` (all tokens if it never does); the
    ``min_tokens_to_keep`` closest tokens are always kept.  Tokens already at
    ``-inf`` have distance ``inf`` and come last.

    No sort: transformers sorts the vocabulary (measured ~70 ms per 50k row
    under XLA:CPU).  The cut is the smallest distance ``d`` whose mass
    ``sum(p[distance <= d])`` reaches ``mass``, and that mass only grows with
    ``d``, so a bisection finds it.  Distances are >= 0, so their float32 bit
    patterns, read as int32, sort like the floats: 31 halvings of the int32
    range land exactly on one of the row's distances, each halving one
    masked sum over the row.  Ties at the cut keep the whole tie group, as in
    transformers.

    Off value: ``mass >= 1`` is *not* a no-op (the sum can round below 1),
    so the caller skips the warper then, as ``generate`` does
    (``typical_p < 1.0``).

    Args:
      logits: float32 ``[B, V]``.
      mass: float32 scalar tensor in ``(0, 1)``.
      min_tokens_to_keep: Python int >= 1.

    Returns:
      float32 ``[B, V]``.

    Example (probabilities .05 .15 .8: H = 0.61, distances 2.38 1.28 0.39;
    the most typical token alone holds 0.8 >= 0.5):
      >>> logits = tf.math.log(tf.constant([[0.05, 0.15, 0.8]]))
      >>> np.isfinite(typical_p(logits, tf.constant(0.5)).numpy()).tolist()
      [[False, False, True]]
    """
    logits = tf.convert_to_tensor(logits)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    distance = tf.abs(-log_probs - _entropy(log_probs))  # [B, V], >= 0 (inf for -inf logits)
    bits = tf.bitcast(distance, tf.int32)
    keep = bits <= _smallest_reaching(bits, tf.exp(log_probs), tf.cast(mass, logits.dtype))
    always = min(max(1, int(min_tokens_to_keep)), logits.shape[-1])
    nth_closest = -tf.math.top_k(-distance, always).values[:, -1:]  # [B, 1]
    return tf.where(keep | (distance <= nth_closest), logits, processors.neg_inf(logits))


def _smallest_reaching(bits, probs, mass):
    """int32 ``[B, 1]``: the smallest ``t`` with ``sum(probs[bits <= t]) >= mass``, else ``bits(inf)``.

    Bisection keeping ``low`` (mass not reached, or below every value) and
    ``high`` (mass reached, or ``+inf``'s bit pattern) apart; 31 halvings
    close the gap of 2^31 - 2^23.
    """
    rows = tf.shape(bits)[0]
    low = tf.fill([rows, 1], -1)
    high = tf.fill([rows, 1], int(np.float32(np.inf).view(np.int32)))
    for _ in range(31):
        middle = low + (high - low) // 2
        reached = tf.reduce_sum(tf.where(bits <= middle, probs, 0), axis=-1, keepdims=True) >= mass
        low, high = tf.where(reached, low, middle), tf.where(reached, middle, high)
    return high


def epsilon_cutoff(logits, epsilon, min_tokens_to_keep: int = 1):
    """Epsilon sampling: remove the tokens with probability below ``epsilon``.

    ``EpsilonLogitsWarper``: remove ``prob < epsilon``, except the
    ``min_tokens_to_keep`` best tokens (and every token tied with the n-th
    best, exactly like transformers' ``scores < n-th best`` test).
    ``epsilon == 0`` removes nothing (the off value).

    Args:
      logits: float32 ``[B, V]``.
      epsilon: float32 scalar tensor in ``[0, 1)``.
      min_tokens_to_keep: Python int >= 1.

    Returns:
      float32 ``[B, V]``.

    Example:
      >>> logits = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
      >>> np.isfinite(epsilon_cutoff(logits, tf.constant(0.25)).numpy()).tolist()
      [[False, False, True, True]]
    """
    logits = tf.convert_to_tensor(logits)
    probs = tf.nn.softmax(logits, axis=-1)
    remove = (probs < tf.cast(epsilon, logits.dtype)) & ~_keep_best(logits, min_tokens_to_keep)
    return tf.where(remove, processors.neg_inf(logits), logits)


def eta_cutoff(logits, epsilon, min_tokens_to_keep: int = 1):
    """Eta sampling: an entropy-dependent epsilon cutoff.

    ``EtaLogitsWarper``: with ``H`` the entropy of the row,
    ``eta = min(epsilon, sqrt(epsilon) * exp(-H))``; remove ``prob < eta``
    except the ``min_tokens_to_keep`` best tokens.  A flat (high-entropy)
    distribution gets a lower cutoff than a peaked one.  ``epsilon == 0``
    removes nothing (the off value).

    Args:
      logits: float32 ``[B, V]``.
      epsilon: float32 scalar tensor in ``[0, 1)``.
      min_tokens_to_keep: Python int >= 1.

    Returns:
      float32 ``[B, V]``.

    Example (H = 1.28, eta = min(0.25, 0.5 * 0.28) = 0.14: removes 0.1):
      >>> logits = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
      >>> np.isfinite(eta_cutoff(logits, tf.constant(0.25)).numpy()).tolist()
      [[False, True, True, True]]
    """
    logits = tf.convert_to_tensor(logits)
    epsilon = tf.cast(epsilon, logits.dtype)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    eta = tf.minimum(epsilon, tf.sqrt(epsilon) * tf.exp(-_entropy(log_probs)))  # [B, 1]
    remove = (tf.exp(log_probs) < eta) & ~_keep_best(logits, min_tokens_to_keep)
    return tf.where(remove, processors.neg_inf(logits), logits)


def truncate(logits, min_p_value, typical_mass, epsilon, eta_epsilon, min_tokens_to_keep: int = 1):
    """The truncation warpers in transformers' order, each skipped when off.

    Order: min-p, typical, epsilon, eta (``generate`` appends them in this
    order after temperature, top-k and top-p).  A warper whose value is off
    (``min_p == 0``, ``typical_p >= 1``, ``epsilon_cutoff == 0``,
    ``eta_cutoff == 0``) is skipped with a ``tf.cond`` on that value, so it
    costs nothing per step and switching it on needs no recompile.

    Args:
      logits: float32 ``[B, V]``, already warped by temperature/top-k/top-p.
      min_p_value, typical_mass, epsilon, eta_epsilon: float32 scalar tensors.
      min_tokens_to_keep: Python int >= 1 (1 when sampling; the number of EOS
        ids + 1 for beam sampling, as in transformers).

    Returns:
      float32 ``[B, V]``.
    """
    def when(active, x, warper):
        return tf.cond(active, lambda: warper(x), lambda: x)

    def chain(x):
        keep = min_tokens_to_keep
        x = when(min_p_value > 0, x, lambda y: min_p(y, min_p_value, keep))
        x = when(typical_mass < 1, x, lambda y: typical_p(y, typical_mass, keep))
        x = when(epsilon > 0, x, lambda y: epsilon_cutoff(y, epsilon, keep))
        return when(eta_epsilon > 0, x, lambda y: eta_cutoff(y, eta_epsilon, keep))

    # One outer branch for the common "all off" case: one conditional per
    # step instead of four (each branch boundary may copy the [B, V] scores).
    any_on = (min_p_value > 0) | (typical_mass < 1) | (epsilon > 0) | (eta_epsilon > 0)
    return when(any_on, logits, chain)


def renormalize_logits(logits):
    """``log_softmax`` of the scores (``LogitNormalization``), the last step when enabled.

    transformers offers it because beam search adds processed scores across
    steps: after top-k & co the scores no longer sum to 1 in probability
    space.  Rows already normalised stay (nearly) unchanged; ``-inf`` stays
    ``-inf``.

    Args:
      logits: float32 ``[B, V]``.

    Returns:
      float32 ``[B, V]`` log-probabilities.

    Example:
      >>> out = renormalize_logits(tf.constant([[0.0, 0.0, -np.inf]])).numpy()
      >>> np.round(np.exp(out), 3).tolist()
      [[0.5, 0.5, 0.0]]
    """
    return tf.nn.log_softmax(tf.convert_to_tensor(logits), axis=-1)
