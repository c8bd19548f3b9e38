"""Data-parallel decoding with ``tf.distribute``: one compiled decoder per replica.

``generate_distributed(lm, strategy, input_ids, attention_mask, **options)``
(or ``distributed(lm, strategy)``: a :class:`DistributedLanguageModel` with
the usual ``generate`` / ``generate_text``) splits a global batch across the
replicas of a ``tf.distribute.Strategy``, runs the SAME compiled decoding function (``LanguageModel._build_generate``,
``jit_compile=True``) on every replica's slice, and gathers the rows back in
order. Its output equals ``lm.generate`` row for row: every row is decoded
independently (and sampling seeds are per row), so which replica decodes a
row, and with which neighbours, changes nothing.

The plan, for a global batch of B prompts and R replicas::

    host   validate + build options: LanguageModel.generate's own code
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
step. The copy is made once per ``(lm, strategy)`` (:func:`distributed`
caches it). To avoid the extra host copy, load the model under the scope
yourself (``with strategy.scope(): lm = xladecode.load(path)``): variables
created in the strategy's scope are used as they are.
"""

from __future__ import annotations

import collections
import contextlib
import math
import re
import weakref

import numpy as np
import tensorflow as tf

from .gpt2 import GPT2
from .lm import MAX_COMPILED_FUNCTIONS, GenerateOutput, LanguageModel

# lm -> {strategy: DistributedLanguageModel}, so the weights are mirrored once.
_DISTRIBUTED: "weakref.WeakKeyDictionary[LanguageModel, dict]" = weakref.WeakKeyDictionary()


class DistributedLanguageModel(LanguageModel):
    """A :class:`~xladecode.LanguageModel` whose decoding runs split across ``strategy``'s replicas.

    Everything host-side -- validation, options, shape bucketing, slicing
    the result -- is :meth:`LanguageModel.generate`'s own code; only
    ``_run_generate`` (where the compiled function runs) is replaced. So
    ``generate``, ``generate_text`` and ``batch.generate_file`` all work
    distributed, with the same arguments and results.

    Args:
      lm: the model to distribute (its generation defaults and tokenizer are
        kept; its weights are mirrored unless already in ``strategy``'s scope).
      strategy: any ``tf.distribute.Strategy``.
    """

    def __init__(self, lm: LanguageModel, strategy: tf.distribute.Strategy):
        super().__init__(_model_in_scope(lm.model, strategy), lm.tokenizer, dict(lm.defaults))
        self.strategy = strategy
        # compiled fn -> its distributed wrapper (LRU-bounded like _compiled).
        self._steps: collections.OrderedDict[int, tuple] = collections.OrderedDict()

    def _run_generate(self, fn, input_ids: np.ndarray, attention_mask: np.ndarray, options):
        """Runs ``fn`` on every replica's share of the rows; returns the rows in order.

        Args:
          fn: the compiled decoder ``(ids, mask, options) -> (sequences,
            scores, sequences_scores)``, as built by ``_build_generate``.
          input_ids / attention_mask: int32 ``[rows, P]``, the global batch.
          options: :class:`~xladecode.decoding.DecodeOptions`; ``seeds`` [rows, 2]
            and ``sample_index`` [rows] are per row, the rest is shared.

        Returns:
          The three output tensors of ``fn`` for all ``rows`` (beam search:
          ``rows * num_return_sequences`` rows), as if ``fn`` ran on one device.
        """
        replicas = self.strategy.num_replicas_in_sync
        rows = input_ids.shape[0]
        per_replica = math.ceil(rows / replicas)
        # Pad to a multiple of the replica count with copies of row 0 (valid
        # prompts; decoded, then dropped).
        take = np.concatenate([np.arange(rows), np.zeros(per_replica * replicas - rows, np.int64)])
        per_row = (input_ids[take], attention_mask[take],
                   options.seeds.numpy()[take], options.sample_index.numpy()[take])

        def slice_for(context, array):
            # Runs once per replica (on its worker): the rows of replica r.
            start = context.replica_id_in_sync_group * per_replica
            return tf.constant(array[start:start + per_replica])

        distributed = [self.strategy.experimental_distribute_values_from_function(
            lambda context, a=array: slice_for(context, a)) for array in per_row]
        sequences, scores, sequences_scores = self._step(fn)(*distributed, options)
        out_rows = sequences.shape[0] // (per_replica * replicas) * rows  # beams: nrs rows per prompt
        return sequences[:out_rows], scores[:out_rows], sequences_scores[:out_rows]

    def _step(self, fn):
        """``fn`` wrapped in a ``tf.function`` that runs it on every replica and gathers."""
        if id(fn) in self._steps:
            self._steps.move_to_end(id(fn))
            return self._steps[id(fn)][1]
        strategy = self.strategy

        @tf.function(autograph=False)  # no Python control flow over tensors to convert
        def step(input_ids, attention_mask, seeds, sample_index, options):
            def replica_fn(ids, mask, row_seeds, row_index):
                # Replica context: the shared options, this replica's per-row fields.
                return fn(ids, mask, options._replace(seeds=row_seeds, sample_index=row_index))

            results = strategy.run(replica_fn, args=(input_ids, attention_mask, seeds, sample_index))
            # Concatenate the replicas' rows in replica order (across workers too).
            return tuple(strategy.gather(r, axis=0) for r in results)

        self._steps[id(fn)] = (fn, step)  # holding fn keeps id(fn) unique while cached
        if len(self._steps) > MAX_COMPILED_FUNCTIONS:
            self._steps.popitem(last=False)
        return step


