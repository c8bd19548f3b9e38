"""A generation request: from a user's call to the arrays and tensors a compiled decoder runs on.

``prepare`` is the whole host side of ``generate``, as a pipeline of small
steps, and everything that can fail on user input fails here, before any
trace or compile::

    options   defaults.merged(**keywords) -> options.check(...)       one definition of every option
    arrays    validation.token_array / mask_array, length and memory checks
    shapes    plan.plan_shapes(...)                                    the one bucketing rule
    fitting   plan.left_pad + plan.fit_rows                            the one place filler rows are made
    tensors   options.decode_options(...)                              decoding.DecodeOptions

The result, a :class:`Request`, carries the compile key (shapes + strategy):
one compiled program per distinct key.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from . import processors, speculative, stop_strings, validation
from .compiled import Strategy
from .options import GenerationOptions, check, decode_options, seed_array
from .plan import ShapePlan, bucket, fit_rows, left_pad, plan_shapes
from .sequence_bias import pack_sequence_bias

#: Refuse calls whose per-step logits alone (rows x vocab float32, a few live
#: copies) would need more than this many bytes, before tracing anything.
MAX_LOGITS_BYTES = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class Request:
    """A validated call, fitted to its shape plan.

    Attributes:
      input_ids, attention_mask: int32 tensors ``[rows, plan.width]``, rows =
        ``plan.compiled_batch * strategy.rows_per_prompt`` (filler rows last).
      options: ``decoding.DecodeOptions`` tensors.
      checked: the checked ``GenerationOptions`` (seed as given).
      strategy: the :class:`~xladecode.compiled.Strategy`.
      plan: the :class:`~xladecode.plan.ShapePlan`.
    """

    input_ids: tf.Tensor
    attention_mask: tf.Tensor
    options: object
    checked: GenerationOptions
    strategy: Strategy
    plan: ShapePlan

    @property
    def compile_key(self) -> tuple:
        """Everything that changes a shape or the graph: one compiled program per value.

        Besides the plan and strategy, the shape of every option tensor: the
        bucketed sizes of ``bad_words_ids``, ``sequence_bias`` and the
        stop-string tables (zero rows = off, which traces nothing).
        """
        p = self.plan
        shapes = tuple(tuple(t.shape) for t in self.options)
        return (p.compiled_batch, p.width, p.buffer, self.strategy, shapes)


def prepare(model, defaults: GenerationOptions, input_ids, attention_mask=None, *, bucketed: bool = True,
            row_multiple: int = 1, tokenizer=None, **keywords) -> Request:
    """Validates a ``generate`` call and fits it to its compiled shapes.

    Args:
      model: the ``protocol.DecoderModel`` (its ``vocab_size`` and
        ``max_positions`` bound the options).
      defaults: the model's default ``GenerationOptions``.
      input_ids: int ``[batch, P]`` left-padded prompts (or ``[P]``).
      attention_mask: int ``[batch, P]`` or None.
      bucketed: round shapes up to shared buckets (``plan.plan_shapes``).
      row_multiple: the compiled batch is a multiple of this (replicas).
      tokenizer: the model's ``Tokenizer``; needed only for ``stop_strings``.
      **keywords: decoding options (``GenerationOptions`` fields).

    Returns:
      :class:`Request`.

    Raises:
      UnknownOptionError: an unknown keyword.
      ValueError: any bad value, naming the argument and the allowed range.
    """
    checked = check(defaults.merged(**keywords), model.vocab_size, model.max_positions)
    ids = validation.token_array(input_ids, model.vocab_size)
    mask = validation.mask_array(attention_mask, ids)
    batch, prompt_len = ids.shape
    strategy = Strategy.from_options(checked)
    if strategy.drafter is not None:  # speculative decoding: refuse what it cannot do, before tracing
        speculative.check(model, strategy.drafter, checked.num_beams)
    _check_size(batch, prompt_len, checked, strategy, model)
    seeds = seed_array(checked.seed, batch)
    bad_words = _pack_bad_words(checked, model.vocab_size, bucketed)
    sequence_bias = _pack_sequence_bias(checked, model.vocab_size, bucketed)
    stop_tables = _stop_tables(checked, tokenizer, model.vocab_size, bucketed)
    plan = plan_shapes(batch, prompt_len, checked.max_new_tokens, model.max_positions, bucketed, row_multiple)

    ids, mask = left_pad(ids, mask, plan.width, checked.pad_token_id)
    ids, mask, seeds = fit_rows((ids, mask, seeds), plan.compiled_batch)
    per_prompt = strategy.rows_per_prompt
    if per_prompt > 1:  # several samples of a prompt are separate rows
        ids, mask = tf.repeat(ids, per_prompt, axis=0), tf.repeat(mask, per_prompt, axis=0)
    tensors = decode_options(checked, model.vocab_size, seeds.numpy(), per_prompt, bad_words, sequence_bias,
                             stop_tables)
    return Request(ids, mask, tensors, checked, strategy, plan)


def _check_size(batch: int, prompt_len: int, checked: GenerationOptions, strategy: Strategy, model) -> None:
    """The prompt and new tokens fit ``n_positions``; the call fits in memory."""
    limit = model.max_positions
    if prompt_len + checked.max_new_tokens > limit:
        validation.fail("max_new_tokens", checked.max_new_tokens,
                        f"prompt length {prompt_len} + max_new_tokens must be <= n_positions={limit}")
    rows = batch * max(strategy.num_beams, strategy.rows_per_prompt)
    needed = 4 * rows * model.vocab_size * 4  # float32 logits, ~4 live copies per step
    if needed > MAX_LOGITS_BYTES:
        name = "num_beams" if strategy.kind == "beam" else "num_return_sequences"
        validation.fail(name, getattr(checked, name),
                        f"{rows} decoded rows x vocab {model.vocab_size} need ~{needed / 2**30:.0f} GiB "
                        f"of logits per step (limit {MAX_LOGITS_BYTES / 2**30:.0f} GiB): use fewer rows")


def _pack_bad_words(checked: GenerationOptions, vocab_size: int, bucketed: bool):
    """``bad_words_ids`` as fixed arrays; with ``bucketed`` their shape is bucketed too."""
    words = checked.bad_words_ids
    if words is None:
        return np.zeros([0, 1], np.int32), np.zeros([0], np.int32)
    longest = max(len(w) for w in words)
    return processors.pack_bad_words(
        words, vocab_size, eos_token_id=checked.eos_token_id,
        num_words=bucket(len(words), 4) if bucketed else None,
        max_word_len=bucket(longest, 2) if bucketed else None)


def _pack_sequence_bias(checked: GenerationOptions, vocab_size: int, bucketed: bool):
    """``sequence_bias`` as fixed arrays (None when off), bucketed like bad words."""
    pairs = checked.sequence_bias
    if pairs is None:
        return None
    longest = max(len(ids) for ids, _ in pairs)
    return pack_sequence_bias(pairs, vocab_size, num_sequences=bucket(len(pairs), 4) if bucketed else None,
                                         max_sequence_len=bucket(longest, 2) if bucketed else None)


def _stop_tables(checked: GenerationOptions, tokenizer, vocab_size: int, bucketed: bool):
    """The stop-string tables (None when off): bucketed string count and byte width, built once and cached."""
    strings = checked.stop_strings
    if strings is None:
        return None
    if tokenizer is None or not hasattr(tokenizer, "token_bytes"):
        validation.fail("stop_strings", strings, "needs the model's tokenizer (none was loaded: the checkpoint "
                                                 "folder has no tokenizer.json or vocab.json + merges.txt)")
    longest = max(2, max(len(s) for s in stop_strings.encode_stop_strings(strings)))
    count = bucket(len(strings), 4) if bucketed else len(strings)
    width = bucket(longest, 4) if bucketed else longest
    return stop_strings.cached_tables(tokenizer, tuple(strings), vocab_size, count, width)
