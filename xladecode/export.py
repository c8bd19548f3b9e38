"""Export a model with its whole decoding loop as a TensorFlow SavedModel.

``lm.export(path)`` (or ``xladecode export PATH``) writes a directory that
plain TensorFlow -- ``tf.saved_model.load``, TensorFlow Serving, TF Lite
converters -- can run WITHOUT xladecode installed::

    PATH/
      saved_model.pb        the graphs: serving_default + the XLA decoding loop
      variables/            the GPT-2 weights, one variable per HF tensor
      assets/               tokenizer.json, config.json, generation_config.json,
                            xladecode_export.json (what was fixed at export)
      fingerprint.pb

The ``serving_default`` signature::

    inputs   input_ids       int32 [batch, length]   LEFT-padded prompts
             attention_mask  int32 [batch, length]   1 = token, 0 = left padding
             max_new_tokens  int32 []                1 .. max_new_tokens_buffer
             temperature     float32 []              sampling only; 0 = greedy
             top_k           int32 []                sampling only; 0 = off
             top_p           float32 []              sampling only; 1 = off
             seed            int32 [2] or [batch, 2] sampling only; per-row seeds
    outputs  sequences       int32 [batch, length + max_new_tokens]
             scores          float32 [batch, max_new_tokens]  log-prob of each token
             sequences_scores float32 [batch]        (strategy="beam" only)

Every input is required (a signature has no optional inputs); greedy and beam
exports ignore the sampling inputs. The values match ``lm.generate``: same
function, same tokens.

How shapes stay static inside (XLA compiles one program per shape)
------------------------------------------------------------------
The decoding function (``LanguageModel._build_generate``, the very function
``lm.generate`` runs, ``tf.function(jit_compile=True)``) needs a static
``[rows, prompt_len]``. The signature accepts any batch and any length, so
the exported graph adapts on the way in and out, in ordinary (non-XLA) ops:

* **length buckets**: the prompt is left-padded to the smallest bucket that
  fits (``prompt_length``; default powers of two from 16 up to
  ``n_positions - max_new_tokens_buffer``). Left padding never changes a
  result (padding-aware positions and masks). A ``tf.switch_case`` picks the
  bucket, so each bucket is one XLA program, compiled the first time a prompt
  of that size arrives.
* **batch chunks**: rows are padded to a multiple of ``chunk_size`` with
  copies of row 0 and decoded ``chunk_size`` at a time by ``tf.map_fn`` (a
  while loop around the compiled program). Any batch size then runs on one
  compiled program per bucket; padding rows are dropped at the end. With
  ``batch_size=N`` the signature's batch is fixed to N and one chunk is the
  whole batch.
* The output buffer holds ``max_new_tokens_buffer`` new tokens; the
  ``max_new_tokens`` input is a loop bound (a tensor), so any value up to the
  buffer reuses the same program, and the outputs are sliced to it.

Options other than the seven inputs (repetition_penalty, no_repeat_ngram_size,
eos/pad ids, length_penalty, ...) are fixed at export from the keyword
arguments, else the checkpoint's generation config; they are recorded in
``assets/xladecode_export.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from . import validation
from .decoding import DecodeOptions

STRATEGIES = ("greedy", "sample", "beam")

#: Generation options that may be fixed at export (everything that is not a
#: signature input). Values left out come from the model's generation config.
FIXED_OPTIONS = ("min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
                 "suppress_tokens", "forced_eos_token_id", "length_penalty", "early_stopping",
                 "eos_token_id", "pad_token_id")

#: Name of the metadata file written next to the tokenizer in ``assets/``.
EXPORT_INFO = "xladecode_export.json"

# DecodeOptions fields fixed at export; the others come from signature inputs.
_FIXED_FIELDS = ("pad_token_id", "eos_mask", "min_new_tokens", "forced_eos_mask", "suppress_mask",
                 "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "bad_words_lengths",
                 "length_penalty", "early_stopping")


def export(lm, path, *, strategy: str = "greedy", num_beams: int = 4,
           max_new_tokens_buffer: int | None = None, batch_size: int | None = None,
           chunk_size: int = 8, prompt_length: int | Sequence[int] | None = None,
           overwrite: bool = False, jit_compile: bool = True, **fixed_options) -> Path:
    """Writes ``lm`` and its decoding loop as a SavedModel at ``path``.

    Args:
      lm: a :class:`~xladecode.LanguageModel` (its model must be a ``tf.Module``
        holding its weights as variables, as ``GPT2`` does).
      path: directory to create. Must not exist or be empty, unless
        ``overwrite``. For TensorFlow Serving use ``.../MODEL_NAME/1``.
      strategy: "greedy", "sample" or "beam" (a compile key, fixed here).
      num_beams: beam width for ``strategy="beam"`` (>= 2).
      max_new_tokens_buffer: most new tokens a call may ask for; the output
        buffer size. Default: the model's ``max_new_tokens`` default.
      batch_size: None = any batch (decoded ``chunk_size`` rows at a time);
        an int fixes the signature's batch to it.
      chunk_size: rows per compiled call when ``batch_size`` is None.
      prompt_length: longest prompt accepted. An int = one bucket of that
        length; a list = those buckets; None = powers of two from 16 up to
        ``n_positions - max_new_tokens_buffer``.
      overwrite: replace an existing non-empty ``path``.
      jit_compile: False exports the same graph without XLA (debugging).
      **fixed_options: any of :data:`FIXED_OPTIONS`, fixed at export.

    Returns:
      ``Path(path)``.

    Raises:
      FileExistsError: ``path`` exists, is not empty, and ``overwrite`` is False
        (nothing is written).
      ValueError: a bad argument (named, with its value and what is allowed).
    """
    path = Path(path)
    if strategy not in STRATEGIES:
        validation.fail("strategy", strategy, f"must be one of {', '.join(STRATEGIES)}")
    unknown = sorted(set(fixed_options) - set(FIXED_OPTIONS))
    if unknown:
        validation.fail(unknown[0], fixed_options[unknown[0]],
                        f"is not an export option; fixed options are {', '.join(FIXED_OPTIONS)} "
                        "(max_new_tokens, temperature, top_k, top_p and seed are signature inputs)")
    if strategy == "beam":
        num_beams = validation.positive_int("num_beams", num_beams, minimum=2)
    model = lm.model
    if not isinstance(model, tf.Module):
        raise TypeError(f"lm.model is a {type(model).__name__}; export needs a tf.Module that holds "
                        "its weights as tf.Variables (as xladecode.gpt2.GPT2 does)")
    max_pos = model.max_positions
    if max_new_tokens_buffer is None:
        max_new_tokens_buffer = lm.defaults["max_new_tokens"]
    n_new = validation.positive_int("max_new_tokens_buffer", max_new_tokens_buffer, maximum=max_pos - 1)
    buckets = _buckets(prompt_length, max_pos - n_new)
    if batch_size is not None:
        batch_size = validation.positive_int("batch_size", batch_size)
        chunk_size = batch_size
    chunk_size = validation.positive_int("chunk_size", chunk_size)
    fixed, beam_key, resolved = _fixed_options(lm, strategy, num_beams, n_new, fixed_options)
    _check_destination(path, overwrite)  # before any work: a refused export writes nothing

    do_sample = strategy == "sample"
    decode = lm._build_generate(n_new, do_sample, beam_key, jit_compile)
    module = _ServingModule(model, decode, fixed, buckets, chunk_size, n_new, batch_size,
                            with_sequences_scores=beam_key is not None)
    info = dict(strategy=strategy, num_beams=num_beams if beam_key else 1, max_new_tokens_buffer=n_new,
                batch_size=batch_size, chunk_size=chunk_size, prompt_length_buckets=list(buckets),
                jit_compile=jit_compile, fixed_options=resolved,
                signature_inputs=["input_ids", "attention_mask", "max_new_tokens", "temperature",
                                  "top_k", "top_p", "seed"],
                signature_outputs=["sequences", "scores"] + (["sequences_scores"] if beam_key else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write everything into a hidden sibling directory, then rename: a crash
    # or an error never leaves a half-written SavedModel at `path`.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with tempfile.TemporaryDirectory() as staging:
            module.assets = _asset_files(lm, Path(staging), info)  # copied into tmp/assets/
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serving_signature()})
        os.chmod(tmp, 0o755)  # mkdtemp made it private (0700); a model server may run as another user
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def xla_compiled_functions(path) -> list[str]:
    """Names of the functions in a SavedModel marked for XLA that contain a while loop.

    A check that the decoding loop really is XLA-compiled inside the exported
    graph: ``tf.function(jit_compile=True)`` stores the attribute
    ``_XlaMustCompile=True`` on the function (and on the ops calling it).
    Plain TensorFlow protos only, so it works on any SavedModel.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    names = []
    for meta_graph in proto.meta_graphs:
        library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        marked = {name for name, f in library.items() if f.attr["_XlaMustCompile"].b}
        for f in library.values():  # call sites may carry the mark instead of the FunctionDef
            for node in f.node_def:
                if node.attr["_XlaMustCompile"].b and node.attr["f"].func.name:
                    marked.add(node.attr["f"].func.name)
        for name in sorted(marked):
            if name in library and _contains_while(library, name, set()):
                names.append(name)
    return names


