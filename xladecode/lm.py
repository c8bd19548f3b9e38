"""``LanguageModel``: the public face -- validation, compiled-function cache, outputs.

The split of work:

* host side (here): check arguments (``validation.py``), turn option values
  into tensors, pick the compiled function for this call's *shapes*;
* graph side (``decoding.py``, ``beam_search.py``): one traced function per
  shape key, XLA-compiled on first use, reused for any option values.

``compile_count`` counts traces of generation functions: each trace is one
new graph for XLA to compile, so tests use it to prove that changing option
values does not recompile.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from . import beam_search, decoding, processors, validation
from .checkpoint import read_generation_config, resolve_checkpoint
from .gpt2 import GPT2
from .tokenizer import Tokenizer

# transformers' generate() defaults; a checkpoint's generation_config.json
# overrides them, explicit arguments override both.
_GENERATION_DEFAULTS = dict(
    max_new_tokens=20, min_new_tokens=0, do_sample=False, temperature=1.0, top_k=50, top_p=1.0,
    num_beams=1, num_return_sequences=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
    bad_words_ids=None, suppress_tokens=None, forced_eos_token_id=None, length_penalty=1.0,
    early_stopping=False, eos_token_id=None, pad_token_id=None,
)

_EARLY_STOPPING = {False: 0, True: 1, "never": 2}

def bucket(n: int, minimum: int) -> int:
    """Smallest power of two >= max(n, minimum): 5 -> 8, 8 -> 8, 9 -> 16."""
    size = minimum
    while size < n:
        size *= 2
    return size


#: Floors of the shape buckets (see ``LanguageModel._bucketed_shapes``).
PROMPT_BUCKET_MIN = 16
BUFFER_BUCKET_MIN = 32

#: How many compiled generation functions a LanguageModel keeps (least
#: recently used are dropped), so a long-running process cannot grow forever.
#: Each one holds its traced graph and XLA executable: measured ~35 MB on the
#: default model (tools/compile_count.py prints the process RSS).
MAX_COMPILED_FUNCTIONS = 64


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


@dataclasses.dataclass
class PreparedCall:
    """A validated generate call: host arrays, option tensors and the compile key."""

    input_ids: np.ndarray  # int32 [rows, P]
    attention_mask: np.ndarray  # int32 [rows, P]
    options: decoding.DecodeOptions
    max_new_tokens: int
    do_sample: bool
    beam_key: tuple | None  # (num_beams, num_return_sequences, num_eos_ids) for beam search
    shape_key: tuple  # everything that changes a shape: one compiled graph per value
    rows: int  # output rows the caller gets (the arrays may hold filler rows after them)
    prompt_offset: int  # extra left-padding columns added by shape bucketing
    buffer: int  # new-token buffer width (>= max_new_tokens)


class LanguageModel:
    """A decoder model plus (optionally) its tokenizer and generation defaults.

    Args:
      model: any ``protocol.DecoderModel`` that also has ``forward`` (GPT2).
      tokenizer: a :class:`Tokenizer` or None.
      generation_config: dict of defaults (``generation_config.json``).
      bucket_shapes: round batch, prompt width and the new-token buffer up to
        powers of two so that varied calls share compiled graphs (results are
        unchanged: extra left padding and filler rows are invisible to a row).
    """

    def __init__(self, model, tokenizer: Tokenizer | None = None,
                 generation_config: dict | None = None, bucket_shapes: bool = True):
        self.model = model
        self.bucket_shapes = bucket_shapes
        self.tokenizer = tokenizer
        self.defaults = dict(_GENERATION_DEFAULTS)
        config_eos = getattr(getattr(model, "config", None), "eos_token_id", None)
        self.defaults["eos_token_id"] = config_eos
        self.defaults["pad_token_id"] = getattr(getattr(model, "config", None), "pad_token_id", None)
        for key, value in (generation_config or {}).items():
            if key in self.defaults:
                self.defaults[key] = value
        self._compiled: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.max_compiled_functions = MAX_COMPILED_FUNCTIONS
        self.compile_count = 0

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
        fn = self._function(("logits", jit_compile), lambda: tf.function(
            self.model.forward, jit_compile=jit_compile, autograph=False))
        return fn(tf.constant(ids), tf.constant(mask)).numpy()

    # ---------------------------------------------------------------- generate
    def generate(self, input_ids, attention_mask=None, *, max_new_tokens=None, min_new_tokens=None,
                 do_sample=None, temperature=None, top_k=None, top_p=None, num_beams=None,
                 num_return_sequences=None, repetition_penalty=None, no_repeat_ngram_size=None,
                 bad_words_ids=None, suppress_tokens=None, forced_eos_token_id=None,
                 length_penalty=None, early_stopping=None, eos_token_id=None, pad_token_id=None,
                 seed=None, output_scores: bool = False, jit_compile: bool = True) -> GenerateOutput:
        """Generates continuations of left-padded prompts in one compiled call.

        Argument names and meanings follow transformers' ``generate()``; an
        argument left as None takes the checkpoint's ``generation_config.json``
        value, else transformers' default.

        Args:
          input_ids: int ``[batch, P]`` token ids (left-padded), or ``[P]``.
          attention_mask: int ``[batch, P]``, 1 = token, 0 = left padding.
          max_new_tokens: int >= 1; prompt + new tokens <= n_positions.
          do_sample: sample instead of greedy; with ``temperature``, ``top_k``
            (0 = off), ``top_p`` (1.0 = off). ``temperature=0`` is greedy.
          num_beams: > 1 selects beam search (``length_penalty``,
            ``early_stopping`` in {True, False, "never"}).
          num_return_sequences: rows returned per prompt (sampling or beams).
          seed: ``(a, b)`` for all rows or int ``[batch, 2]`` per prompt.
            A row's sample depends only on its prompt, its seed, and which of
            its return sequences it is. None draws a random seed.
          output_scores: also return per-step log-probs (``scores``).
          jit_compile: False runs the same graph without XLA.

        Returns:
          :class:`GenerateOutput`.
        """
        arguments = locals()
        options = {k: arguments[k] for k in (*_GENERATION_DEFAULTS, "seed")}
        call = self.prepare(input_ids, attention_mask, **options)
        key = ("generate",) + call.shape_key + (jit_compile,)
        fn = self._function(key, lambda: self._build_generate(
            call.buffer, call.do_sample, call.beam_key, jit_compile))
        sequences, scores, sequences_scores = self._run_generate(fn, call.input_ids, call.attention_mask,
                                                                 call.options)
        # Drop filler rows and bucketing columns: the caller sees its own shapes.
        rows, first = call.rows, call.prompt_offset
        last = call.input_ids.shape[1] + call.max_new_tokens
        return GenerateOutput(
            sequences=sequences.numpy()[:rows, first:last],
            scores=scores.numpy()[:rows, :call.max_new_tokens] if output_scores else None,
            sequences_scores=sequences_scores.numpy()[:rows] if call.beam_key else None,
        )

    def prepare(self, input_ids, attention_mask=None, **options) -> "PreparedCall":
        """Validates a ``generate`` call and turns it into arrays + option tensors.

        Everything that can fail on user input fails here, before any trace or
        compile. Used by ``generate``, the step-by-step debugger and export.

        Args:
          input_ids, attention_mask: as for :meth:`generate`.
          **options: any :meth:`generate` decoding option (None = default).

        Returns:
          :class:`PreparedCall`; its ``input_ids`` have ``batch *
          num_return_sequences`` rows when sampling several sequences.
        """
        unknown = set(options) - set(_GENERATION_DEFAULTS) - {"seed"}
        if unknown:
            raise TypeError(f"unknown generate option(s): {', '.join(sorted(unknown))}")
        a = self._resolve(options)
        ids = validation.token_array(input_ids, self.model.vocab_size)
        mask = validation.mask_array(attention_mask, ids)
        batch, prompt_len = ids.shape
        vocab = self.model.vocab_size

        n_new = validation.positive_int("max_new_tokens", a["max_new_tokens"])
        if prompt_len + n_new > self.model.max_positions:
            validation.fail("max_new_tokens", n_new,
                            f"prompt length {prompt_len} + max_new_tokens must be <= "
                            f"n_positions={self.model.max_positions}")
        num_beams = validation.positive_int("num_beams", a["num_beams"])
        nrs = validation.positive_int("num_return_sequences", a["num_return_sequences"])
        do_sample = bool(a["do_sample"])
        if nrs > 1 and num_beams == 1 and not do_sample:
            validation.fail("num_return_sequences", nrs,
                            "must be 1 for greedy decoding; use do_sample=True or num_beams > 1")
        if nrs > num_beams and num_beams > 1:
            validation.fail("num_return_sequences", nrs, f"must be <= num_beams={num_beams}")
        eos_ids = validation.token_ids("eos_token_id", a["eos_token_id"], vocab)
        pad_id = a["pad_token_id"]
        if pad_id is None:
            pad_id = eos_ids[0] if eos_ids else 0
        pad_id = validation.token_ids("pad_token_id", pad_id, vocab)[0]
        forced_ids = validation.token_ids("forced_eos_token_id", a["forced_eos_token_id"], vocab)
        early = a["early_stopping"]
        if not (early is True or early is False or early == "never"):
            validation.fail("early_stopping", early, 'must be True, False or "never"')
        if a["bad_words_ids"] is None:
            bad_ids, bad_lengths = np.zeros([0, 1], np.int32), np.zeros([0], np.int32)
        else:
            words = a["bad_words_ids"]
            n_words = len(words) if isinstance(words, (list, tuple)) else 0
            longest = max((len(w) for w in words if hasattr(w, "__len__")), default=1)
            bad_ids, bad_lengths = processors.pack_bad_words(
                words, vocab, eos_token_id=eos_ids,
                num_words=bucket(n_words, 4) if self.bucket_shapes else None,
                max_word_len=bucket(longest, 2) if self.bucket_shapes else None)
        rows = batch * (1 if num_beams > 1 else nrs)
        seed = a["seed"]
        if seed is None:
            seed = np.random.default_rng().integers(0, 2**31, size=2)
        seeds = validation.seeds(seed, batch)
        # Shape bucketing (host side, after the checks above).
        real_rows = rows
        width, buffer, padded_batch = self._bucketed_shapes(prompt_len, n_new, batch)
        if width > prompt_len:  # more left padding changes no result (padding invariance)
            ids = np.concatenate([np.full([batch, width - prompt_len], pad_id, np.int32), ids], 1)
            mask = np.concatenate([np.zeros([batch, width - prompt_len], np.int32), mask], 1)
        if padded_batch > batch:  # filler prompts: copies of the last one, dropped afterwards
            fill = padded_batch - batch
            ids, mask = np.concatenate([ids, ids[-1:].repeat(fill, 0)]), np.concatenate([mask, mask[-1:].repeat(fill, 0)])
            seeds = np.concatenate([seeds, seeds[-1:].repeat(fill, 0)])
            rows = rows // batch * padded_batch
            batch = padded_batch
        decode_options = decoding.DecodeOptions(
            max_new_tokens=tf.constant(n_new, tf.int32),
            pad_token_id=tf.constant(pad_id, tf.int32),
            eos_mask=tf.constant(processors.vocab_mask_from_ids(eos_ids, vocab)),
            min_new_tokens=tf.constant(validation.positive_int(
                "min_new_tokens", a["min_new_tokens"], minimum=0), tf.int32),
            forced_eos_mask=tf.constant(processors.vocab_mask_from_ids(forced_ids, vocab)),
            suppress_mask=tf.constant(processors.vocab_mask_from_ids(
                validation.token_ids("suppress_tokens", a["suppress_tokens"], vocab), vocab)),
            repetition_penalty=tf.constant(validation.real(
                "repetition_penalty", a["repetition_penalty"], low=0, low_open=True), tf.float32),
            no_repeat_ngram_size=tf.constant(validation.positive_int(
                "no_repeat_ngram_size", a["no_repeat_ngram_size"], minimum=0), tf.int32),
            bad_words_ids=tf.constant(bad_ids),
            bad_words_lengths=tf.constant(bad_lengths),
            temperature=tf.constant(validation.real("temperature", a["temperature"], low=0), tf.float32),
            top_k=tf.constant(validation.positive_int("top_k", a["top_k"] or 0, minimum=0), tf.int32),
            top_p=tf.constant(validation.real("top_p", a["top_p"], low=0, high=1, low_open=True), tf.float32),
            seeds=tf.constant(np.repeat(seeds, rows // batch, axis=0)),
            sample_index=tf.constant(np.tile(np.arange(rows // batch, dtype=np.int32), batch)),
            length_penalty=tf.constant(validation.real("length_penalty", a["length_penalty"]), tf.float32),
            early_stopping=tf.constant(_EARLY_STOPPING[early], tf.int32),
        )
        # Everything validated: from here on nothing can fail on user input.
        if rows != batch:  # sampling with several return sequences: one row per sample
            ids, mask = np.repeat(ids, nrs, axis=0), np.repeat(mask, nrs, axis=0)
        beam_key = (num_beams, nrs, len(set(eos_ids))) if num_beams > 1 else None
        return PreparedCall(ids, mask, decode_options, n_new, do_sample, beam_key,
                            shape_key=(rows, width, buffer, do_sample, beam_key, bad_ids.shape),
                            rows=real_rows * (nrs if num_beams > 1 else 1),
                            prompt_offset=width - prompt_len, buffer=buffer)

    def _bucketed_shapes(self, prompt_len: int, n_new: int, batch: int) -> tuple[int, int, int]:
        """(prompt width, new-token buffer, batch) actually compiled for a call.

        Shapes are rounded up to powers of two so a stream of calls with varied
        lengths and batch sizes compiles a handful of graphs, not one per call;
        ``max_new_tokens`` is a tensor bound inside the buffer. The buffer's
        floor (32) is higher than the prompt's (16) because a wider buffer is
        nearly free -- the loop still stops after ``max_new_tokens`` steps, only
        the masked cache grows -- while a wider prompt costs prefill work.

        Near ``n_positions`` the two buckets may not fit together; the graph
        then spans exactly ``n_positions`` with one side still bucketed, so
        long calls, too, share a few graphs::

            n_positions 256, prompt 100, 20 new  -> (128, 32)    both bucketed
            n_positions 256, prompt 100, 100 new -> (128, 128)   both bucketed
            n_positions 256, prompt 60, 150 new  -> (64, 192)    256 - 64: width kept
            n_positions 256, prompt 150, 100 new -> (150, 106)   neither bucket fits:
                                                             width exact, rest to the buffer
        """
        if not self.bucket_shapes:
            return prompt_len, n_new, batch
        limit = self.model.max_positions
        width, buffer = bucket(prompt_len, PROMPT_BUCKET_MIN), bucket(n_new, BUFFER_BUCKET_MIN)
        if width + buffer > limit:
            if limit - buffer >= prompt_len:
                width = limit - buffer
            elif limit - width >= n_new:
                buffer = limit - width
            else:
                width, buffer = prompt_len, limit - prompt_len
        return width, buffer, bucket(batch, 1)

    def _build_generate(self, n_new, do_sample, beam_key, jit_compile):
        model = self.model

        def generate_graph(input_ids, attention_mask, options):
            self.compile_count += 1  # runs once per trace, i.e. once per compile
            if beam_key is not None:
                num_beams, nrs, num_eos = beam_key
                return beam_search.beam_search(model, input_ids, attention_mask, options, n_new,
                                               num_beams, nrs, do_sample, num_eos)
            sequences, scores = decoding.sample_loop(model, input_ids, attention_mask, options,
                                                     n_new, do_sample)
            return sequences, scores, tf.zeros([tf.shape(sequences)[0]], tf.float32)

        # autograph=False: the decoder's control flow is explicit (tf.while_loop,
        # tf.cond), so there is no Python `if`/`for` over tensors to convert, and
        # skipping the conversion makes tracing markedly faster.
        return tf.function(generate_graph, jit_compile=jit_compile, autograph=False)

    def _run_generate(self, fn, input_ids: np.ndarray, attention_mask: np.ndarray, options):
        """Runs compiled generation function ``fn``; returns its three output tensors.

        The one place that decides WHERE decoding runs: a subclass can run the
        same ``fn`` elsewhere, e.g. split across the replicas of a
        ``tf.distribute.Strategy`` (``distribute.DistributedLanguageModel``).
        """
        return fn(tf.constant(input_ids), tf.constant(attention_mask), options)

    def export(self, path, **options):
        """Writes this model and its decoding loop as a SavedModel; see :func:`xladecode.export.export`.

        Example::

            lm.export("serving/gpt2/1", strategy="sample", max_new_tokens_buffer=64)
        """
        from . import export  # imported late: most users never export

        return export.export(self, path, **options)

    def generate_text(self, prompts: str | Sequence[str], max_new_tokens=None, **kwargs) -> list[str]:
        """Tokenizes, generates and decodes; returns only the new text of each row.

        Args:
          prompts: a string or a list of strings.
          **kwargs: any ``generate`` argument.

        Returns:
          ``batch * num_return_sequences`` strings, grouped by prompt.
        """
        if self.tokenizer is None:
            raise ValueError("generate_text needs a tokenizer: the checkpoint folder has no "
                             "tokenizer.json (or vocab.json + merges.txt)")
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                validation.fail(f"prompts[{i}]", prompt, "must be a non-empty string")
        resolved = self._resolve(kwargs)
        eos = validation.token_ids("eos_token_id", resolved["eos_token_id"], self.model.vocab_size)
        pad_id = resolved["pad_token_id"]
        if pad_id is None:
            pad_id = eos[0] if eos else 0
        ids, mask = self.tokenizer.encode_batch(list(prompts), pad_token_id=pad_id)
        out = self.generate(ids, mask, max_new_tokens=max_new_tokens, **kwargs)
        new = out.sequences[:, ids.shape[1]:]
        return self.tokenizer.decode_batch(new, skip_ids=set(eos) | {pad_id})

    # ----------------------------------------------------------------- helpers
    def _resolve(self, arguments: dict) -> dict:
        return {k: (arguments[k] if arguments.get(k) is not None else self.defaults[k])
                for k in _GENERATION_DEFAULTS} | {"seed": arguments.get("seed")}

    def _function(self, key, build):
        """The compiled function for ``key``, built on first use (LRU-bounded)."""
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        fn = build()
        self._compiled[key] = fn
        if len(self._compiled) > self.max_compiled_functions:
            self._compiled.popitem(last=False)
        return fn

    # ------------------------------------------------------------------ score
    def score(self, texts: str | Sequence[str], *, jit_compile: bool = True):
        """Per-token log-probabilities and perplexity of given texts (issue 16).

        Each text is tokenized (no BOS/EOS added) and the batch left-padded;
        one full forward pass scores every token but the first of each text
        (nothing predicts it), like transformers' loss with ``labels =
        input_ids`` and -100 on padding.  See ``scoring.py``.

        Args:
          texts: a string or a list of strings, each of at least one token
            and at most ``n_positions`` tokens.

        Returns:
          :class:`scoring.ScoreOutput` (numpy): ``input_ids`` / ``attention_mask``
          ``[batch, T]``, ``token_logprobs`` / ``mask`` ``[batch, T - 1]``,
          ``perplexity`` ``[batch]`` (NaN for a one-token text).
        """
        from . import scoring  # imported late: generation never needs it

        if self.tokenizer is None:
            raise ValueError("score needs a tokenizer: the checkpoint folder has no "
                             "tokenizer.json (or vocab.json + merges.txt)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            validation.fail("texts", texts, "must be a non-empty string or list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text:
                validation.fail(f"texts[{i}]", text, "must be a non-empty string")
        ids, mask = self.tokenizer.encode_batch(texts, pad_token_id=0)
        if ids.shape[1] > self.model.max_positions:
            validation.fail("texts", f"a text of {ids.shape[1]} tokens",
                            f"must be <= n_positions={self.model.max_positions} tokens")
        rows, width = ids.shape
        if self.bucket_shapes:  # extra left padding and filler rows are invisible to a row
            padded = [(0, bucket(rows, 1) - rows),
                      (min(bucket(width, PROMPT_BUCKET_MIN), self.model.max_positions) - width, 0)]
            ids, mask = np.pad(ids, padded), np.pad(mask, padded)
            mask[rows:, -1] = 1  # filler rows hold one real token
        fn = self._function(("score", jit_compile), lambda: tf.function(
            lambda i, m: scoring.score(self.model, i, m), jit_compile=jit_compile, autograph=False))
        logprobs, scored = fn(tf.constant(ids), tf.constant(mask))
        extra = ids.shape[1] - width  # bucketing columns, dropped again
        ids, mask = ids[:rows, extra:], mask[:rows, extra:]
        logprobs, scored = logprobs.numpy()[:rows, extra:], scored.numpy()[:rows, extra:]
        return scoring.ScoreOutput(ids, mask, logprobs, scored,
                                   scoring.perplexity(logprobs, scored).numpy())


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
    if dtype not in ("float32", "bfloat16"):
        validation.fail("dtype", dtype, 'must be "float32" or "bfloat16"')
    folder = default_model_path() if path_or_name is None else resolve_checkpoint(path_or_name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"config.json not found in {folder}")
    model = GPT2.from_pretrained(folder, dtype=getattr(tf, dtype))
    try:
        tokenizer = Tokenizer.from_folder(folder)
    except FileNotFoundError:
        tokenizer = None
    return LanguageModel(model, tokenizer, read_generation_config(folder))
