"""The compiled decoder: one ``tf.function`` per (shapes, strategy), and the cache that keeps them.

``build_generate(model, buffer, strategy, jit_compile)`` returns the function
every entry point runs -- ``LanguageModel.generate``, batch jobs, distributed
decoding and the exported SavedModel::

    fn = build_generate(model, buffer=32, strategy=Strategy.greedy(), jit_compile=True)
    sequences, scores, sequences_scores = fn(input_ids, attention_mask, decode_options)
    #  int32 [B, P + 32]  float32 [B, 32]  float32 [B]  (B = rows, beams: prompts * nrs)

What picks the program is a Python value (a compile key): the shapes of the
inputs, the buffer width and the :class:`Strategy`. Everything else arrives as
tensors in ``decoding.DecodeOptions``, so changing a value reuses the program.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, NamedTuple

import tensorflow as tf

from . import beam_search, decoding, speculative

#: How many compiled generation functions a :class:`FunctionCache` keeps by
#: default (least recently used are dropped), so a long-running process cannot
#: grow forever. Each holds its traced graph and XLA executable: measured
#: ~35 MB on the default model (``tools/compile_count.py`` prints the RSS).
MAX_COMPILED_FUNCTIONS = 64


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How tokens are chosen: the part of a request that changes the graph.

    Attributes:
      kind: "greedy", "sample" or "beam".
      num_beams: beam width (1 unless beam).
      num_return_sequences: rows per prompt.
      beam_sample: beam search draws its candidates (``do_sample`` with beams).
      num_eos_ids: distinct EOS ids; sizes beam search's candidate pool (beam only).
    """

    kind: str = "greedy"
    num_beams: int = 1
    num_return_sequences: int = 1
    beam_sample: bool = False
    num_eos_ids: int = 1
    drafter_key: tuple | None = None  # speculative decoding: the drafter's compile key
    drafter: Any = dataclasses.field(default=None, compare=False)  # the drafter itself

    @classmethod
    def from_options(cls, checked) -> "Strategy":
        """The strategy of checked ``options.GenerationOptions``."""
        if checked.num_beams > 1:
            return cls("beam", checked.num_beams, checked.num_return_sequences, checked.do_sample,
                       len(set(checked.eos_token_id)))
        drafter = _drafter(checked)
        kind = "sample" if checked.do_sample else "greedy"
        return cls(kind, 1, checked.num_return_sequences if checked.do_sample else 1,
                   drafter_key=drafter.compile_key() if drafter else None, drafter=drafter)

    @property
    def rows_per_prompt(self) -> int:
        """Rows decoded per prompt: several samples are separate rows; beams are not."""
        return self.num_return_sequences if self.kind == "sample" else 1

    @property
    def rows_out_per_prompt(self) -> int:
        """Rows returned per prompt."""
        return self.num_return_sequences


def _drafter(checked):
    """The speculative drafter the options ask for, or None."""
    from . import drafters

    if checked.prompt_lookup_num_tokens:
        return drafters.PromptLookupDrafter(checked.prompt_lookup_num_tokens, checked.max_matching_ngram_size,
                                            checked.prompt_lookup_max_backoff, checked.prompt_lookup_latest_match)
    if checked.assistant_model is not None:
        return drafters.ModelDrafter(checked.assistant_model, checked.num_assistant_tokens)
    return None