# --------------------------------------------------------------------- helpers
class _ServingModule(tf.Module):
    """What gets saved: the model (its variables) and the serving function.

    Attributes tracked by ``tf.Module`` end up in the SavedModel: ``model``
    brings every weight variable; ``assets`` the tokenizer files.
    """

    def __init__(self, model, decode, fixed: dict, buckets: Sequence[int], chunk: int, n_new: int,
                 batch_size: int | None, with_sequences_scores: bool):
        super().__init__(name="xladecode_export")
        self.model = model
        # Not a plain attribute: the SavedModel would store every tf.function
        # attribute a second time as a callable object of its own.
        self._untracked = types.SimpleNamespace(decode=decode)
        self._fixed = fixed
        self._buckets = tuple(buckets)
        self._chunk = chunk
        self._n_new = n_new
        self._batch_size = batch_size
        self._with_sequences_scores = with_sequences_scores
        self._vocab = model.vocab_size

    def serving_signature(self):
        """The concrete ``serving_default`` function (traced once, here)."""
        b = self._batch_size  # None = dynamic batch
        spec = tf.TensorSpec
        # autograph=False: all control flow is explicit (switch_case, map_fn).
        return tf.function(self._serve, autograph=False).get_concrete_function(
            input_ids=spec([b, None], tf.int32, name="input_ids"),
            attention_mask=spec([b, None], tf.int32, name="attention_mask"),
            max_new_tokens=spec([], tf.int32, name="max_new_tokens"),
            temperature=spec([], tf.float32, name="temperature"),
            top_k=spec([], tf.int32, name="top_k"),
            top_p=spec([], tf.float32, name="top_p"),
            seed=spec(None, tf.int32, name="seed"),  # unknown rank: [2] or [batch, 2]
        )

    def _serve(self, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed):
        batch, width = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        # Every value below depends on the checks, so a bad request fails with
        # the check's message before any op could trip over it.
        with tf.control_dependencies(self._checks(input_ids, attention_mask, max_new_tokens,
                                                  temperature, top_k, top_p, seed)):
            input_ids, attention_mask = tf.identity(input_ids), tf.identity(attention_mask)
            max_new_tokens = tf.identity(max_new_tokens)
            # seed [2] -> [1, 2] -> [batch, 2]; seed [batch, 2] stays.
            seeds = tf.broadcast_to(tf.reshape(seed, [-1, 2]), [batch, 2])
        # Smallest bucket that fits (the checks guarantee one does).
        index = tf.reduce_sum(tf.cast(tf.constant(self._buckets) < width, tf.int32))
        branches = [
            (lambda p=p: self._run_bucket(p, input_ids, attention_mask, seeds, max_new_tokens,
                                          temperature, top_k, top_p))
            for p in self._buckets
        ]
        sequences, scores, sequences_scores = tf.switch_case(index, branches)
        outputs = {"sequences": sequences, "scores": scores}
        if self._with_sequences_scores:
            outputs["sequences_scores"] = sequences_scores
        return outputs

    def _run_bucket(self, bucket, input_ids, attention_mask, seeds, max_new_tokens, temperature,
                    top_k, top_p):
        """Decodes prompts left-padded to ``bucket`` columns, ``chunk`` rows per compiled call.

        Returns ``(sequences [batch, width + max_new_tokens], scores [batch,
        max_new_tokens], sequences_scores [batch])``.
        """
        batch, width = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        chunk, pad_id = self._chunk, self._fixed["pad_token_id"]
        # 1. Left-pad the columns to the bucket (mask 0: invisible to the model).
        extra_cols = bucket - width
        ids = tf.pad(input_ids, [[0, 0], [extra_cols, 0]], constant_values=pad_id)
        mask = tf.pad(attention_mask, [[0, 0], [extra_cols, 0]])
        # 2. Pad the rows to a multiple of `chunk` with copies of row 0 (a
        #    valid prompt; rows never influence each other) and split.
        n_chunks = (batch + chunk - 1) // chunk
        extra_rows = n_chunks * chunk - batch

        def chunks(x, inner):
            x = tf.concat([x, tf.repeat(x[:1], extra_rows, axis=0)], 0)
            return tf.reshape(x, tf.concat([[n_chunks, chunk], inner], 0))

        elems = (chunks(ids, [bucket]), chunks(mask, [bucket]), chunks(seeds, [2]))
        f = self._fixed

        def decode_chunk(args):
            chunk_ids, chunk_mask, chunk_seeds = args  # [chunk, bucket], [chunk, bucket], [chunk, 2]
            options = DecodeOptions(
                **{name: tf.constant(value) for name, value in f.items()},  # fixed at export
                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                seeds=chunk_seeds, sample_index=tf.zeros([chunk], tf.int32),  # one sequence per row
            )
            # The XLA-compiled decoding loop: one call per chunk.
            return self._untracked.decode(chunk_ids, chunk_mask, options)

        n = self._n_new
        sequences, scores, sequences_scores = tf.map_fn(
            decode_chunk, elems, parallel_iterations=1,  # one chunk at a time: bounded memory
            fn_output_signature=(tf.TensorSpec([chunk, bucket + n], tf.int32),
                                 tf.TensorSpec([chunk, n], tf.float32),
                                 tf.TensorSpec([chunk], tf.float32)))
        # 3. Undo the padding: drop extra rows and extra columns, cut to max_new_tokens.
        sequences = tf.reshape(sequences, [-1, bucket + n])[:batch, extra_cols:bucket + max_new_tokens]
        scores = tf.reshape(scores, [-1, n])[:batch, :max_new_tokens]
        sequences_scores = tf.reshape(sequences_scores, [-1])[:batch]
        return sequences, scores, sequences_scores

    def _checks(self, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed):
        """In-graph argument checks: a bad request fails with a message, never a crash."""
        batch, width = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        longest = self._buckets[-1]
        a = tf.debugging
        return [
            a.assert_positive(batch, message="input_ids: need at least one row"),
            a.assert_positive(width, message="input_ids: prompts need at least one token"),
            a.assert_less_equal(width, longest, message=(
                f"input_ids: prompt length must be <= {longest} (prompt_length fixed at export)")),
            a.assert_non_negative(input_ids, message="input_ids: token ids must be >= 0"),
            a.assert_less(input_ids, self._vocab, message=f"input_ids: token ids must be < {self._vocab}"),
            a.assert_equal(tf.shape(attention_mask), tf.shape(input_ids),
                           message="attention_mask: must have the shape of input_ids"),
            a.assert_equal(tf.reduce_all((attention_mask == 0) | (attention_mask == 1)), True,
                           message="attention_mask: values must be 0 or 1"),
            a.assert_equal(tf.reduce_all(attention_mask[:, -1] == 1), True, message=(
                "attention_mask: every row needs its last column = 1 (prompts are LEFT-padded, "
                "and at least one token)")),
            a.assert_equal(tf.reduce_all(attention_mask[:, 1:] >= attention_mask[:, :-1]), True,
                           message="attention_mask: padding must be on the LEFT (a 0 after a 1)"),
            a.assert_greater_equal(max_new_tokens, 1, message="max_new_tokens: must be >= 1"),
            a.assert_less_equal(max_new_tokens, self._n_new, message=(
                f"max_new_tokens: must be <= {self._n_new} (max_new_tokens_buffer fixed at export)")),
            a.assert_non_negative(temperature, message="temperature: must be >= 0"),
            a.assert_non_negative(top_k, message="top_k: must be >= 0 (0 = off)"),
            a.assert_positive(top_p, message="top_p: must be in (0, 1]"),
            a.assert_less_equal(top_p, 1.0, message="top_p: must be in (0, 1]"),
            a.assert_equal(tf.logical_or(tf.equal(tf.size(seed), 2),
                                         tf.reduce_all(tf.equal(tf.shape(seed), [batch, 2]))), True,
                           message="seed: must have shape [2] or [batch, 2]"),
        ]


