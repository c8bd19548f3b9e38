"""Step-by-step decoding for inspection: the compiled loop's body, run eagerly.

``step_through`` runs exactly the functions the compiled ``tf.while_loop``
runs (``decoding.start`` / ``decoding.decode_step``), one Python iteration per
step, in eager mode, and yields what happened at each step. Set a breakpoint
in ``decode_step`` or in a processor and it stops there with concrete values.

    for step in xladecode.debug.step_through(lm, ids, mask, max_new_tokens=5):
        print(step.step, step.tokens, step.logprobs, step.top_tokens)
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf

from . import decoding


@dataclasses.dataclass
class Step:
    """One decoding step, for every row (B = batch * num_return_sequences)."""

    step: int
    tokens: np.ndarray  # int32 [B]: chosen tokens (pad for finished rows)
    logprobs: np.ndarray  # float32 [B]: their log-probabilities (0 for finished rows)
    finished: np.ndarray  # bool [B]: row has emitted EOS (after this step)
    top_tokens: np.ndarray  # int32 [B, top]: best candidates of the processed distribution
    top_logprobs: np.ndarray  # float32 [B, top]: their log-probabilities


def step_through(lm, input_ids, attention_mask=None, *, top: int = 5, **options) -> Iterator[Step]:
    """Eagerly decodes (greedy or sampling) and yields one :class:`Step` per step.

    Args:
      lm: a ``LanguageModel``.
      input_ids, attention_mask, **options: as for ``lm.generate`` (beam
        search is not supported here).
      top: how many top candidates to report per row.

    Yields:
      :class:`Step` objects; stops when every row finished or at max_new_tokens.
    """
    call = lm.prepare(input_ids, attention_mask, **options)
    if call.strategy.kind == "beam" or call.strategy.drafter is not None:
        raise ValueError("step_through supports plain greedy and sampling; got num_beams > 1 or "
                         "speculative decoding (prompt_lookup_num_tokens / assistant_model)")
    state, constants = decoding.start(lm.model, call.input_ids, call.attention_mask, call.options,
                                      call.plan.buffer, call.strategy.kind == "sample")
    rows = call.plan.batch * call.strategy.rows_per_prompt  # drop the filler rows of shape bucketing
    while bool(decoding.not_done(state, constants)):
        state, processed = decoding.decode_step(state, constants)
        index = int(state.step) - 1
        best = tf.math.top_k(tf.nn.log_softmax(processed[:rows]), top)
        yield Step(step=index,
                   tokens=state.sequences[:rows, constants.prompt_len + index].numpy(),
                   logprobs=state.scores[:rows, index].numpy(),
                   finished=state.finished[:rows].numpy(),
                   top_tokens=best.indices.numpy(), top_logprobs=best.values.numpy())
