"""Where a compiled decoder runs: one device, or split across a ``tf.distribute`` strategy's replicas.

A placement is a value handed to ``LanguageModel`` (composition, not
subclassing). Everything host-side -- options, validation, the shape plan,
slicing results -- is the same for every placement; a placement only says

* ``row_multiple``: the compiled batch must be a multiple of it (each
  replica gets an equal share of rows);
* ``place_model(model)``: the model whose variables live where decoding runs;
* ``run(fn, input_ids, attention_mask, options)``: calls the compiled
  function ``fn`` and returns its outputs for all rows, in order.

:class:`Replicated` runs the SAME compiled decoder on every replica's slice
and gathers the rows back in order. Its output equals :class:`OneDevice`'s row
for row: rows are decoded independently (sampling seeds are per row), so
which replica decodes a row, and with which neighbours, changes nothing::

    host       rows [R*P, ...]   (the plan made them a multiple of R replicas)
    replica r  rows [r*P, (r+1)*P) -> fn -> [P, ...]
    host       strategy.gather(axis=0) -> [R*P, ...]

Per-row inputs are handed out with
``strategy.experimental_distribute_values_from_function``: replica r builds
ITS slice from its replica id, on its own worker. Nothing in that is specific
to one machine, so the same code serves ``MirroredStrategy`` (GPUs or CPU
logical devices), ``MultiWorkerMirroredStrategy`` (every worker runs the same
program on the same global batch) and ``TPUStrategy``.

**Weights** are mirrored: ``place_model`` builds a copy of the model under
``strategy.scope()`` (the model's optional ``clone()``, see protocol.py), so
each replica reads its own copy. A model whose variables were already
created in the scope is used as it is.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .compiled import FunctionCache


class OneDevice:
    """Decoding on the default device (the usual case)."""

    row_multiple = 1

    def place_model(self, model):
        return model

    def run(self, fn, input_ids, attention_mask, options):
        """``fn(input_ids, attention_mask, options)``: three output tensors."""
        return fn(input_ids, attention_mask, options)


class Replicated:
    """Data-parallel decoding across ``strategy``'s replicas.

    Args:
      strategy: any ``tf.distribute.Strategy``.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self._wrappers = FunctionCache()  # compiled fn -> its distributed wrapper

    @property
    def row_multiple(self) -> int:
        return self.strategy.num_replicas_in_sync

    def place_model(self, model):
        """``model`` if its variables live in the strategy's scope, else a mirrored clone."""
        variables = list(getattr(model, "variables", ()))
        if variables and all(self.strategy.extended.variable_created_in_scope(v) for v in variables):
            return model
        if not hasattr(model, "clone"):
            raise TypeError(f"cannot mirror a {type(model).__name__}: it has no clone() (protocol.py); "
                            "create the model under `with strategy.scope():` instead")
        with self.strategy.scope():  # every tf.Variable made here is a MirroredVariable
            return model.clone()

    def run(self, fn, input_ids, attention_mask, options):
        """Runs ``fn`` on every replica's share of the rows; returns all rows in order.

        Args:
          fn: the compiled decoder (``compiled.build_generate``).
          input_ids / attention_mask: int32 ``[rows, P]``, rows a multiple of
            the replica count.
          options: ``decoding.DecodeOptions``; ``seeds`` ``[rows, 2]`` and
            ``sample_index`` ``[rows]`` are per row, the rest is shared.

        Returns:
          The three output tensors of ``fn`` for all rows, as on one device.
        """
        replicas = self.row_multiple
        per_replica = int(input_ids.shape[0]) // replicas
        per_row = [np.asarray(a) for a in (input_ids, attention_mask, options.seeds, options.sample_index)]

        def slice_for(context, array):
            start = context.replica_id_in_sync_group * per_replica  # runs on the replica's worker
            return tf.constant(array[start:start + per_replica])

        distributed = [self.strategy.experimental_distribute_values_from_function(
            lambda context, a=array: slice_for(context, a)) for array in per_row]
        return self._wrappers.get(id(fn), lambda: (fn, self._wrap(fn)))[1](*distributed, options)

    def _wrap(self, fn):
        """``fn`` in a ``tf.function`` that runs it on every replica and gathers the rows."""
        strategy = self.strategy

        @tf.function(autograph=False)  # no Python control flow over tensors to convert
        def step(input_ids, attention_mask, seeds, sample_index, options):
            def replica_fn(ids, mask, row_seeds, row_index):
                return fn(ids, mask, options._replace(seeds=row_seeds, sample_index=row_index))

            results = strategy.run(replica_fn, args=(input_ids, attention_mask, seeds, sample_index))
            return tuple(strategy.gather(r, axis=0) for r in results)  # replica order, across workers

        return step