def _buckets(prompt_length, longest_allowed: int) -> tuple[int, ...]:
    """Prompt-length buckets, ascending, each <= ``longest_allowed``."""
    if longest_allowed < 1:
        validation.fail("max_new_tokens_buffer", "", "leaves no room for a prompt within n_positions")
    if prompt_length is None:
        sizes, p = [], 16
        while p < longest_allowed:
            sizes.append(p)
            p *= 2
        return tuple(sizes + [longest_allowed])
    values = [prompt_length] if isinstance(prompt_length, (int, np.integer)) else list(prompt_length)
    if not values:
        validation.fail("prompt_length", prompt_length, "give at least one length")
    for v in values:
        validation.positive_int("prompt_length", v, maximum=longest_allowed)
    return tuple(sorted(set(int(v) for v in values)))


def _fixed_options(lm, strategy: str, num_beams: int, n_new: int, options: dict):
    """Validates the options fixed at export with ``lm.prepare`` (the checks ``generate`` runs).

    Returns:
      ``(fixed, beam_key, readable)``: numpy values of the fixed
      :class:`DecodeOptions` fields, the beam compile key (None unless
      beams), and the resolved option values for ``xladecode_export.json``.
    """
    call = lm.prepare(np.zeros([1, 1], np.int32), None, max_new_tokens=n_new,
                      do_sample=strategy == "sample", num_beams=num_beams if strategy == "beam" else 1,
                      num_return_sequences=1, seed=(0, 0), **options)
    fixed = {name: getattr(call.options, name).numpy() for name in _FIXED_FIELDS}
    resolved = lm._resolve(options)
    readable = {k: resolved[k] for k in FIXED_OPTIONS} | {"pad_token_id": int(fixed["pad_token_id"])}
    return fixed, call.beam_key, readable


