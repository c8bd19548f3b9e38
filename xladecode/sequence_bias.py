"""Sequence bias (transformers' ``SequenceBiasLogitsProcessor``), in the one XLA graph.

``sequence_bias`` maps token sequences to a bias added to the logit of each
sequence's last token whenever the tokens before it have just been generated
(a one-token sequence is biased at every step). It is the FIRST processor in
transformers' order (``GenerationMixin._get_logits_processor``), before the
repetition penalty, and runs for every strategy. The table is packed like
``processors.pack_bad_words`` (shape-bucketed, so changing its contents never
recompiles). Shapes and conventions: see the :mod:`xladecode.processors`
docstring.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import processors


def pack_sequence_bias(
    sequence_bias,
    vocab_size: int,
    *,
    num_sequences: int | None = None,
    max_sequence_len: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a sequence-bias mapping and pack it into fixed arrays.

    Same layout as ``pack_bad_words`` (ids right-padded with 0, true lengths,
    rows of length 0 inactive) plus one bias per row, so a padded
    ``num_sequences`` x ``max_sequence_len`` shape serves many mappings with
    one compiled graph.

    Args:
      sequence_bias: a dict ``{(id, id, ...): bias}`` or transformers' list
        form ``[[[id, id, ...], bias], ...]`` (later duplicates win, as in
        transformers).  A bias is a real number; ``-inf`` bans the sequence's
        last token, NaN and ``+inf`` are rejected.
      vocab_size: Python int; every id must be in ``[0, vocab_size)``.
      num_sequences: optional number of rows to pad to.
      max_sequence_len: optional number of columns to pad to.

    Returns:
      ``(ids, lengths, biases)``: np.int32 ``[N, M]``, np.int32 ``[N]``,
      np.float32 ``[N]``.

    Raises:
      ValueError: naming ``sequence_bias`` for an empty mapping, an empty or
        non-integer sequence, an id outside the vocabulary, a bad bias, or
        when the sequences do not fit the requested shape.

    Example:
      >>> ids, lengths, biases = pack_sequence_bias({(3,): -1.0, (1, 2): 2.5}, vocab_size=5)
      >>> ids.tolist(), lengths.tolist(), biases.tolist()
      ([[3, 0], [1, 2]], [1, 2], [-1.0, 2.5])
    """
    merged = dict(sequence_bias_pairs(sequence_bias, vocab_size))
    longest = max(len(sequence) for sequence in merged)
    rows = len(merged) if num_sequences is None else num_sequences
    cols = longest if max_sequence_len is None else max_sequence_len
    if rows < len(merged) or cols < longest:
        raise ValueError(
            f"`sequence_bias` has {len(merged)} sequences of up to {longest} tokens, more than fit "
            f"num_sequences={num_sequences}, max_sequence_len={max_sequence_len}."
        )
    ids = np.zeros([rows, cols], dtype=np.int32)
    lengths = np.zeros([rows], dtype=np.int32)
    biases = np.zeros([rows], dtype=np.float32)
    for row, (sequence, bias) in enumerate(merged.items()):
        ids[row, : len(sequence)] = sequence
        lengths[row] = len(sequence)
        biases[row] = bias
    return ids, lengths, biases


def sequence_bias_pairs(sequence_bias, vocab_size: int) -> list[tuple[tuple[int, ...], float]]:
    """Validate ``sequence_bias`` (either form of :func:`pack_sequence_bias`) into
    ``(token-id tuple, bias)`` pairs, one per distinct sequence, later duplicates winning.

    Raises:
      ValueError: as :func:`pack_sequence_bias`.
    """
    vocab_size = processors.check_vocab_size(vocab_size)
    merged = {}
    for index, (sequence, bias) in enumerate(_sequence_bias_pairs(sequence_bias)):
        merged[_checked_sequence(sequence, index, vocab_size)] = _checked_bias(bias, index)
    return list(merged.items())


def _sequence_bias_pairs(sequence_bias) -> list:
    """The ``(sequence, bias)`` pairs of either accepted form, in order."""
    if isinstance(sequence_bias, dict) and sequence_bias:
        return list(sequence_bias.items())
    if isinstance(sequence_bias, (list, tuple)) and sequence_bias:
        for index, pair in enumerate(sequence_bias):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(
                    f"`sequence_bias` element {index} is {pair!r}; expected a pair [token_ids, bias]."
                )
        return [tuple(pair) for pair in sequence_bias]
    raise ValueError(
        f"`sequence_bias` has to be a non-empty dict {{(token ids): bias}} or a non-empty list of "
        f"[token_ids, bias] pairs, but is {sequence_bias!r}."
    )


