"""Stop strings inside the compiled loop: tables built once, byte comparisons per step.

``stop_strings=["\\n\\n", "ROMEO:"]`` ends a row as soon as its text ends with
one of the strings, even when the string spans several tokens or starts in
the middle of one.  The loop cannot decode text (no strings in XLA), so the
tokenizer's knowledge is turned, once and on the host, into a few fixed-shape
arrays of bytes (:func:`build_tables`), and each step compares bytes
(:func:`stop_string_hit`).

The rule (transformers' ``StopStringCriteria``): after a token is generated,
the row stops when some stop string occurs in its text and that occurrence
*ends inside the new token*.  Checked after every token, this fires exactly
once, at the first token that completes a stop string.  The text is the
row's valid tokens, so an occurrence may begin in the prompt (as in
transformers) but never in left padding (transformers reads pad tokens as
text; without padding the two agree).

The design, for a stop string ``s`` of ``n`` bytes and a new token ``t``:

* either ``s`` lies entirely inside ``t`` -- a precomputed ``[S, V]`` table
  ``contains`` answers that with one gather;
* or ``s`` starts before ``t``: then for some split ``1 <= a < n`` the text
  before ``t`` ends with ``s[:a]`` and ``t`` starts with ``s[a:]``.  Only the
  last ``n - 1`` bytes before ``t`` and the first ``n - 1`` bytes of ``t``
  can take part, so the tables keep, per token, its length and its first and
  last ``K = M - 1`` bytes (``M`` = the longest stop string, bucketed).  Every
  token has at least one byte, so the ``K`` tokens before ``t`` hold all the
  bytes that matter; the step rebuilds those bytes (gathers and a cumsum)
  and compares them with every stop string at every split at once:
  ``[B, S, K, K]`` byte comparisons, a few thousand per row.

Shapes that are compile keys: the number of stop strings ``S`` and ``M``;
pad both (``num_strings``, ``max_bytes``) to buckets so that different stop
strings reuse one compiled graph.  The vocabulary size is fixed per model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from . import validation

__all__ = ["MAX_STOP_STRING_BYTES", "StopStringTables", "build_tables", "cached_tables", "encode_stop_strings",
           "stop_string_hit", "tables_from_vocab", "trim_stop_string", "trim_texts"]

#: Longest stop string accepted, in UTF-8 bytes.  The tables hold ``2 * (M - 1)``
#: bytes per vocabulary entry (12.8 MB for GPT-2 at the limit), and each step
#: compares ``S * (M - 1)^2`` bytes per row.
MAX_STOP_STRING_BYTES = 128


class StopStringTables(NamedTuple):
    """Everything :func:`stop_string_hit` needs; numpy arrays or tensors.

    ``S`` = stop-string slots, ``M`` = bytes per slot, ``K = M - 1``,
    ``V`` = vocabulary size.
    """

    stop_bytes: np.ndarray  # int32 [S, M]: each stop string's UTF-8 bytes, right-padded with -1
    stop_lengths: np.ndarray  # int32 [S]: byte length; 0 marks an unused slot
    token_lengths: np.ndarray  # int32 [V]: bytes each token decodes to
    heads: np.ndarray  # uint8 [V, K]: each token's first K bytes (left-aligned, 0 after the end)
    tails: np.ndarray  # uint8 [V, K]: each token's last K bytes (right-aligned, 0 before the start)
    contains: np.ndarray  # bool [S, V]: stop string s occurs inside token v


# ---------------------------------------------------------------------------
# Host side: the tables.
# ---------------------------------------------------------------------------


def build_tables(tokenizer, stop_strings, *, vocab_size: int | None = None,
                 num_strings: int | None = None, max_bytes: int | None = None) -> StopStringTables:
    """Tables for ``stop_strings`` over a tokenizer's vocabulary.

    Args:
      tokenizer: an ``xladecode.tokenizer.Tokenizer`` (anything with a
        ``token_bytes()`` method giving each id's bytes).
      stop_strings: a string or a non-empty list of non-empty strings.
      vocab_size: the model's vocabulary size, if it differs from the
        tokenizer's (extra ids decode to no bytes; ids past it are dropped).
      num_strings: stop-string slots to pad to (a compile key; >= the count).
      max_bytes: bytes per slot to pad to (a compile key; >= the longest).

    Returns:
      :class:`StopStringTables` of numpy arrays.

    Raises:
      ValueError: naming ``stop_strings`` for an empty list, an empty or
        non-string entry, a string over ``MAX_STOP_STRING_BYTES`` bytes, or
        one that does not fit ``num_strings`` / ``max_bytes``.

    Cost: a Python pass over the vocabulary (about 0.5 s for GPT-2's 50257
    tokens, most of it in ``token_bytes``); cache the result per stop-string
    list.
    """
    return tables_from_vocab(tokenizer.token_bytes(), stop_strings, vocab_size=vocab_size,
                             num_strings=num_strings, max_bytes=max_bytes)


@functools.lru_cache(maxsize=16)
def cached_tables(tokenizer, stop_strings: tuple[str, ...], vocab_size: int, num_strings: int,
                  max_bytes: int) -> StopStringTables:
    """:func:`build_tables`, computed once per (tokenizer, strings, sizes) and kept.

    Building costs a pass over the vocabulary; a server asking for the same
    stop strings on every call pays it once.  The 16 most recent entries are
    kept (the largest, 128-byte strings over GPT-2, hold ~13 MB).  Treat the
    arrays as read-only: they are shared between calls.
    """
    return build_tables(tokenizer, list(stop_strings), vocab_size=vocab_size, num_strings=num_strings,
                        max_bytes=max_bytes)


def tables_from_vocab(vocab: Sequence[bytes], stop_strings, *, vocab_size: int | None = None,
                      num_strings: int | None = None, max_bytes: int | None = None) -> StopStringTables:
    """:func:`build_tables` from the list of each id's bytes (``vocab[id]``).

    Example (the ids of "st", "op", "opera" and "x"):
      >>> t = tables_from_vocab([b"st", b"op", b"opera", b"x"], ["stop"])
      >>> t.heads.tolist(), t.tails.tolist(), t.token_lengths.tolist()
      ([[115, 116, 0], [111, 112, 0], [111, 112, 101], [120, 0, 0]], [[0, 115, 116], [0, 111, 112], [101, 114, 97], [0, 0, 120]], [2, 2, 5, 1])
    """
    encoded = encode_stop_strings(stop_strings)
    longest = max(len(s) for s in encoded)
    slots = len(encoded) if num_strings is None else num_strings
    width = max(longest, 2) if max_bytes is None else max_bytes
    if slots < len(encoded) or width < max(longest, 2):
        validation.fail("stop_strings", list(stop_strings), f"{len(encoded)} strings of up to {longest} bytes "
                        f"do not fit num_strings={num_strings}, max_bytes={max_bytes} (max_bytes >= 2)")
    size = len(vocab) if vocab_size is None else vocab_size
    vocab = [bytes(vocab[i]) if i < len(vocab) else b"" for i in range(size)]
    stop_bytes = np.full([slots, width], -1, np.int32)
    stop_lengths = np.zeros([slots], np.int32)
    contains = np.zeros([slots, size], bool)
    for row, s in enumerate(encoded):
        stop_bytes[row, :len(s)] = list(s)
        stop_lengths[row] = len(s)
        contains[row] = [s in token for token in vocab]
    heads, tails = _token_ends(vocab, width - 1)
    lengths = np.array([len(token) for token in vocab], np.int32)
    return StopStringTables(stop_bytes, stop_lengths, lengths, heads, tails, contains)


def encode_stop_strings(stop_strings) -> list[bytes]:
    """Validate ``stop_strings`` (a string or a non-empty list of them) and encode each to UTF-8.

    Use it to size the buckets before :func:`build_tables`
    (``max(len(b) for b in encode_stop_strings(...))`` bytes).

    Raises:
      ValueError: naming ``stop_strings`` (or ``stop_strings[i]``) for an
        empty list, an empty or non-string entry, or one over
        ``MAX_STOP_STRING_BYTES`` bytes.
    """
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    if not isinstance(stop_strings, (list, tuple)) or not stop_strings:
        validation.fail("stop_strings", stop_strings, "must be a string or a non-empty list of strings")
    encoded = []
    for i, s in enumerate(stop_strings):
        if not isinstance(s, str) or not s:
            validation.fail(f"stop_strings[{i}]", s, "must be a non-empty string")
        if len(s.encode("utf-8")) > MAX_STOP_STRING_BYTES:
            validation.fail(f"stop_strings[{i}]", s, f"must be at most {MAX_STOP_STRING_BYTES} UTF-8 bytes")
        encoded.append(s.encode("utf-8"))
    return encoded


def _token_ends(vocab: list[bytes], k: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[V, k]`` first k bytes (left-aligned) and last k bytes (right-aligned) of each token."""
    heads = np.zeros([len(vocab), k], np.uint8)
    tails = np.zeros([len(vocab), k], np.uint8)
    for i, token in enumerate(vocab):
        n = min(len(token), k)
        if n:
            heads[i, :n] = np.frombuffer(token[:n], np.uint8)
            tails[i, k - n:] = np.frombuffer(token[len(token) - n:], np.uint8)
    return heads, tails


# ---------------------------------------------------------------------------
# Graph side: the per-step check.
# ---------------------------------------------------------------------------


def stop_string_hit(tokens, token_mask, cur_len, tables: StopStringTables) -> tf.Tensor:
    """Whether each row's newest token completes a stop string.

    Args:
      tokens: int32 ``[B, L]`` buffer (prompt, then generated tokens).
      token_mask: bool ``[B, L]``: True on valid tokens (contiguous, ending
        at slot ``cur_len - 1``); left padding and unwritten slots are False.
      cur_len: int32 scalar: slots written; the newest token is at slot
        ``cur_len - 1``.
      tables: :class:`StopStringTables` (numpy arrays or tensors).

    Returns:
      bool ``[B]``: True when a stop string occurs in the row's valid text
      and ends inside its newest token.  False when that slot is not valid.

    Example (vocab "st", "op", "opera", "x"; the row reads "x st opera"):
      >>> t = tables_from_vocab([b"st", b"op", b"opera", b"x"], ["stop"])
      >>> tokens, mask = tf.constant([[3, 0, 2]]), tf.constant([[True, True, True]])
      >>> stop_string_hit(tokens, mask, tf.constant(3), t).numpy().tolist()
      [True]
      >>> stop_string_hit(tokens, mask, tf.constant(2), t).numpy().tolist()
      [False]
    """
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    token_mask = tf.convert_to_tensor(token_mask, tf.bool)
    cur_len = tf.convert_to_tensor(cur_len, tf.int32)
    lengths = tf.convert_to_tensor(tables.token_lengths, tf.int32)
    k = tables.heads.shape[1]
    final_id, final_ok = _token_at(tokens, token_mask, cur_len - 1, lengths)  # [B, 1]
    final_id, final_ok = final_id[:, 0], final_ok[:, 0]
    before = _bytes_before(tokens, token_mask, cur_len, tables, lengths, k)  # [B, K]
    heads = tf.cast(tf.gather(tf.convert_to_tensor(tables.heads), final_id), tf.int32)  # [B, K]
    across = _matches_across(before, heads, tf.gather(lengths, final_id), tables)  # [B, S]
    inside = tf.transpose(tf.gather(tf.convert_to_tensor(tables.contains, tf.bool), final_id, axis=1))
    active = tf.convert_to_tensor(tables.stop_lengths, tf.int32) > 0
    return final_ok & tf.reduce_any((across | inside) & active[tf.newaxis, :], axis=-1)


def _token_at(tokens, token_mask, slots, lengths):
    """Ids at ``slots`` (int32 ``[J]`` or scalar) and whether they are valid and in the tables.

    Returns ``(ids int32 [B, J], ok bool [B, J])``; invalid ids are clipped to 0.
    """
    slots = tf.reshape(slots, [-1])
    clipped = tf.clip_by_value(slots, 0, tf.shape(tokens)[1] - 1)
    ids = tf.gather(tokens, clipped, axis=1)
    ok = (slots >= 0)[tf.newaxis, :] & tf.gather(token_mask, clipped, axis=1)
    ok &= (ids >= 0) & (ids < tf.shape(lengths)[0])
    return tf.where(ok, ids, 0), ok


def _bytes_before(tokens, token_mask, cur_len, tables, lengths, k):
    """int32 ``[B, K]``: the text's bytes before the newest token, nearest first; -1 where none.

    Byte ``d`` (0 = the byte just before the newest token) lies in the
    nearest previous token whose cumulative byte count exceeds ``d``.
    """
    ids, ok = _token_at(tokens, token_mask, cur_len - 1 - tf.range(1, k + 1), lengths)  # [B, K] nearest first
    size = tf.where(ok, tf.gather(lengths, ids), 0)
    ends = tf.math.cumsum(size, axis=1)  # bytes in the j + 1 nearest tokens
    distance = tf.range(k)
    which = tf.reduce_sum(tf.cast(ends[:, tf.newaxis, :] <= distance[tf.newaxis, :, tf.newaxis], tf.int32), -1)
    exists = which < k  # [B, K]: the text is at least d + 1 bytes long
    which = tf.minimum(which, k - 1)
    token = tf.gather(ids, which, batch_dims=1)
    from_end = distance[tf.newaxis, :] - tf.gather(ends - size, which, batch_dims=1)  # 0 = token's last byte
    column = tf.clip_by_value(k - 1 - from_end, 0, k - 1)
    byte = tf.gather_nd(tf.convert_to_tensor(tables.tails), tf.stack([token, column], axis=-1))
    return tf.where(exists, tf.cast(byte, tf.int32), -1)


def _matches_across(before, heads, final_length, tables):
    """bool ``[B, S]``: some split ``1 <= a < n`` has ``before`` ending in ``s[:a]``
    and the newest token starting with ``s[a:]``.

    Args: ``before`` / ``heads`` int32 ``[B, K]``, ``final_length`` int32 ``[B]``.
    """
    stop = tf.convert_to_tensor(tables.stop_bytes, tf.int32)  # [S, M]
    n = tf.convert_to_tensor(tables.stop_lengths, tf.int32)[:, tf.newaxis, tf.newaxis]  # [S, 1, 1]
    k = before.shape[1]
    a = tf.range(1, k + 1)[:, tf.newaxis]  # [A, 1]: bytes of s taken from before the token
    j = tf.range(k)[tf.newaxis, :]  # [1, K]: byte index (back from the token / into the token)
    # Before the token, byte j back must be s[a - 1 - j] (needed for j < a).
    want_before = tf.gather(stop, tf.clip_by_value(a - 1 - j, 0, k), axis=1)  # [S, A, K]
    ok_before = (j >= a)[tf.newaxis] | (before[:, tf.newaxis, tf.newaxis, :] == want_before[tf.newaxis])
    # In the token, byte j must be s[a + j] (needed for j < n - a).
    want_head = tf.gather(stop, tf.clip_by_value(a + j, 0, k), axis=1)  # [S, A, K]
    ok_head = (j >= n - a)[tf.newaxis] | (heads[:, tf.newaxis, tf.newaxis, :] == want_head[tf.newaxis])
    split_ok = (a < n)[tf.newaxis, :, :, 0]  # [1, S, A]
    long_enough = final_length[:, tf.newaxis, tf.newaxis] >= (n - a)[tf.newaxis, :, :, 0]  # [B, S, A]
    match = tf.reduce_all(ok_before, -1) & tf.reduce_all(ok_head, -1) & split_ok & long_enough
    return tf.reduce_any(match, axis=-1)


# ---------------------------------------------------------------------------
# Host side: trimming the returned text.
# ---------------------------------------------------------------------------


def trim_stop_string(text: str, stop_strings, *, keep_stop_string: bool = False, prefix: str = "") -> str:
    """Cut generated ``text`` at the stop string that ended it.

    transformers returns the text as generated: the stop string stays, and
    so does the rest of the token that completed it ("stop" ending in the
    token "opera" leaves "...opera").  Call this to trim instead.  The rule:
    the row ended at the earliest place where a stop string *ends* (of those
    ending there, the longest); ``keep_stop_string=False`` cuts just before
    that stop string, ``True`` just after it (dropping only the overhang).
    Text with no stop string (it ended on EOS or the length limit) is
    returned unchanged.

    Args:
      text: the generated text only.
      stop_strings: a string or a list of strings.
      keep_stop_string: see above.
      prefix: the prompt text: a stop string may begin in the prompt and end
        in ``text`` (the loop stops there too); cutting "before" it then
        gives "".

    Returns:
      str.

    Example:
      >>> trim_stop_string("it was good\\n\\nROMEO: no", ["\\n\\n", "ROMEO:"])
      'it was good'
      >>> trim_stop_string("to stopera", "stop", keep_stop_string=True)
      'to stop'
    """
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    whole = prefix + text
    best = None  # (end, -length) of the occurrence that stopped the row
    for s in stop_strings:
        if not s:
            continue
        start = whole.find(s, max(0, len(prefix) - len(s) + 1))  # must end inside `text`
        if start >= 0 and (best is None or (start + len(s), -len(s)) < best):
            best = (start + len(s), -len(s))
    if best is None:
        return text
    end, length = best[0], -best[1]
    cut = end if keep_stop_string else end - length
    return text[:max(0, cut - len(prefix))]


def trim_texts(texts: list[str], stop_strings, prompts: list[str]) -> list[str]:
    """:func:`trim_stop_string` (cut before the stop string) for every row of a call.

    Args:
      texts: the generated texts, ``len(prompts) * n`` of them, grouped by
        prompt (``num_return_sequences = n``).
      stop_strings: a string or a list of strings.
      prompts: the prompt texts (a stop string may begin in its prompt).

    Returns:
      list of str, in the order of ``texts``.
    """
    per_prompt = len(texts) // len(prompts)
    return [trim_stop_string(text, stop_strings, prefix=prompts[i // per_prompt]) for i, text in enumerate(texts)]
