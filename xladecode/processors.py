"""Logits processors and sampling warpers that compile into one XLA graph.

Every step of the decoding loop turns the model's next-token scores
(``logits``) into the scores it samples or takes the argmax from.  This module
holds the functions that do that rewriting: the *processors* (repetition
penalty, n-gram blocking, bad words, minimum length, suppressed tokens, forced
EOS) and the *warpers* used only when sampling (temperature, top-k, top-p).
Each one mirrors the Hugging Face ``transformers`` class of the same name (see
``transformers.generation.logits_process``), and each docstring lists where
and why it differs.

Rules every function here follows, because the whole loop is traced once into
a single ``tf.function(jit_compile=True)`` graph:

* **Static shapes only.**  Nothing returns a tensor whose shape depends on
  tensor *values*, and no Python ``if``/``for`` looks at a tensor value.
  Decisions such as "is this the last step?" become ``tf.where`` selects, and
  "every id seen so far" becomes a fixed-size ``[batch, vocab]`` mask.
* **Options are tensors.**  ``penalty``, ``k``, ``p``, ``ngram_size``... are
  int32/float32 scalar tensors, so changing them between calls re-uses the
  compiled graph instead of retracing.  Only shapes (batch, buffer length,
  vocab, number of bad words) are baked into a compiled graph.
* **Masked means ``-inf``.**  A forbidden token gets a float32 ``-inf`` score,
  exactly as ``transformers`` does, so ``softmax`` gives it probability 0.
* **Same results eagerly, in a plain graph and under XLA.**

Common arguments (``B`` = batch, ``L`` = buffer length, ``V`` = vocab size):

``logits``      float32 ``[B, V]``: the next-token scores.
``tokens``      int32 ``[B, L]``: a fixed-size buffer holding the left-padded
                prompt followed by the tokens generated so far.  Slots not
                yet written hold arbitrary values (even ids outside the vocab).
``token_mask``  bool ``[B, L]``: True exactly where ``tokens`` holds a real
                token (prompt or generated); False for left padding and for
                unwritten slots.  In each row the True slots are contiguous
                and end at slot ``cur_len - 1``.
``cur_len``     int32 scalar: number of written slots; the next token goes to
                slot ``cur_len``.  Or int32 ``[B]``, one per row, where rows
                have written different numbers of slots (speculative decoding).
``step``        int32 scalar: number of tokens generated so far (0 on the first
                decoding step).  Or int32 ``[B]``, one per row.
``eos_mask``    bool ``[V]``: True for every end-of-sequence id.  A mask rather
                than a list keeps the shape fixed however many EOS ids exist.

``transformers`` applies warpers in the order temperature, top-k, top-p; the
decoding loop should do the same.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "bad_words",
    "check_vocab_size",
    "eos_mask_from_ids",
    "forced_eos",
    "is_token_id",
    "min_new_tokens",
    "neg_inf",
    "no_repeat_ngram",
    "pack_bad_words",
    "per_row",
    "raised_top_k",
    "repetition_penalty",
    "sequences_about_to_complete",
    "suppress_tokens",
    "temperature",
    "top_k",
    "top_p",
    "vocab_mask_from_ids",
]


# ---------------------------------------------------------------------------
# Host-side (NumPy) helpers: validate user input once, before any tracing.
# ---------------------------------------------------------------------------


def is_token_id(value) -> bool:
    """True for Python/NumPy integers, but not for bools (``True`` is an int)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_vocab_size(vocab_size) -> int:
    """``vocab_size`` as a Python int; ``ValueError`` unless it is a positive integer."""
    if not is_token_id(vocab_size) or vocab_size <= 0:
        raise ValueError(f"`vocab_size` has to be a positive integer, but is {vocab_size!r}.")
    return int(vocab_size)