def _checked_sequence(sequence, index: int, vocab_size: int) -> tuple:
    if isinstance(sequence, np.ndarray):
        sequence = sequence.tolist()
    if processors.is_token_id(sequence):
        sequence = (sequence,)
    if not isinstance(sequence, (list, tuple)) or len(sequence) == 0:
        raise ValueError(
            f"`sequence_bias` sequence {index} is {sequence!r}; expected a non-empty tuple of token ids."
        )
    for token_id in sequence:
        if not processors.is_token_id(token_id) or not 0 <= token_id < vocab_size:
            raise ValueError(
                f"`sequence_bias` sequence {index} contains {token_id!r}, but ids must be integers in "
                f"the range [0, {vocab_size}) for vocab_size={vocab_size}."
            )
    return tuple(int(t) for t in sequence)


def _checked_bias(bias, index: int) -> float:
    if isinstance(bias, (bool, np.bool_)) or not isinstance(bias, (int, float, np.integer, np.floating)):
        raise ValueError(f"`sequence_bias` bias {index} is {bias!r}; expected a real number.")
    bias = float(bias)
    if np.isnan(bias) or bias == np.inf:
        raise ValueError(f"`sequence_bias` bias {index} is {bias!r}; expected a real number or -inf.")
    return bias


def sequence_bias(logits, tokens, token_mask, cur_len, bias_ids, bias_lengths, biases):
    """Add a bias to the last token of every sequence the row is about to complete.

    ``SequenceBiasLogitsProcessor`` semantics: a one-token sequence is always
    biased; a sequence ``w`` of ``l > 1`` tokens adds its bias to
    ``logits[w[l-1]]`` when the row's last ``l - 1`` valid tokens equal
    ``w[:l-1]``.  Biases of different sequences ending in the same token add
    up.  Build the arrays with ``pack_sequence_bias``; rows of length 0 are
    inactive.  The matching is the one of ``bad_words`` (same static tables);
    only the action differs: add a bias instead of ``-inf``.

    One documented difference: transformers matches against ``input_ids``
    including left padding; we only look at valid tokens (``token_mask``), so
    a prefix can never be "completed" by pad tokens.  Without padding the two
    agree.

    Args:
      logits: float32 ``[B, V]``.
      tokens: int32 ``[B, L]``.
      token_mask: bool ``[B, L]``.
      cur_len: int32 scalar tensor, or ``[B]`` (one per row).
      bias_ids: int32 ``[N, M]``, right-padded.
      bias_lengths: int32 ``[N]``.
      biases: float32 ``[N]``.

    Returns:
      float32 ``[B, V]``.

    Example (the context ends in 1, so "1 2" adds 2.5 to id 2; "3" always adds -1):
      >>> ids, lengths, biases = pack_sequence_bias({(3,): -1.0, (1, 2): 2.5}, vocab_size=4)
      >>> tokens, mask = tf.constant([[0, 1, 0]]), tf.constant([[True, True, False]])
      >>> sequence_bias(tf.zeros([1, 4]), tokens, mask, tf.constant(2), ids, lengths, biases).numpy().tolist()
      [[0.0, 0.0, 2.5, -1.0]]
    """
    logits = tf.convert_to_tensor(logits)
    word_ids = tf.convert_to_tensor(bias_ids, tf.int32)
    lengths = tf.convert_to_tensor(bias_lengths, tf.int32)
    matches = processors.sequences_about_to_complete(tokens, token_mask, cur_len, word_ids, lengths)  # [B, N]
    width = tf.shape(word_ids)[1]
    last_token = tf.gather(word_ids, tf.clip_by_value(lengths - 1, 0, width - 1), batch_dims=1)  # [N]
    amount = tf.where(matches, tf.cast(biases, logits.dtype)[None, :], 0)  # [B, N]
    # Scatter-add, not a one-hot matmul: a -inf bias times a 0 would be NaN.
    batch, n = tf.shape(matches)[0], tf.shape(matches)[1]
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, n])
    where = tf.stack([rows, tf.broadcast_to(last_token[None, :], [batch, n])], axis=-1)
    return logits + tf.scatter_nd(where, amount, tf.shape(logits))
