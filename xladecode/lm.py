"""``LanguageModel``: the public face, a thin facade over the request layer.

The split of work:

* ``options.py``  every decoding option, defined once; validation;
* ``request.py``  one call -> validated arrays, option tensors, shape plan;
* ``compiled.py`` one compiled decoder per (shapes, strategy), LRU-cached;
* ``placement.py`` where it runs (one device, or a ``tf.distribute`` strategy).

``LanguageModel`` holds a model, its tokenizer and default options, and
wires those together. Batch jobs, export and distributed decoding use the
same public functions; none of them needs anything private from here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from . import plan
from . import request as request_layer
from . import streaming, validation
from .checkpoint import read_generation_config, resolve_checkpoint
from .compiled import MAX_COMPILED_FUNCTIONS, FunctionCache, build_generate, build_stream
from .gpt2 import GPT2
from .options import GenerationOptions
from .placement import OneDevice
from .tokenizer import Tokenizer


@dataclasses.dataclass
class GenerateOutput:
    """What ``generate`` returns (numpy arrays).

    Attributes:
      sequences: int32 ``[rows, prompt_len + max_new_tokens]``: the
        (left-padded) prompt, the new tokens, ``pad_token_id`` after EOS.
        ``rows = batch * num_return_sequences``, grouped by prompt.
      scores: float32 ``[rows, max_new_tokens]`` log-probability of each chosen
        token under the processed distribution (0 after EOS), when
        ``output_scores=True``; else None.
      sequences_scores: float32 ``[rows]`` beam search's length-penalised
        score; None for greedy / sampling.
    """

    sequences: np.ndarray
    scores: np.ndarray | None = None
    sequences_scores: np.ndarray | None = None


class EncodedPrompts(NamedTuple):
    """What :meth:`LanguageModel.encode_prompts` returns: the token side of a text call."""

    input_ids: np.ndarray  # int32 [batch, P], left-padded with options.pad_token_id
    attention_mask: np.ndarray  # int32 [batch, P], 0 on padding
    skip_ids: set  # ids left out of decoded text: the EOS ids and the pad id
    options: GenerationOptions  # the checked decoding options


class LanguageModel:
    """A decoder model plus (optionally) its tokenizer and generation defaults.

    Args:
      model: any ``protocol.DecoderModel`` (``logits`` also needs its
        optional ``forward``; see protocol.py).
      tokenizer: a :class:`Tokenizer` or None.
      generation_config: dict of defaults (``generation_config.json``), over
        transformers' defaults and the model config's eos/pad ids.
      bucket_shapes: round batch, prompt width and the new-token buffer up to
        shared buckets so that varied calls share compiled graphs (results
        are unchanged: extra left padding and filler rows are invisible).
      placement: where decoding runs (``placement.OneDevice()`` by default,
        or ``placement.Replicated(strategy)``).
      max_compiled_functions: how many compiled functions to keep (LRU).
    """

    def __init__(self, model, tokenizer: Tokenizer | None = None, generation_config: dict | None = None,
                 bucket_shapes: bool = True, placement=None,
                 max_compiled_functions: int = MAX_COMPILED_FUNCTIONS):
        self.placement = placement or OneDevice()
        self.model = self.placement.place_model(model)
        self.tokenizer = tokenizer
        self.bucket_shapes = bucket_shapes
        self.defaults = GenerationOptions.from_generation_config(generation_config,
                                                                 getattr(model, "config", None))
        self.functions = FunctionCache(max_compiled_functions)

    @property
    def compile_count(self) -> int:
        """Traces of generation functions so far: one per XLA compile."""
        return self.functions.traces

    @property
    def max_compiled_functions(self) -> int:
        return self.functions.max_size

    @max_compiled_functions.setter
    def max_compiled_functions(self, value: int) -> None:
        self.functions.max_size = validation.integer("max_compiled_functions", value, 1)

    def with_placement(self, placement) -> "LanguageModel":
        """The same model, tokenizer and every setting, decoding at ``placement``."""
        clone = LanguageModel(self.model, self.tokenizer, None, self.bucket_shapes, placement,
                              self.max_compiled_functions)
        clone.defaults = self.defaults
        return clone

    # ------------------------------------------------------------------ logits
    def logits(self, input_ids, attention_mask=None, jit_compile: bool = True) -> np.ndarray:
        """All-position next-token logits, no cache.

        Args:
          input_ids: int ``[batch, T]`` (or ``[T]``).
          attention_mask: int ``[batch, T]`` left-padding mask, or None.

        Returns:
          float32 ``[batch, T, vocab]``. Rows at pad positions are meaningless.
        """
        ids = validation.token_array(input_ids, self.model.vocab_size)
        mask = validation.mask_array(attention_mask, ids)
        if ids.shape[1] > self.model.max_positions:
            validation.fail("input_ids", f"length {ids.shape[1]}",
                            f"must be <= n_positions={self.model.max_positions}")
        jit_compile = validation.boolean("jit_compile", jit_compile)
        fn = self.functions.get(("logits", jit_compile), lambda: tf.function(
            self.model.forward, jit_compile=jit_compile, autograph=False))
        return fn(tf.constant(ids), tf.constant(mask)).numpy()

    # ---------------------------------------------------------------- generate
    def prepare(self, input_ids, attention_mask=None, **options) -> request_layer.Request:
        """Validates a ``generate`` call: see :func:`xladecode.request.prepare`."""
        return request_layer.prepare(self.model, self.defaults, input_ids, attention_mask,
                                     bucketed=self.bucket_shapes, row_multiple=self.placement.row_multiple,
                                     tokenizer=self.tokenizer, **options)

    def compiled_generate(self, call: request_layer.Request, jit_compile: bool = True):
        """The cached compiled decoder for a prepared call (``compiled.build_generate``).

        Cached by the call's whole compile key (shapes and strategy), so each
        cache entry holds exactly one trace: one XLA program.
        """
        return self.functions.get(("generate",) + call.compile_key + (jit_compile,), lambda: build_generate(
            self.model, call.plan.buffer, call.strategy, jit_compile, on_trace=self.functions.count_trace))

    def compiled_stream(self, call: request_layer.Request, jit_compile: bool = True):
        """The cached ``compiled.StreamPrograms`` (prefill, resume) of a prepared call.

        Same cache and key as :meth:`compiled_generate`, under "stream": one
        compile of each program per shape bucket and strategy, whatever the
        chunk size.
        """
        return self.functions.get(("stream",) + call.compile_key + (jit_compile,), lambda: build_stream(
            self.model, call.plan.buffer, call.strategy, jit_compile, on_trace=self.functions.count_trace))

    def generate(self, input_ids, attention_mask=None, *, jit_compile: bool = True,
                 **options) -> GenerateOutput:
        """Generates continuations of left-padded prompts in one compiled call.

        Option names and meanings follow transformers' ``generate()``; each is
        defined once in :class:`~xladecode.options.GenerationOptions` (type,
        default, range). An option not given takes the checkpoint's
        ``generation_config.json`` value, else transformers' default.

        Args:
          input_ids: int ``[batch, P]`` token ids (left-padded), or ``[P]``.
          attention_mask: int ``[batch, P]``, 1 = token, 0 = left padding.
          jit_compile: False runs the same graph without XLA.
          **options: decoding options, e.g. ``max_new_tokens`` (prompt + new
            tokens <= n_positions), ``do_sample`` with ``temperature``,
            ``top_k`` (0 = off), ``top_p`` (1 = off); ``num_beams`` > 1 for
            beam search (``length_penalty``, ``early_stopping`` in {True,
            False, "never"}); ``num_return_sequences``; ``seed``: ``(a, b)``,
            an int, or int ``[batch, 2]`` per prompt (a row's sample depends
            only on its prompt, its seed and which of its return sequences it
            is; None draws a random seed); ``output_scores``.

        Returns:
          :class:`GenerateOutput`.
        """
        jit_compile = validation.boolean("jit_compile", jit_compile)
        call = self.prepare(input_ids, attention_mask, **options)
        fn = self.compiled_generate(call, jit_compile)
        sequences, scores, sequences_scores = self.placement.run(fn, call.input_ids, call.attention_mask,
                                                                 call.options)
        plan, per_prompt = call.plan, call.strategy.rows_out_per_prompt
        return GenerateOutput(
            sequences=plan.visible(sequences.numpy(), per_prompt),
            scores=plan.visible(scores.numpy(), per_prompt, new_tokens_only=True)
            if call.checked.output_scores else None,
            sequences_scores=plan.visible(sequences_scores.numpy(), per_prompt)
            if call.strategy.kind == "beam" else None,
        )

    # ------------------------------------------------------------------- score
    def score(self, texts: str | Sequence[str], *, jit_compile: bool = True):
        """Per-token log-probabilities and perplexity of given texts.

        Each text is tokenized (no BOS/EOS added), the batch left-padded and
        fitted to the shared shape buckets (``plan.py``: extra left padding
        and filler rows change no row's score); one full forward scores every
        token but the first of each text, like transformers' loss with
        ``labels = input_ids`` and -100 on padding. See ``scoring.py``.

        Args:
          texts: a string or a list of strings, each of 1 .. ``n_positions`` tokens.

        Returns:
          ``scoring.ScoreOutput`` (numpy): ``input_ids`` / ``attention_mask``
          ``[batch, T]``, ``token_logprobs`` / ``mask`` ``[batch, T - 1]``,
          ``perplexity`` ``[batch]`` (NaN for a one-token text).
        """
        from . import scoring  # imported late: generation never needs it

        if self.tokenizer is None:
            raise ValueError("score needs a tokenizer: the checkpoint folder has no "
                             "tokenizer.json (or vocab.json + merges.txt)")
        texts = validation.prompt_texts("texts", texts)
        ids, mask = self.tokenizer.encode_batch(texts, pad_token_id=0)
        rows, width = ids.shape
        limit = self.model.max_positions
        if width > limit:
            validation.fail("texts", f"a text of {width} tokens", f"must be <= n_positions={limit} tokens")
        if self.bucket_shapes:
            padded_ids, padded_mask = plan.left_pad(ids, mask, min(plan.bucket(width, plan.PROMPT_BUCKET_MIN), limit), 0)
            padded_ids, padded_mask = plan.fit_rows((padded_ids, padded_mask), plan.bucket(rows, 1))
        else:
            padded_ids, padded_mask = tf.constant(ids), tf.constant(mask)
        fn = self.functions.get(("score", jit_compile), lambda: tf.function(
            lambda i, m: scoring.score(self.model, i, m), jit_compile=jit_compile, autograph=False))
        logprobs, scored = fn(padded_ids, padded_mask)
        extra = int(padded_ids.shape[1]) - width  # bucketing columns, dropped again
        logprobs, scored = logprobs.numpy()[:rows, extra:], scored.numpy()[:rows, extra:]
        return scoring.ScoreOutput(ids, mask, logprobs, scored, scoring.perplexity(logprobs, scored).numpy())

    def export(self, path, **options):
        """Writes this model and its decoding loop as a SavedModel; see :func:`xladecode.export.export`.

        Example::

            lm.export("serving/gpt2/1", strategy="sample", max_new_tokens_buffer=64)
        """
        from . import export  # imported late: most users never export

        return export.export(self, path, **options)

    def generate_text(self, prompts: str | Sequence[str], *, jit_compile: bool = True,
                      trim_stop_strings: bool = True, **options) -> list[str]:
        """Tokenizes, generates and decodes; returns only the new text of each row.

        Args:
          prompts: a string or a list of strings.
          trim_stop_strings: with ``stop_strings``, a row that ended on a stop
            string is cut just before it (the usual "stop sequence" contract
            of text APIs: the stop marks where the answer ends and is not part
            of it). False returns the text as generated, like transformers:
            the stop string stays, and so does the rest of the token that
            completed it. The rule is ``stop_strings.trim_stop_string``'s: the
            row ended where a stop string first *ends* (the prompt counts, so
            a stop string may begin in it); rows that ended on EOS or the
            length limit are never cut.
          jit_compile, **options: as for :meth:`generate`.

        Returns:
          ``batch * num_return_sequences`` strings, grouped by prompt.
        """
        trim = validation.boolean("trim_stop_strings", trim_stop_strings)
        prompts = validation.prompt_texts("prompts", prompts)
        encoded = self.encode_prompts(prompts, **options)
        out = self.generate(encoded.input_ids, encoded.attention_mask, jit_compile=jit_compile, **options)
        texts = self.tokenizer.decode_batch(out.sequences[:, encoded.input_ids.shape[1]:],
                                            skip_ids=encoded.skip_ids)
        stop = encoded.options.stop_strings
        if stop is None or not trim:
            return texts
        from .stop_strings import trim_texts

        return trim_texts(texts, stop, prompts)

    def encode_prompts(self, prompts: str | Sequence[str], **options):
        """The token side of a text call (``generate_text``, ``stream_text``).

        Args:
          prompts: a string or a list of strings.
          **options: decoding options (checked here; they fix the pad id).

        Returns:
          :class:`EncodedPrompts` ``(input_ids int32 [batch, P],
          attention_mask int32 [batch, P], skip_ids, options)``: left-padded
          prompts, the set of ids left out of the decoded text (the EOS ids
          and the pad id), and the checked :class:`GenerationOptions`.
        """
        if self.tokenizer is None:
            raise ValueError("generate_text and stream_text need a tokenizer: the checkpoint folder has no "
                             "tokenizer.json (or vocab.json + merges.txt)")
        prompts = validation.prompt_texts("prompts", prompts)
        checked = self.prepare([[0]], None, **options).checked  # validates options, resolves eos/pad
        ids, mask = self.tokenizer.encode_batch(prompts, pad_token_id=checked.pad_token_id)
        return EncodedPrompts(ids, mask, set(checked.eos_token_id) | {checked.pad_token_id}, checked)

    # --------------------------------------------------------------- streaming
    def stream(self, input_ids, attention_mask=None, *, chunk_size: int = streaming.DEFAULT_CHUNK_SIZE,
               jit_compile: bool = True, **options):
        """Yields new tokens a chunk of steps at a time, the loop still compiled.

        See :func:`xladecode.streaming.stream`. Example::

            for chunk in lm.stream(ids, mask, max_new_tokens=64, chunk_size=8):
                chunk.tokens      # int32 [rows, <= 8]: the tokens of these steps
                chunk.finished    # bool [rows]

        Returns:
          An iterator of :class:`~xladecode.streaming.StreamChunk`.
        """
        return streaming.stream(self, input_ids, attention_mask, chunk_size=chunk_size,
                                jit_compile=jit_compile, **options)

    def stream_text(self, prompts: str | Sequence[str], *, chunk_size: int = streaming.DEFAULT_CHUNK_SIZE,
                    jit_compile: bool = True, **options):
        """Yields each row's new text as it is decided; see :func:`xladecode.streaming.stream_text`.

        Example::

            for pieces in lm.stream_text("ROMEO:", max_new_tokens=64):
                print(pieces[0], end="", flush=True)

        Returns:
          An iterator of lists of strings, one piece per row.
        """
        return streaming.stream_text(self, prompts, chunk_size=chunk_size, jit_compile=jit_compile,
                                     **options)


def default_model_path() -> Path:
    """Folder of the shipped default checkpoint (``models/gpt2-shakespeare``).

    Found next to the package in a source checkout / editable install, else
    inside the installed package (``xladecode/_default_model``).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models" / "gpt2-shakespeare", here / "_default_model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError("the default model is not installed; pass a checkpoint folder")


def load(path_or_name: str | os.PathLike | None = None, *, dtype: str = "float32") -> LanguageModel:
    """Loads a GPT-2 checkpoint folder (or a cached HF name) into a :class:`LanguageModel`.

    Args:
      path_or_name: checkpoint folder, a model name in the local Hugging Face
        cache, or None for the shipped default model.
      dtype: "float32" or "bfloat16" weights.

    Raises:
      FileNotFoundError: no such folder / no config.json / no safetensors
        weights (pickle checkpoints are refused, with how to convert).
      ValueError: an unsupported config value, or missing/extra/misshaped tensors.
    """
    if not isinstance(dtype, str) or dtype not in ("float32", "bfloat16"):  # tf.bfloat16 == "bfloat16"!
        validation.fail("dtype", dtype, 'must be the string "float32" or "bfloat16"')
    folder = default_model_path() if path_or_name is None else resolve_checkpoint(path_or_name)
    model = GPT2.from_pretrained(folder, dtype=getattr(tf, dtype))
    try:
        tokenizer = Tokenizer.from_folder(folder)
    except FileNotFoundError:
        tokenizer = None
    return LanguageModel(model, tokenizer, read_generation_config(folder))