def generate_distributed(lm: LanguageModel, strategy: tf.distribute.Strategy, input_ids,
                         attention_mask=None, **kwargs) -> GenerateOutput:
    """``lm.generate(input_ids, attention_mask, **kwargs)`` split across ``strategy``'s replicas.

    Args:
      lm: a :class:`~xladecode.LanguageModel`.
      strategy: a ``tf.distribute.Strategy`` (Mirrored, MultiWorkerMirrored, TPU).
      input_ids: int ``[batch, P]`` left-padded prompts: the GLOBAL batch, any
        size (padded to a multiple of the replica count, padding dropped).
      attention_mask: int ``[batch, P]`` or None.
      **kwargs: any :meth:`LanguageModel.generate` option.

    Returns:
      :class:`~xladecode.GenerateOutput`, equal row for row to ``lm.generate``.

    Raises:
      tf.errors.UnavailableError: another worker died (see :func:`worker_failures_explained`).
    """
    with worker_failures_explained():
        return distributed(lm, strategy).generate(input_ids, attention_mask, **kwargs)


def distributed(lm: LanguageModel, strategy: tf.distribute.Strategy) -> DistributedLanguageModel:
    """The (cached) :class:`DistributedLanguageModel` of ``lm`` on ``strategy``."""
    per_lm = _DISTRIBUTED.setdefault(lm, {})
    if strategy not in per_lm:
        per_lm[strategy] = DistributedLanguageModel(lm, strategy)
    return per_lm[strategy]


def _model_in_scope(model, strategy: tf.distribute.Strategy):
    """``model`` if its variables were created in ``strategy``'s scope, else a mirrored GPT2 copy."""
    variables = list(getattr(model, "variables", ()))
    if variables and all(strategy.extended.variable_created_in_scope(v) for v in variables):
        return model
    if not isinstance(model, GPT2):
        raise TypeError(f"cannot mirror a {type(model).__name__}: only GPT2 weights are copied into "
                        "the strategy's scope; create your model under `with strategy.scope():` instead")
    weights = model.hf_weights()
    with strategy.scope():  # every tf.Variable made here is a MirroredVariable (one copy per replica)
        return GPT2(model.config, weights, dtype=model.dtype)


@contextlib.contextmanager
def worker_failures_explained():
    """Re-raises TF's error for a dead or unreachable peer worker with a message that says so.

    When a worker process of a multi-worker job dies, the collectives of
    the others fail promptly -- gRPC sees the closed socket ("Socket
    closed", or the connection refused) -- as ``tf.errors.UnavailableError``,
    with a graph trace and a hint to "restart your program". The error keeps
    its type (callers may catch it) and gets a first sentence naming the
    worker. A peer that hangs without dying is not detected this way: bound
    collectives with ``tf.distribute.experimental.CommunicationOptions(
    timeout_seconds=...)`` (``DeadlineExceededError``, explained here too).
    """
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        peer = re.search(r"/job:[\w-]+/replica:\d+/task:\d+", error.message)
        cause = re.search(r"aborted by: (.*)", error.message)
        message = (f"distributed generate failed: a worker of the job died or does not answer "
                   f"({peer.group(0) if peer else 'peer unknown'}: "
                   f"{cause.group(1) if cause else error.message.strip().splitlines()[-1]}). "
                   "Collectives in this process are aborted too: restart every worker of the job.")
        raise type(error)(error.node_def, error.op, message) from error
