"""Data-parallel decoding with ``tf.distribute``: one compiled decoder per replica.

``generate_distributed(lm, strategy, input_ids, attention_mask, **options)``
(or ``distributed(lm, strategy)``: the same :class:`~xladecode.LanguageModel`
decoding at ``placement.Replicated(strategy)``) splits a global batch across
the replicas of a ``tf.distribute.Strategy``, runs the SAME compiled decoding
function on every replica's slice, and gathers the rows back in order. The
output equals ``lm.generate`` row for row; see ``placement.py`` for how.

The distributed model keeps every setting of the one it wraps (tokenizer,
generation defaults, ``bucket_shapes``, ``max_compiled_functions``): it is
``lm.with_placement(...)``, not a subclass.
"""

from __future__ import annotations

import contextlib
import re
import weakref

import tensorflow as tf

from .lm import GenerateOutput, LanguageModel
from .placement import Replicated

# lm -> {strategy: its distributed LanguageModel}, so the weights are mirrored once.
_DISTRIBUTED: "weakref.WeakKeyDictionary[LanguageModel, dict]" = weakref.WeakKeyDictionary()


def distributed(lm: LanguageModel, strategy: tf.distribute.Strategy) -> LanguageModel:
    """``lm`` decoding across ``strategy``'s replicas (cached per ``(lm, strategy)``).

    The model's weights are mirrored once (unless already created in the
    strategy's scope); ``generate``, ``generate_text`` and
    ``batch.generate_file`` all work on the result, with the same arguments
    and results.
    """
    per_lm = _DISTRIBUTED.setdefault(lm, {})
    if strategy not in per_lm:
        per_lm[strategy] = lm.with_placement(Replicated(strategy))
    return per_lm[strategy]


def generate_distributed(lm: LanguageModel, strategy: tf.distribute.Strategy, input_ids,
                         attention_mask=None, **options) -> GenerateOutput:
    """``lm.generate(input_ids, attention_mask, **options)`` split across ``strategy``'s replicas.

    Args:
      lm: a :class:`~xladecode.LanguageModel`.
      strategy: a ``tf.distribute.Strategy`` (Mirrored, MultiWorkerMirrored, TPU).
      input_ids: int ``[batch, P]`` left-padded prompts: the GLOBAL batch, any
        size (filled to a multiple of the replica count by the shape plan).
      attention_mask: int ``[batch, P]`` or None.
      **options: any :meth:`LanguageModel.generate` option.

    Returns:
      :class:`~xladecode.GenerateOutput`, equal row for row to ``lm.generate``.

    Raises:
      tf.errors.UnavailableError: another worker died (see :func:`worker_failures_explained`).
    """
    with worker_failures_explained():
        return distributed(lm, strategy).generate(input_ids, attention_mask, **options)


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