def _check_destination(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        if not path.is_dir() or any(path.iterdir()):
            raise FileExistsError(f"path={str(path)!r} already exists and is not empty: choose a new "
                                  "path, or pass overwrite=True (--overwrite) to replace it")


def _replace(tmp: Path, path: Path) -> None:
    """Moves the finished export ``tmp`` to ``path`` (renames: same filesystem, atomic each)."""
    old = None
    if path.is_dir() and any(path.iterdir()) or path.is_file() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rename(path, old / "previous")  # move aside first; deleted only once tmp is in place
    elif path.is_dir():
        path.rmdir()  # an empty directory: rename() may not replace it on every OS
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _asset_files(lm, staging: Path, info: dict) -> dict:
    """Writes the tokenizer and config files to ``staging``; returns tracked ``Asset`` objects.

    ``tf.saved_model.Asset`` makes ``tf.saved_model.save`` copy the file into
    ``PATH/assets/``; after ``tf.saved_model.load`` the same attribute's
    ``asset_path`` points at the copy.
    """
    files = {}
    if lm.tokenizer is not None:
        lm.tokenizer.save_tokenizer_json(staging / "tokenizer.json")
        files["tokenizer_json"] = staging / "tokenizer.json"
    config = getattr(lm.model, "config", None)
    if dataclasses.is_dataclass(config):
        data = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]} | dataclasses.asdict(config)
        (staging / "config.json").write_text(json.dumps(data, indent=2))
        files["config_json"] = staging / "config.json"
    generation = {k: v for k, v in lm.defaults.items() if v is not None}
    (staging / "generation_config.json").write_text(json.dumps(generation, indent=2))
    files["generation_config_json"] = staging / "generation_config.json"
    (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    files["xladecode_export_json"] = staging / EXPORT_INFO
    return {name: tf.saved_model.Asset(str(file)) for name, file in files.items()}


def _contains_while(library: dict, name: str, seen: set) -> bool:
    """Whether function ``name`` (or a function it calls) has a while loop."""
    if name in seen or name not in library:
        return False
    seen.add(name)
    for node in library[name].node_def:
        if node.op in ("While", "StatelessWhile"):
            return True
        for value in node.attr.values():
            if value.func.name and _contains_while(library, value.func.name, seen):
                return True
    return False