def vocab_mask_from_ids(ids, vocab_size: int, *, name: str = "ids") -> np.ndarray:
    """Turn a list of token ids into a boolean mask over the vocabulary.

    A mask has the same shape ``[vocab_size]`` however many ids it marks, so
    one compiled graph serves every list.  Use it for ``suppress_tokens``.

    Args:
      ids: an int, an iterable of ints, or None (meaning no ids).  Duplicates
        are fine.
      vocab_size: Python int, the number of scores per row of ``logits``.
      name: the argument name used in error messages.

    Returns:
      np.ndarray, dtype bool, shape ``[vocab_size]``; True at every id.

    Raises:
      ValueError: naming ``name`` when an id is not an integer or lies outside
        ``[0, vocab_size)``.

    Example:
      >>> vocab_mask_from_ids([3, 1], vocab_size=5).tolist()
      [False, True, False, True, False]
    """
    vocab_size = check_vocab_size(vocab_size)
    if ids is None:
        ids = []
    elif is_token_id(ids):
        ids = [ids]
    elif isinstance(ids, np.ndarray):
        ids = ids.reshape(-1).tolist()
    mask = np.zeros([vocab_size], dtype=bool)
    for token_id in ids:
        if not is_token_id(token_id):
            raise ValueError(f"`{name}` must contain integer token ids, but contains {token_id!r}.")
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"`{name}` contains token id {token_id}, but ids must be in the range "
                f"[0, {vocab_size}) for vocab_size={vocab_size}."
            )
        mask[token_id] = True
    return mask


def eos_mask_from_ids(ids, vocab_size: int) -> np.ndarray:
    """Boolean ``[vocab_size]`` mask of the end-of-sequence ids.

    Same as ``vocab_mask_from_ids`` but errors name ``eos_token_id``.  An empty
    list (or None) gives an all-False mask: then ``min_new_tokens`` does
    nothing and ``forced_eos`` would forbid every token, so only enable
    ``forced_eos`` when there is at least one id.

    Args:
      ids: int, iterable of ints or None.
      vocab_size: Python int.

    Returns:
      np.ndarray bool ``[vocab_size]``.

    Example:
      >>> eos_mask_from_ids(2, vocab_size=4).tolist()
      [False, False, True, False]
    """
    return vocab_mask_from_ids(ids, vocab_size, name="eos_token_id")