def build_generate(model, buffer: int, strategy: Strategy, jit_compile: bool = True,
                   on_trace: Callable[[], None] | None = None):
    """The compiled decoding function for one buffer width and strategy.

    Args:
      model: any ``protocol.DecoderModel``.
      buffer: Python int, new-token buffer width N (>= ``options.max_new_tokens``).
      strategy: a :class:`Strategy`.
      jit_compile: XLA-compile (False runs the same graph without XLA).
      on_trace: called once per trace, i.e. once per compile (compile counting).

    Returns:
      A ``tf.function`` ``(input_ids int32 [B, P], attention_mask int32 [B, P],
      options DecodeOptions) -> (sequences int32 [B', P + N], scores float32
      [B', N], sequences_scores float32 [B'])`` with ``B' = B`` except for
      beams (``B * num_return_sequences``).
    """

    if strategy.drafter is not None:
        speculative.prepare(model)  # eagerly, outside any trace or replica context

    def generate_graph(input_ids, attention_mask, options):
        if on_trace is not None:
            on_trace()  # Python code: runs at trace time only
        if strategy.kind == "beam":
            return beam_search.beam_search(model, input_ids, attention_mask, options, buffer,
                                           strategy.num_beams, strategy.num_return_sequences,
                                           strategy.beam_sample, strategy.num_eos_ids)
        if strategy.drafter is not None:  # speculative: same outputs, several tokens per forward
            sequences, scores, _ = speculative.speculative_loop(model, input_ids, attention_mask, options, buffer,
                                                                strategy.kind == "sample", strategy.drafter)
            return sequences, scores, tf.zeros([tf.shape(sequences)[0]], tf.float32)
        sequences, scores = decoding.sample_loop(model, input_ids, attention_mask, options, buffer,
                                                 strategy.kind == "sample")
        return sequences, scores, tf.zeros([tf.shape(sequences)[0]], tf.float32)

    # autograph=False: the decoder's control flow is explicit (tf.while_loop,
    # tf.cond), so there is no Python `if`/`for` over tensors to convert, and
    # skipping the conversion makes tracing markedly faster.
    return tf.function(generate_graph, jit_compile=jit_compile, autograph=False)


class StreamPrograms(NamedTuple):
    """The two compiled halves of a paused loop (``streaming.py`` explains why two)."""

    begin: Callable  # (input_ids, attention_mask, options) -> decoding.SamplingState   (prefill)
    advance: Callable  # (state, attention_mask, options, stop_step int32 []) -> decoding.SamplingState


def build_stream(model, buffer: int, strategy: Strategy, jit_compile: bool = True,
                 on_trace: Callable[[], None] | None = None) -> StreamPrograms:
    """The compiled ``begin`` and ``advance`` of a streamed loop, for one buffer width and strategy.

    ``begin`` runs the prefill and returns the loop state; ``advance`` resumes
    a state and runs ``decoding.decode_step`` until ``state.step ==
    stop_step`` (or the loop would have ended). The stop step is a tensor, so
    every chunk size shares the one ``advance`` program.

    Args:
      model: any ``protocol.DecoderModel``.
      buffer: Python int, new-token buffer width N (>= ``options.max_new_tokens``).
      strategy: a greedy or sampling :class:`Strategy` without a drafter.
      jit_compile: XLA-compile (False runs the same graphs without XLA).
      on_trace: called once per trace of either program.

    Returns:
      :class:`StreamPrograms`; the state is a ``decoding.SamplingState``
      (``sequences`` int32 ``[B, P + N]``, ``finished`` bool ``[B]``, ...).
    """
    if strategy.kind == "beam" or strategy.drafter is not None:
        raise ValueError(f"build_stream: a {strategy.kind} strategy with drafter {strategy.drafter_key} "
                         "cannot be streamed (greedy or sampling only)")
    do_sample = strategy.kind == "sample"

    def begin(input_ids, attention_mask, options):
        if on_trace is not None:
            on_trace()  # Python code: runs at trace time only
        state, _ = decoding.start(model, input_ids, attention_mask, options, buffer, do_sample)
        return state

    def advance(state, attention_mask, options, stop_step):
        if on_trace is not None:
            on_trace()
        constants = decoding.loop_constants(model, attention_mask, options, buffer, do_sample)
        return decoding.decode_until(state, constants, stop_step, buffer)

    return StreamPrograms(tf.function(begin, jit_compile=jit_compile, autograph=False),
                          tf.function(advance, jit_compile=jit_compile, autograph=False))


class FunctionCache:
    """Compiled functions by key, least recently used dropped beyond ``max_size``.

    ``traces`` counts traces of the functions built through :meth:`get` with
    ``counted=True``: each trace is one new graph for XLA to compile, so tests
    use it to prove that changing option values does not recompile.
    """

    def __init__(self, max_size: int = MAX_COMPILED_FUNCTIONS):
        self.max_size = max_size
        self.traces = 0
        self._functions: collections.OrderedDict[Any, Any] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._functions)

    def count_trace(self) -> None:
        """Pass as ``build_generate(on_trace=...)``."""
        self.traces += 1

    def get(self, key, build: Callable[[], Any]):
        """The function for ``key``, built with ``build()`` on first use."""
        if key in self._functions:
            self._functions.move_to_end(key)
            return self._functions[key]
        fn = build()
        self._functions[key] = fn
        while len(self._functions) > self.max_size:
            self._functions.popitem(last=False)
        return fn
