"""Streaming: tokens (and text) as they are decided, with the decoding loop still compiled.

``lm.generate`` runs the whole loop as one XLA program, so nothing comes back
before the last token. To stream, the host must get control back while
decoding is under way. The options, and why this module takes the third:

1. **A callback from inside the graph** (``tf.py_function``, a host
   callback): XLA cannot compile a Python call; ``jit_compile=True`` refuses
   it, and TPU-only ``outside_compilation`` is no answer on CPU/GPU.
2. **An eager Python loop over** ``decoding.decode_step``: exactly what
   ``debug.step_through`` does for inspection, and several times slower (the
   tour's first chapter measures it).
3. **Pause and resume the compiled loop.** The loop state is already an
   explicit, fixed-shape value, ``decoding.SamplingState`` (tokens, the KV
   cache, finished flags, ...). So we compile two programs::

       begin(input_ids, attention_mask, options)        -> state      prefill
       advance(state, attention_mask, options, stop)    -> state      steps until state.step == stop

   and the host alternates: ``begin`` once, then ``advance`` a chunk of
   ``chunk_size`` steps at a time, yielding the tokens of each chunk.

Why the streamed tokens ARE ``generate``'s tokens: ``advance`` runs the same
``decoding.decode_step`` on the same state, and sampling draws its random
numbers from (seed, row, step, token) with no carried RNG state
(``sampling.py``), so where the loop pauses cannot change a draw. The tests
hold it to that for greedy and seeded sampling, any chunk size, left padding,
EOS and several rows.

Where the programs come from: ``lm.prepare`` (the request layer: options,
validation, ``plan.plan_shapes``) makes the same :class:`~xladecode.request.Request`
as for ``generate``, and ``lm.compiled_stream`` builds the two programs with
``compiled.build_stream``, cached in the model's ``FunctionCache`` under the
request's compile key (shapes, strategy). ``stop`` is a tensor, not a compile
key: the chunk size only bounds how far one ``advance`` call runs, so every
chunk size -- and a last, shorter chunk -- share one program (a Python chunk
size would make ``maximum_iterations`` static and compile once per size, for
no speed gained: the loop condition is checked every step anyway).

The price, per chunk: one host round trip, and the state goes in and out of
the program. TensorFlow cannot donate an input buffer to an XLA program, so
``advance`` copies the KV cache once per chunk (a memcpy, small next to a
chunk of decoding steps). ``tools/bench_streaming.py`` measures the overhead
against one-shot ``generate``.

Beam search is refused (an error naming ``num_beams``): beams are re-ranked
at every step, so a token of the best beam so far can still be replaced by
another beam's; nothing is decided before the end. Speculative decoding
(``prompt_lookup_num_tokens``, ``assistant_model``) and multi-device
placements are refused too, by name.

Text (:func:`stream_text`): GPT-2's byte-level BPE decodes a token list by
joining the tokens' bytes and reading them as UTF-8, so decoding a longer
list only appends text -- except that a character whose bytes are split
across tokens decodes to U+FFFD until its last byte arrives. :class:`TextPieces`
therefore re-decodes a row's tokens and shows everything but a trailing run
of U+FFFD, which it holds back until more tokens (or the end) settle it.
Shown text is never taken back, and the pieces of a row join to exactly
``generate_text``'s text. A piece always ends at a token boundary, so no BPE
merge is split either; and since a byte-level decoder adds no spaces between
tokens, nothing needs the word-boundary wait of transformers' ``TextStreamer``
(which exists for decoders that rewrite spaces).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from . import validation
from .compiled import StreamPrograms
from .options import INT32_MAX
from .placement import OneDevice

#: New tokens per row decoded between two yields, by default. Bigger chunks
#: cost less (one host round trip per chunk) but show text later. 16 keeps the
#: overhead against one-shot generate within 5% on the shipped model at batch 1
#: (8 did not: ~10% of CPU time; tools/bench_streaming.py, README "Measured").
DEFAULT_CHUNK_SIZE = 16

REPLACEMENT_CHARACTER = "\ufffd"  # what a UTF-8 decoder shows for an incomplete character


@dataclasses.dataclass(frozen=True)
class StreamChunk:
    """The tokens decided by one chunk of decoding steps, for every row.

    Attributes:
      tokens: int32 ``[rows, n]``, 1 <= n <= ``chunk_size``: each row's tokens
        for steps ``step - n .. step - 1``; ``pad_token_id`` after the row's
        EOS, as in ``generate``. ``rows = batch * num_return_sequences``,
        grouped by prompt.
      finished: bool ``[rows]``: the row has emitted EOS by the end of this chunk.
      step: new tokens per row so far, this chunk included.
      scores: float32 ``[rows, n]`` log-probabilities of ``tokens`` (as
        ``generate``'s ``scores``) with ``output_scores=True``, else None.

    Joined along axis 1, the chunks' tokens equal ``generate(...).sequences[:,
    prompt_len:prompt_len + step]``; ``generate``'s later columns are all pad
    (the stream ends when every row has finished or at ``max_new_tokens``).
    """

    tokens: np.ndarray
    finished: np.ndarray
    step: int
    scores: np.ndarray | None = None


def stream(lm, input_ids, attention_mask=None, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
           jit_compile: bool = True, **options) -> Iterator[StreamChunk]:
    """Decodes like ``lm.generate`` and yields each row's new tokens a chunk at a time.

    Everything is checked when this is called (before any compile), not at
    the first ``next()``.

    Args:
      lm: a ``LanguageModel`` on one device.
      input_ids, attention_mask, jit_compile, **options: as for ``lm.generate``;
        greedy or sampling (``num_beams`` must be 1).
      chunk_size: decoding steps between two yields, >= 1. Not a compile key:
        any value reuses the same programs.

    Returns:
      An iterator of :class:`StreamChunk`.

    Raises:
      ValueError: as ``generate``; and for ``chunk_size`` < 1, ``num_beams`` > 1
        or a placement over several devices.
    """
    chunk_size = validation.integer("chunk_size", chunk_size, 1, INT32_MAX)
    jit_compile = validation.boolean("jit_compile", jit_compile)
    call = lm.prepare(input_ids, attention_mask, **options)
    if call.strategy.kind == "beam":
        validation.fail("num_beams", call.checked.num_beams,
                        "must be 1 to stream: beam search re-ranks its beams at every step, so no "
                        "token is decided before the end (use generate)")
    if call.strategy.drafter is not None:
        name = "prompt_lookup_num_tokens" if call.checked.prompt_lookup_num_tokens else "assistant_model"
        validation.fail(name, getattr(call.checked, name),
                        "must be off to stream: speculative decoding is not streamed (its tokens equal "
                        "plain decoding's, so stream without it, or use generate)")
    if not isinstance(lm.placement, OneDevice):
        validation.fail("placement", type(lm.placement).__name__,
                        "streaming runs on one device: use lm.with_placement(placement.OneDevice())")
    return _chunks(lm.compiled_stream(call, jit_compile), call, chunk_size)


def _chunks(programs: StreamPrograms, call, chunk_size: int) -> Iterator[StreamChunk]:
    """The host loop: ``begin``, then ``advance`` one chunk at a time until the loop is done."""
    rows = call.plan.batch * call.strategy.rows_per_prompt  # filler rows of the shape plan are dropped
    width, limit = call.plan.width, call.checked.max_new_tokens
    state = programs.begin(call.input_ids, call.attention_mask, call.options)
    done = 0
    while True:
        stop = min(done + chunk_size, limit)
        state = programs.advance(state, call.attention_mask, call.options, tf.constant(stop, tf.int32))
        step, finished = int(state.step), state.finished.numpy()
        yield StreamChunk(
            tokens=state.sequences.numpy()[:rows, width + done:width + step],
            finished=finished[:rows],
            step=step,
            scores=state.scores.numpy()[:rows, done:step] if call.checked.output_scores else None)
        if step >= limit or finished.all():  # the loop of generate would have ended here too
            return
        done = step


# ---------------------------------------------------------------------- text
class TextPieces:
    """One row's text, shown piece by piece; a piece once shown is never taken back.

    ``push(ids)`` returns the text that ``ids`` make certain; ``finish()`` the
    rest. Joined, the pieces equal ``tokenizer.decode`` of every pushed id
    outside ``skip_ids``. See the module docstring for the rule (hold back a
    trailing U+FFFD) and the decoders it holds for (byte-level BPE: GPT-2's).

    Example (GPT-2 spells "日" = bytes E6 97 A5 with three tokens)::

        pieces = TextPieces(tokenizer, skip_ids={50256})
        pieces.push([482, 10545])  -> "ok "     # "ok", then " " + byte E6: the byte waits
        pieces.push([245])         -> ""        # byte 97
        pieces.push([98])          -> "日"      # byte A5 completes the character
        pieces.finish()            -> ""
    """

    def __init__(self, tokenizer, skip_ids=()):
        self._tokenizer = tokenizer
        self._skip = frozenset(int(i) for i in skip_ids)
        self._ids: list[int] = []
        self._shown = 0  # characters of the decoded text already returned

    def push(self, ids) -> str:
        """Adds token ids (ints); returns the newly certain text (maybe "")."""
        self._ids.extend(int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in self._skip)
        text = self._tokenizer.decode(self._ids)
        certain = len(text.rstrip(REPLACEMENT_CHARACTER))
        return self._take(text, max(certain, self._shown))

    def finish(self) -> str:
        """The text still held back (the stream has ended: nothing can complete it now)."""
        text = self._tokenizer.decode(self._ids)
        return self._take(text, len(text))

    def _take(self, text: str, end: int) -> str:
        piece, self._shown = text[self._shown:end], end
        return piece


def stream_text(lm, prompts: str | Sequence[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                jit_compile: bool = True, **options) -> Iterator[list[str]]:
    """Like ``lm.generate_text``, but yields the new text as it is decided.

    Args:
      lm: a ``LanguageModel`` with a tokenizer, on one device.
      prompts: a string or a list of strings.
      chunk_size, jit_compile, **options: as for :func:`stream`.

    Returns:
      An iterator of lists of ``batch * num_return_sequences`` strings (grouped
      by prompt): each row's new piece of text, "" when a row has nothing new.
      Lists whose pieces are all "" are not yielded. Row ``r``'s pieces joined
      equal ``lm.generate_text(prompts, **options)[r]``; each piece is whole
      characters (valid UTF-8 once encoded).

    Raises:
      ValueError: as :func:`stream`, and when ``lm`` has no tokenizer.
    """
    ids, mask, skip_ids, _ = lm.encode_prompts(prompts, **options)
    chunks = stream(lm, ids, mask, chunk_size=chunk_size, jit_compile=jit_compile, **options)
    return _text_pieces(chunks, lambda: TextPieces(lm.tokenizer, skip_ids))


def _text_pieces(chunks: Iterator[StreamChunk], new_row: Callable[[], TextPieces]) -> Iterator[list[str]]:
    rows: list[TextPieces] = []
    for chunk in chunks:
        rows = rows or [new_row() for _ in chunk.tokens]
        pieces = [row.push(tokens) for row, tokens in zip(rows, chunk.tokens)]
        if any(pieces):
            yield pieces
    rest = [row.finish() for row in rows]
    if any(rest):
        yield rest