def pack_bad_words(
    bad_words_ids,
    vocab_size: int,
    *,
    eos_token_id=None,
    num_words: int | None = None,
    max_word_len: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a list of banned token sequences and pack it into fixed arrays.

    XLA needs rectangular tensors, so the ragged list of words becomes an id
    matrix right-padded with 0 plus a vector of true lengths.  Rows with
    length 0 are inactive; ``bad_words`` ignores them.  That lets you pad to a
    fixed ``num_words`` x ``max_word_len`` so that different word lists reuse
    one compiled graph.

    Like ``transformers.generate``, a *single-token* word equal to one of the
    ``eos_token_id`` ids is dropped (banning EOS outright would make the model
    unable to stop); multi-token words that contain EOS are kept.  If every
    word is dropped the result has zero rows, which ``bad_words`` handles.

    Args:
      bad_words_ids: non-empty list of non-empty lists of token ids.
      vocab_size: Python int; every id must be in ``[0, vocab_size)``.
      eos_token_id: optional int or list of ints (see above).
      num_words: optional number of rows to pad to (>= the number of words).
      max_word_len: optional number of columns to pad to (>= longest word).

    Returns:
      ``(ids, lengths)``: np.int32 ``[n_words, max_word_len]`` and np.int32
      ``[n_words]``.  ``max_word_len`` is at least 1 so the matrix never has a
      zero-width dimension.

    Raises:
      ValueError: naming ``bad_words_ids`` for an empty list, an empty word, a
        non-integer or an id outside ``[0, vocab_size)``; or when the words do
        not fit ``num_words`` / ``max_word_len``.

    Example:
      >>> ids, lengths = pack_bad_words([[3], [1, 2]], vocab_size=5)
      >>> ids.tolist(), lengths.tolist()
      ([[3, 0], [1, 2]], [1, 2])
    """
    vocab_size = check_vocab_size(vocab_size)
    if not isinstance(bad_words_ids, (list, tuple)) or len(bad_words_ids) == 0:
        raise ValueError(
            f"`bad_words_ids` has to be a non-empty list of lists of token ids, but is {bad_words_ids!r}."
        )
    words = []
    for index, word in enumerate(bad_words_ids):
        if isinstance(word, np.ndarray):
            word = word.tolist()
        if not isinstance(word, (list, tuple)):
            raise ValueError(
                f"`bad_words_ids` has to be a list of lists of token ids, but element {index} is {word!r}."
            )
        if len(word) == 0:
            raise ValueError(
                f"`bad_words_ids` contains an empty word at index {index}; every word needs at least one "
                f"token id in the range [0, {vocab_size})."
            )
        for token_id in word:
            if not is_token_id(token_id):
                raise ValueError(
                    f"`bad_words_ids` must contain integer token ids, but word {index} contains {token_id!r}."
                )
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"`bad_words_ids` contains token id {token_id} (word {index}), but ids must be in the "
                    f"range [0, {vocab_size}) for vocab_size={vocab_size}."
                )
        words.append([int(t) for t in word])

    eos_ids = set(np.flatnonzero(eos_mask_from_ids(eos_token_id, vocab_size)).tolist())
    words = [w for w in words if not (len(w) == 1 and w[0] in eos_ids)]

    longest = max([len(w) for w in words], default=1)
    rows = len(words) if num_words is None else num_words
    cols = longest if max_word_len is None else max_word_len
    if rows < len(words):
        raise ValueError(f"`bad_words_ids` has {len(words)} words, more than num_words={num_words}.")
    if cols < longest or cols < 1:
        raise ValueError(
            f"`bad_words_ids` has a word of {longest} tokens, longer than max_word_len={max_word_len}."
        )

    ids = np.zeros([rows, cols], dtype=np.int32)
    lengths = np.zeros([rows], dtype=np.int32)
    for row, word in enumerate(words):
        ids[row, : len(word)] = word
        lengths[row] = len(word)
    return ids, lengths


# ---------------------------------------------------------------------------
# Graph-side helpers.
# ---------------------------------------------------------------------------


def neg_inf(logits: tf.Tensor) -> tf.Tensor:
    """A scalar ``-inf`` of the logits' dtype, the value of a banned token."""
    return tf.constant(-np.inf, dtype=logits.dtype)


def per_row(cur_len, tokens: tf.Tensor) -> tf.Tensor:
    """``cur_len`` (scalar or ``[B]``) as int32 ``[B]``: one written length per row."""
    return tf.broadcast_to(tf.convert_to_tensor(cur_len, tf.int32), tf.shape(tokens)[:1])


def _column(step) -> tf.Tensor:
    """A scalar or ``[B]`` step as an int32 column (``[1, 1]`` or ``[B, 1]``) for a ``[B, V]`` select."""
    return tf.reshape(tf.convert_to_tensor(step, tf.int32), [-1, 1])


def _ids_to_vocab_mask(ids: tf.Tensor, active: tf.Tensor, vocab_size) -> tf.Tensor:
    """Mark, for every row, the vocabulary entries named by its active ids.

    The data-dependent "set of ids seen" is made static by scattering into a
    ``[B, V + 1]`` count table.  Inactive entries, and ids outside
    ``[0, V)`` (garbage in unwritten slots, or an embedding vocab larger than
    the output layer), are sent to the spare last column, which is then
    dropped.  Scatter-*add* makes duplicate ids harmless.

    Args:
      ids: int32 ``[B, K]``.
      active: bool ``[B, K]``.
      vocab_size: int or int32 scalar tensor ``V``.

    Returns:
      bool ``[B, V]``: True where some active id of that row equals the column.
    """
    batch = tf.shape(ids)[0]
    width = tf.shape(ids)[1]
    in_vocab = (ids >= 0) & (ids < vocab_size)
    column = tf.where(active & in_vocab, ids, vocab_size)
    row = tf.broadcast_to(tf.range(batch)[:, None], [batch, width])
    counts = tf.scatter_nd(
        tf.stack([row, column], axis=-1),
        tf.ones_like(column),
        shape=tf.stack([batch, vocab_size + 1]),
    )
    return counts[:, :vocab_size] > 0


# ---------------------------------------------------------------------------
# Logits processors.
# ---------------------------------------------------------------------------


def repetition_penalty(logits, tokens, token_mask, penalty):
    """Penalise every token id that already occurs in the row (CTRL penalty).

    For each id present among the row's valid tokens: a negative score is
    multiplied by ``penalty``, a non-negative score is divided by it.  So
    ``penalty > 1`` makes repeats less likely and ``penalty < 1`` more likely;
    each id is penalised once however often it occurs.

    Matches ``RepetitionPenaltyLogitsProcessor`` except that left padding is
    ignored: transformers sees the pad id in ``input_ids`` and penalises it
    (often the pad id *is* EOS), we only look where ``token_mask`` is True.
    Without padding the two agree.  ``penalty == 1.0`` returns the scores
    unchanged (``x * 1`` and ``x / 1`` are exact).

    Args:
      logits: float32 ``[B, V]``.
      tokens: int32 ``[B, L]``.
      token_mask: bool ``[B, L]``.
      penalty: float32 scalar tensor, > 0.

    Returns:
      float32 ``[B, V]``.

    Example (slot 0 is padding holding id 0, slot 3 is unwritten):
      >>> logits = tf.constant([[2.0, -2.0, 1.0, 4.0]])
      >>> tokens = tf.constant([[0, 1, 3, 0]])
      >>> token_mask = tf.constant([[False, True, True, False]])
      >>> repetition_penalty(logits, tokens, token_mask, tf.constant(2.0)).numpy().tolist()
      [[2.0, -4.0, 1.0, 2.0]]
    """
    logits = tf.convert_to_tensor(logits)
    penalty = tf.cast(penalty, logits.dtype)
    seen = _ids_to_vocab_mask(tokens, token_mask, tf.shape(logits)[-1])
    penalised = tf.where(logits < 0, logits * penalty, logits / penalty)
    return tf.where(seen, penalised, logits)


def no_repeat_ngram(logits, tokens, token_mask, cur_len, ngram_size):
    """Forbid every token that would complete an n-gram the row already contains.

    With ``n = ngram_size``, the next token ``t`` is banned when the last
    ``n - 1`` valid tokens followed by ``t`` form an n-gram that already
    occurs among the row's valid tokens (``NoRepeatNGramLogitsProcessor``).
    Windows never span left padding; ``n == 0`` disables; with ``n == 1``
    every token already present is banned.

    How it stays static and O(B * L * n): instead of building a table of all
    n-grams, every window *ending* at slot ``j`` is compared with the current
    context.  Window ``j`` "matches" when its first ``n - 1`` tokens equal the
    last ``n - 1`` valid tokens, i.e. ``tokens[j - d] == tokens[cur_len - d]``
    for ``d = 1 .. n - 1``; a matching window bans its own last token
    ``tokens[j]``.  The ``d`` loop is a ``tf.while_loop`` whose trip count is
    the tensor ``n``, so ``ngram_size`` is a runtime value, not a compile key.
    (The window that starts at the context would need slot ``cur_len``, which
    is not written yet, so the context never bans its own continuation.)

    Args:
      logits: float32 ``[B, V]``.
      tokens: int32 ``[B, L]``.
      token_mask: bool ``[B, L]``.
      cur_len: int32 scalar tensor, or ``[B]`` (one per row).
      ngram_size: int32 scalar tensor (a Python int works too), >= 0.

    Returns:
      float32 ``[B, V]``.

    Example ("1 2 3 1 2" already contains the 3-gram "1 2 3"):
      >>> logits = tf.zeros([1, 4])
      >>> tokens = tf.constant([[1, 2, 3, 1, 2, 0]])
      >>> token_mask = tf.constant([[True] * 5 + [False]])
      >>> no_repeat_ngram(logits, tokens, token_mask, tf.constant(5), tf.constant(3)).numpy().tolist()
      [[0.0, 0.0, 0.0, -inf]]
    """
    logits = tf.convert_to_tensor(logits)
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    token_mask = tf.convert_to_tensor(token_mask, tf.bool)
    cur_len = per_row(cur_len, tokens)
    n = tf.convert_to_tensor(ngram_size, tf.int32)
    length = tf.shape(tokens)[1]
    last_slot = length - 1
    ends = tf.range(length)  # window j ends at slot j ...
    starts = ends - n + 1  # ... and starts at slot j - n + 1.

    # The valid slots are contiguous, so a window is entirely valid iff both of
    # its ends are; this is what keeps windows out of the left padding.
    start_valid = tf.gather(token_mask, tf.clip_by_value(starts, 0, last_slot), axis=1)
    window_ok = (n > 0) & (starts >= 0)[None, :] & start_valid & token_mask

    def not_done(d, matches):
        return d < n

    def compare_offset(d, matches):
        # Token d slots before each window end, and d slots before cur_len.
        # Clipping only guards the gather; clipped slots belong to windows
        # that window_ok already rejected.
        window_token = tf.gather(tokens, tf.clip_by_value(ends - d, 0, last_slot), axis=1)
        context_slot = tf.clip_by_value(cur_len - d, 0, last_slot)[:, None]  # [B, 1]
        context_token = tf.gather(tokens, context_slot, batch_dims=1)[:, 0]
        return d + 1, matches & (window_token == context_token[:, None])

    _, matches = tf.while_loop(not_done, compare_offset, (tf.constant(1), window_ok))
    banned = _ids_to_vocab_mask(tokens, matches, tf.shape(logits)[-1])
    return tf.where(banned, neg_inf(logits), logits)


def bad_words(logits, tokens, token_mask, cur_len, bad_words_ids, bad_words_lengths):
    """Forbid the last token of every bad word whose prefix was just generated.

    A word of one token is always banned.  A word ``w`` of ``l > 1`` tokens
    bans ``w[l-1]`` when the row's last ``l - 1`` valid tokens equal
    ``w[:l-1]``; if the row has fewer than ``l - 1`` valid tokens it cannot
    match (``NoBadWordsLogitsProcessor`` semantics; build the arrays with
    ``pack_bad_words``).  Rows of length 0 are inactive padding, and zero words
    returns ``logits`` unchanged.

    All words are matched at once, by :func:`sequences_about_to_complete`.

    Args:
      logits: float32 ``[B, V]``.
      tokens: int32 ``[B, L]``.
      token_mask: bool ``[B, L]``.
      cur_len: int32 scalar tensor, or ``[B]`` (one per row).
      bad_words_ids: int32 ``[n_words, M]``, right-padded.
      bad_words_lengths: int32 ``[n_words]``.

    Returns:
      float32 ``[B, V]``.

    Example (context ends in 1, so the word "1 2" bans 2; "3" is always banned):
      >>> ids, lengths = pack_bad_words([[3], [1, 2]], vocab_size=4)
      >>> tokens, mask = tf.constant([[0, 1, 0]]), tf.constant([[True, True, False]])
      >>> bad_words(tf.zeros([1, 4]), tokens, mask, tf.constant(2), ids, lengths).numpy().tolist()
      [[0.0, 0.0, -inf, -inf]]
    """
    logits = tf.convert_to_tensor(logits)
    word_ids = tf.convert_to_tensor(bad_words_ids, tf.int32)
    lengths = tf.convert_to_tensor(bad_words_lengths, tf.int32)
    matches = sequences_about_to_complete(tokens, token_mask, cur_len, word_ids, lengths)  # [B, W]
    width = tf.shape(word_ids)[1]
    last_token = tf.gather(word_ids, tf.clip_by_value(lengths - 1, 0, width - 1), batch_dims=1)  # [W]
    banned = _ids_to_vocab_mask(
        tf.broadcast_to(last_token[None, :], tf.shape(matches)), matches, tf.shape(logits)[-1]
    )
    return tf.where(banned, neg_inf(logits), logits)


def sequences_about_to_complete(tokens, token_mask, cur_len, word_ids, lengths):
    """Which token sequences the next token would complete, per row.

    Sequence ``w`` of length ``l`` is about to complete in row ``b`` when the
    row's last ``l - 1`` valid tokens equal ``w[:l-1]`` (always, for
    ``l == 1``). Offset ``d = 1 .. M-1`` compares the context token at
    ``cur_len - d`` with each sequence's token ``d`` places before its last
    one. Used by :func:`bad_words` and ``sequence_bias``.

    Args:
      tokens: int32 ``[B, L]``.
      token_mask: bool ``[B, L]``: False at pad slots (they never match).
      cur_len: int32 scalar tensor, or ``[B]``: the next token's slot.
      word_ids: int32 ``[N, M]``, right-padded sequences.
      lengths: int32 ``[N]``; 0 marks an unused slot (never matches).

    Returns:
      bool ``[B, N]``.

    Example (the context ends in 1: "1 2" and "3" are about to complete, "0 2" is not):
      >>> tokens, mask = tf.constant([[0, 1, 0]]), tf.constant([[True, True, False]])
      >>> words, lengths = tf.constant([[1, 2], [3, 0], [0, 2]]), tf.constant([2, 1, 2])
      >>> sequences_about_to_complete(tokens, mask, tf.constant(2), words, lengths).numpy().tolist()
      [[True, True, False]]
    """
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    token_mask = tf.convert_to_tensor(token_mask, tf.bool)
    cur_len = per_row(cur_len, tokens)  # [B]: rows may differ (speculative decoding)
    last_slot = tf.shape(tokens)[1] - 1
    width = tf.shape(word_ids)[1]
    offsets = tf.range(1, width)  # d = 1 .. M - 1, shape [M - 1]

    # Context: the token d slots before cur_len, and whether it is real.
    context_slot = cur_len[:, None] - offsets[None, :]  # [B, M-1]
    context_slot_clipped = tf.clip_by_value(context_slot, 0, last_slot)
    context_token = tf.gather(tokens, context_slot_clipped, batch_dims=1)  # [B, M-1]
    context_ok = (context_slot >= 0) & tf.gather(token_mask, context_slot_clipped, batch_dims=1)

    # Sequences: the token d places before each one's last token.
    word_pos = lengths[:, None] - 1 - offsets[None, :]  # [N, M-1]
    needed = word_pos >= 0
    word_token = tf.gather(word_ids, tf.clip_by_value(word_pos, 0, width - 1), batch_dims=1)

    agrees = context_ok[:, None, :] & (context_token[:, None, :] == word_token[None, :, :])
    return tf.reduce_all(~needed[None, :, :] | agrees, axis=-1) & (lengths > 0)[None, :]


def min_new_tokens(logits, step, min_new, eos_mask):
    """Forbid EOS until at least ``min_new`` tokens have been generated.

    ``MinNewTokensLengthLogitsProcessor`` semantics: while ``step < min_new``
    every EOS score is ``-inf``; afterwards the scores pass through.  The
    prompt length plays no role.  ``min_new == 0`` is a no-op.

    Args:
      logits: float32 ``[B, V]``.
      step: int32 scalar tensor, or ``[B]`` (one per row).
      min_new: int32 scalar tensor.
      eos_mask: bool ``[V]``.

    Returns:
      float32 ``[B, V]``.

    Example:
      >>> eos = tf.constant([False, True, False])
      >>> min_new_tokens(tf.ones([1, 3]), tf.constant(0), tf.constant(2), eos).numpy().tolist()
      [[1.0, -inf, 1.0]]
      >>> min_new_tokens(tf.ones([1, 3]), tf.constant(2), tf.constant(2), eos).numpy().tolist()
      [[1.0, 1.0, 1.0]]
    """
    logits = tf.convert_to_tensor(logits)
    too_early = _column(step) < tf.convert_to_tensor(min_new, tf.int32)  # [1 or B, 1]
    block = too_early & tf.convert_to_tensor(eos_mask, tf.bool)[None, :]
    return tf.where(block, neg_inf(logits), logits)


def suppress_tokens(logits, suppress_mask):
    """Set the scores of the masked token ids to ``-inf`` at every step.

    ``SuppressTokensLogitsProcessor`` semantics.  Build the mask with
    ``vocab_mask_from_ids``.

    Args:
      logits: float32 ``[B, V]``.
      suppress_mask: bool ``[V]``.

    Returns:
      float32 ``[B, V]``.

    Example:
      >>> suppress_tokens(tf.ones([1, 3]), tf.constant([True, False, False])).numpy().tolist()
      [[-inf, 1.0, 1.0]]
    """
    logits = tf.convert_to_tensor(logits)
    mask = tf.convert_to_tensor(suppress_mask, tf.bool)[None, :]
    return tf.where(mask, neg_inf(logits), logits)


def forced_eos(logits, step, max_new_tokens, eos_mask):
    """On the last allowed step, make EOS the only possible token.

    ``ForcedEOSTokenLogitsProcessor`` semantics: when
    ``step == max_new_tokens - 1`` the whole row is *replaced*: every EOS id
    scores 0 and every other id ``-inf`` (with several EOS ids all of them get
    0, so sampling picks uniformly among them and greedy picks the lowest
    id).  The incoming scores are ignored at that step, so even an EOS that an
    earlier processor banned comes back.  Other steps pass through.
    (transformers tests ``len(input_ids) == max_length - 1``; with
    ``max_length = prompt_len + max_new_tokens`` that is the same step.)
    ``generate`` builds this from ``forced_eos_token_id``, which may differ
    from ``eos_token_id``; build ``eos_mask`` from whichever you force.  An
    all-False ``eos_mask`` yields an all ``-inf`` row on the last step.

    Args:
      logits: float32 ``[B, V]``.
      step: int32 scalar tensor, or ``[B]`` (one per row).
      max_new_tokens: int32 scalar tensor.
      eos_mask: bool ``[V]``.

    Returns:
      float32 ``[B, V]``.

    Example:
      >>> eos = tf.constant([False, True, True])
      >>> forced_eos(tf.ones([1, 3]), tf.constant(3), tf.constant(4), eos).numpy().tolist()
      [[-inf, 0.0, 0.0]]
    """
    logits = tf.convert_to_tensor(logits)
    last_step = _column(step) == tf.convert_to_tensor(max_new_tokens, tf.int32) - 1  # [1 or B, 1]
    eos = tf.convert_to_tensor(eos_mask, tf.bool)[None, :]
    only_eos = tf.where(eos, tf.zeros([], logits.dtype), neg_inf(logits))
    return tf.where(last_step, tf.broadcast_to(only_eos, tf.shape(logits)), logits)


# ---------------------------------------------------------------------------
# Sampling warpers (transformers order: temperature, top-k, top-p).
# ---------------------------------------------------------------------------


def temperature(logits, t):
    """Divide the scores by the temperature ``t`` (``TemperatureLogitsWarper``).

    ``t < 1`` sharpens the distribution, ``t > 1`` flattens it.  ``t`` must be
    > 0; ``t == 0`` conventionally means greedy decoding, which the caller
    handles by not sampling at all (dividing by 0 here would give inf/NaN).

    Args:
      logits: float32 ``[B, V]``.
      t: float32 scalar tensor.

    Returns:
      float32 ``[B, V]``.

    Example:
      >>> temperature(tf.constant([[1.0, -2.0]]), tf.constant(0.5)).numpy().tolist()
      [[2.0, -4.0]]
    """
    logits = tf.convert_to_tensor(logits)
    return logits / tf.cast(t, logits.dtype)


def raised_top_k(k, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """int32 scalar: ``k`` raised to ``min_tokens_to_keep`` when it is on (``k > 0``);
    ``k <= 0`` (off) stays as it is.  The ``k`` that :func:`top_k` applies."""
    k = tf.convert_to_tensor(k, tf.int32)
    return tf.where(k > 0, tf.maximum(k, min_tokens_to_keep), k)


def top_k(logits, k, min_tokens_to_keep: int = 1):
    """Keep only the ``k`` highest scores of each row (``TopKLogitsWarper``).

    A score survives when it is ``>=`` the k-th largest score of its row, so
    ties with the k-th score are all kept (more than ``k`` tokens may survive).
    ``k`` is a runtime tensor: the row is sorted once (static shape ``[B, V]``)
    and the threshold is gathered at index ``k - 1``.  ``k <= 0`` disables
    (returns ``logits`` unchanged bit for bit); ``k > V`` keeps everything.
    As in transformers, a ``k`` that is on is raised to ``min_tokens_to_keep``
    (beam sampling keeps one token more than it has EOS ids).

    Args:
      logits: float32 ``[B, V]``.
      k: int32 scalar tensor.
      min_tokens_to_keep: Python int >= 1.

    Returns:
      float32 ``[B, V]``.

    Example (the 2nd largest score is 3, and both 3s are kept):
      >>> top_k(tf.constant([[1.0, 3.0, 3.0, 2.0]]), tf.constant(2)).numpy().tolist()
      [[-inf, 3.0, 3.0, -inf]]
    """
    logits = tf.convert_to_tensor(logits)
    k = raised_top_k(k, min_tokens_to_keep)
    vocab_size = tf.shape(logits)[-1]
    descending = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth = tf.clip_by_value(k, 1, vocab_size) - 1
    threshold = tf.gather(descending, kth, axis=1)[:, None]  # [B, 1]
    keep = (k <= 0) | (logits >= threshold)
    return tf.where(keep, logits, neg_inf(logits))


def top_p(logits, p, min_tokens_to_keep: int = 1):
    """Nucleus sampling: keep the most likely tokens holding probability ``p``.

    ``TopPLogitsWarper`` algorithm: sort the scores ascending, take the
    cumulative softmax, and remove tokens whose cumulative probability is
    ``<= 1 - p`` (always keeping the ``min_tokens_to_keep`` most likely
    tokens).  The removed tokens form a prefix of the ascending order, so
    removal reduces to one threshold: with ``r`` = number of removed positions
    (at most ``V - min_tokens_to_keep``), keep every score ``>= sorted[r]``.

    Differences from calling the torch warper directly, both deliberate:

    * **Ties at the cut.**  If tokens tied with ``sorted[r]`` straddle the
      cut, transformers removes some of them, and which ones depends on how
      ``torch.sort`` orders equal values (not stable, differs by device).  We
      keep the whole tie group, like ``top_k`` does.  The number ``r`` never
      depends on tie order, so without such a tie the results are identical.
      Likewise ``p == 0`` keeps every token tied for the maximum.
    * **``p >= 1`` disables** and returns the input bit for bit, as
      ``generate`` skips the warper when ``top_p == 1.0``.  (Run anyway, the
      torch warper with ``p == 1`` would remove tokens whose probability
      underflows to exactly 0.)

    Args:
      logits: float32 ``[B, V]``.
      p: float32 scalar tensor in ``[0, 1]``.
      min_tokens_to_keep: Python int >= 1.

    Returns:
      float32 ``[B, V]``.

    Example (probabilities .1 .2 .3 .4; the top two already hold 0.7 >= 0.6):
      >>> logits = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
      >>> np.isfinite(top_p(logits, tf.constant(0.6)).numpy()).tolist()
      [[False, False, True, True]]
    """
    if not (is_token_id(min_tokens_to_keep) and min_tokens_to_keep >= 1):
        raise ValueError(f"`min_tokens_to_keep` must be an integer >= 1, but is {min_tokens_to_keep!r}.")
    logits = tf.convert_to_tensor(logits)
    p = tf.cast(p, logits.dtype)
    vocab_size = tf.shape(logits)[-1]
    ascending = tf.sort(logits, axis=-1, direction="ASCENDING")
    cumulative = tf.math.cumsum(tf.nn.softmax(ascending, axis=-1), axis=-1)
    # Counting instead of searching: cumulative is non-decreasing, so the
    # positions with cumulative <= 1 - p are exactly the first `removed` ones.
    removed = tf.reduce_sum(tf.cast(cumulative <= 1 - p, tf.int32), axis=-1)
    removed = tf.minimum(removed, tf.maximum(vocab_size - min_tokens_to_keep, 0))  # keep the best min_tokens_to_keep
    threshold = tf.gather(ascending, removed, batch_dims=1)[:, None]  # [B, 1]
    keep = (p >= 1) | (logits >= threshold)
    return tf.where(keep, logits, neg_inf(logits))
