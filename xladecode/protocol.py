"""The small interface between a model and the decoder.

The decoder (``decoding.py``) never sees GPT-2: it drives any object with the
three members below. A model keeps its cache in whatever nested structure of
tensors it likes (a NamedTuple of per-layer tensors for GPT-2), with one rule:
**every cache tensor has the batch as its leading axis**, so beam search can
reorder a cache with one ``tf.gather(..., axis=0)`` per tensor, without knowing
its layout.

A decoding call then looks like::

    cache = model.init_cache(batch_size, max_length)          # once, fixed size
    logits, cache = model.step(prompt, positions, cache, 0, key_mask)   # prefill
    while ...:                                                  # tf.while_loop
        logits, cache = model.step(token[:, None], position, cache, slot, key_mask)

What each entry point needs
---------------------------
Decoding (``generate``, batch jobs, the debugger) needs only
:class:`DecoderModel`. A few features need more; each is optional, checked
where it is used, and refused with an error that names what is missing:

==========================  ==============================================  ==========================
capability                  what it is                                      needed by
==========================  ==============================================  ==========================
``forward(ids, mask)``      all-position logits ``[B, T, V]``, no cache      ``LanguageModel.logits``,
                                                                            tests' recompute laws
``config.eos_token_id``     default EOS id(s) (and ``config.pad_token_id``)  option defaults (else pass
                                                                            ``eos_token_id=``)
a ``tf.Module``             weights held as ``tf.Variable`` attributes       ``export`` (SavedModel)
``clone()``                 a copy with the same weights, whose variables   ``placement.Replicated``
                            are created in the current distribute scope     (distributed decoding)
``prepare_verification()``  build what ``step_all`` wants before a trace   speculation (optional:
                            (GPT-2: a ``[vocab, C]`` copy of its LM head)   faster verification)
==========================  ==============================================  ==========================

:class:`~xladecode.gpt2.GPT2` has all of them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import tensorflow as tf

Cache = Any  # a nest of tensors, each [batch, ...]


@runtime_checkable
class DecoderModel(Protocol):
    """What a model must provide to be decoded by xladecode."""

    #: Number of token ids; logits have this last dimension.
    vocab_size: int
    #: Longest sequence (prompt + new tokens) the model supports.
    max_positions: int

    def init_cache(self, batch_size: int, max_length: int) -> Cache:
        """Allocates the cache once for ``max_length`` slots.

        Args:
          batch_size: Python int, rows decoded together.
          max_length: Python int, prompt length + new tokens.

        Returns:
          A nest of zero tensors, each with leading axis ``batch_size``.
        """
        ...

    def step(self, input_ids: tf.Tensor, positions: tf.Tensor, cache: Cache,
             cache_index: tf.Tensor, key_mask: tf.Tensor) -> tuple[tf.Tensor, Cache]:
        """Runs the model on ``t`` new tokens per row and writes them into the cache.

        Args:
          input_ids: int32 ``[batch, t]`` (t = prompt length for the prefill, 1 after).
          positions: int32 ``[batch, t]`` position ids (padding-aware, see positions.py).
          cache: the structure returned by ``init_cache`` (or a previous step).
          cache_index: int32 scalar, the slot of ``input_ids[:, 0]``.
          key_mask: int32 ``[batch, max_length]``: 1 where a slot holds (or will
            hold) a real token, 0 for left padding. Causality hides the future.

        Returns:
          ``(logits, cache)``: float32 ``[batch, vocab_size]`` next-token logits
          at the LAST of the ``t`` positions, and the updated cache.
        """
        ...


@runtime_checkable
class VerifyingModel(DecoderModel, Protocol):
    """Optional capability: what speculative decoding (``speculative.py``) needs on top.

    Verifying ``k`` drafted tokens takes ONE forward over ``k + 1`` positions,
    and two things a plain ``step`` does not give:

    * the logits at **every** one of the ``t`` positions, not only the last;
    * a write slot **per row**: each row has accepted its own number of
      tokens so far, so row ``b`` continues at its own ``cache_index[b]``.

    GPT-2 (``gpt2.py``) and the rotary test model (``tests/rope_decoder.py``) have it.
    A model without ``step_all`` still decodes normally; speculation refuses it.
    """

    def step_all(self, input_ids: tf.Tensor, positions: tf.Tensor, cache: Cache,
                 cache_index: tf.Tensor, key_mask: tf.Tensor) -> tuple[tf.Tensor, Cache]:
        """Runs ``t`` new tokens per row at per-row slots; returns logits at all positions.

        Args:
          input_ids: int32 ``[batch, t]``.
          positions: int32 ``[batch, t]`` position ids (``positions.slot_positions``).
          cache: as for ``step``.
          cache_index: int32 ``[batch]``: row ``b``'s tokens go to slots
            ``cache_index[b] .. cache_index[b] + t - 1`` (all < ``max_length``).
          key_mask: int32 ``[batch, max_length]``, as for ``step``.

        Returns:
          ``(logits, cache)``: float32 ``[batch, t, vocab_size]``, where
          ``logits[:, j]`` predicts the token after ``input_ids[:, j]``, and the
          updated cache. Query ``j`` of row ``b`` sees exactly the slots
          ``<= cache_index[b] + j`` that ``key_mask`` marks (causal masking),
          so whatever a slot after that holds -- a rejected draft -- is invisible.
        """
        ...
