"""Data-parallel decoding with ``tf.distribute``: one compiled decoder per replica.

``generate_distributed(lm, strategy, input_ids, attention_mask, **options)``
splits a global batch across the replicas of a ``tf.distribute.Strategy``,
runs the SAME compiled decoding function (``LanguageModel._build_generate``,
``jit_compile=True``) on every replica's slice, and gathers the rows back in
order. Its output equals ``lm.generate`` row for row: every row is decoded
independently (and sampling seeds are per row), so which replica decodes a
row, and with which neighbours, changes nothing.

The plan, for a global batch of B prompts and R replicas::

    host   validate + build options (lm.prepare, like generate)
           pad the rows to a multiple of R (copies of row 0), P = rows / R
    each replica r (strategy.run)
           rows [r*P, (r+1)*P) -> the compiled decoder -> [P, ...]
    host   strategy.gather(axis=0) -> [R*P, ...] -> drop the padding rows

Per-row inputs (ids, mask, per-row seeds, sample index) are handed to the
replicas with ``strategy.experimental_distribute_values_from_function``:
replica r builds ITS slice from its global replica id. Nothing in that is
specific to one machine, so the same code path serves ``MirroredStrategy``
(GPUs or CPU logical devices of one host), ``MultiWorkerMirroredStrategy``
(every worker runs the same program on the same global batch; each computes
its replicas' slices and ``gather`` assembles the full result on every
worker) and ``TPUStrategy`` (whose replica functions are always XLA).

**Weights.** The model's variables must live on the replicas' devices. We
chose to MIRROR them: the weights are copied once into a new ``GPT2``
created under ``strategy.scope()``, so each replica holds its own copy
(``MirroredVariable``) and reads it locally -- no cross-device reads per
step. The copy is cached per ``(lm, strategy)``. To avoid the extra host copy,
load the model under the scope yourself (``with strategy.scope(): lm =
xladecode.load(path)``): variables created in the strategy's scope are used
as they are.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import tensorflow as tf

from .gpt2 import GPT2
from .lm import GenerateOutput, LanguageModel

# (lm, strategy) -> DistributedGenerator, so the weights are mirrored once.
_GENERATORS: "weakref.WeakKeyDictionary[LanguageModel, dict]" = weakref.WeakKeyDictionary()


class DistributedGenerator:
    """``lm.generate`` split across the replicas of ``strategy``.

    Args:
      lm: a :class:`~xladecode.LanguageModel` (its generation defaults and
        tokenizer are kept).
      strategy: any ``tf.distribute.Strategy``.

    Attributes:
      lm: the replica-side :class:`LanguageModel` whose variables live in
        ``strategy``'s scope (``lm.compile_count`` counts its traces).
    """

    def __init__(self, lm: LanguageModel, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.lm = LanguageModel(_model_in_scope(lm.model, strategy), lm.tokenizer, dict(lm.defaults))

    def generate(self, input_ids, attention_mask=None, *, output_scores: bool = False,
                 jit_compile: bool = True, **options) -> GenerateOutput:
        """Same arguments and result as :meth:`LanguageModel.generate`."""
        call = self.lm.prepare(input_ids, attention_mask, **options)  # all validation, host side
        replicas = self.strategy.num_replicas_in_sync
        rows = call.input_ids.shape[0]
        per_replica = math.ceil(rows / replicas)
        # Padding rows are copies of row 0: valid prompts, decoded and dropped.
        take = np.concatenate([np.arange(rows), np.zeros(per_replica * replicas - rows, np.int64)])
        per_row = (call.input_ids[take], call.attention_mask[take],
                   call.options.seeds.numpy()[take], call.options.sample_index.numpy()[take])

        def slice_for(context, array):
            start = context.replica_id_in_sync_group * per_replica
            return tf.constant(array[start:start + per_replica])

        distributed = [self.strategy.experimental_distribute_values_from_function(
            lambda context, a=array: slice_for(context, a)) for array in per_row]
        # Rows per replica is part of the compile key: one program per shape.
        key = ("distributed", per_replica) + call.shape_key[1:] + (jit_compile,)
        step = self.lm._function(key, lambda: self._build_step(call, jit_compile))
        sequences, scores, sequences_scores = step(*distributed, call.options)
        # Beam search returns num_return_sequences rows per prompt; the others one per row.
        out_rows = rows * (call.beam_key[1] if call.beam_key else 1)
        width = call.input_ids.shape[1] + call.max_new_tokens
        return GenerateOutput(
            sequences=sequences.numpy()[:out_rows, :width],
            scores=scores.numpy()[:out_rows, :call.max_new_tokens] if output_scores else None,
            sequences_scores=sequences_scores.numpy()[:out_rows] if call.beam_key else None,
        )

    def _build_step(self, call, jit_compile: bool):
        """A ``tf.function`` that runs the compiled decoder on every replica and gathers."""
        decode = self.lm._build_generate(call.max_new_tokens, call.do_sample, call.beam_key, jit_compile)
        strategy = self.strategy

        @tf.function
        def step(input_ids, attention_mask, seeds, sample_index, options):
            def replica_fn(ids, mask, row_seeds, row_index):
                # Replica context: the options shared by all rows, this slice's per-row fields.
                return decode(ids, mask, options._replace(seeds=row_seeds, sample_index=row_index))

            results = strategy.run(replica_fn, args=(input_ids, attention_mask, seeds, sample_index))
            # Concatenate the replicas' rows in replica order (across workers too).
            return tuple(strategy.gather(r, axis=0) for r in results)

        return step


def generate_distributed(lm: LanguageModel, strategy: tf.distribute.Strategy, input_ids,
                         attention_mask=None, **kwargs) -> GenerateOutput:
    """``lm.generate(input_ids, attention_mask, **kwargs)`` split across ``strategy``'s replicas.

    Args:
      lm: a :class:`~xladecode.LanguageModel`.
      strategy: a ``tf.distribute.Strategy`` (Mirrored, MultiWorkerMirrored, TPU).
      input_ids: int ``[batch, P]`` left-padded prompts (the GLOBAL batch;
        any size: it is padded to a multiple of the replica count).
      attention_mask: int ``[batch, P]`` or None.
      **kwargs: any :meth:`LanguageModel.generate` option.

    Returns:
      :class:`~xladecode.GenerateOutput`, equal row for row to ``lm.generate``.
    """
    per_lm = _GENERATORS.setdefault(lm, {})
    if strategy not in per_lm:
        per_lm[strategy] = DistributedGenerator(lm, strategy)
    return per_lm[strategy].generate(input_ids, attention_mask, **kwargs)


def _model_in_scope(model, strategy: tf.distribute.Strategy):
    """``model`` if its variables were created in ``strategy``'s scope, else a mirrored GPT2 copy."""
    variables = list(getattr(model, "variables", ()))
    if variables and all(strategy.extended.variable_created_in_scope(v) for v in variables):
        return model
    if not isinstance(model, GPT2):
        raise TypeError(f"cannot mirror a {type(model).__name__}: only GPT2 weights are copied into "
                        "the strategy's scope; create your model under `with strategy.scope():` instead")
    weights = {name: variable.numpy() for name, variable in model.weights.items()}
    with strategy.scope():  # every tf.Variable made here is a MirroredVariable (one copy per replica)
        return GPT2(model.config, weights, dtype=model.dtype)
