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

The ``serving_default`` signature holds exactly what its strategy uses::

    inputs   input_ids       int32 [batch, length]   LEFT-padded prompts
             attention_mask  int32 [batch, length]   1 = token, 0 = left padding
             max_new_tokens  int32 []                1 .. max_new_tokens_buffer
             temperature     float32 []              strategy="sample" only; 0 = greedy
             top_k           int32 []                strategy="sample" only; 0 = off
             top_p           float32 []              strategy="sample" only; 1 = off
             seed            int32 [batch, 2]        strategy="sample" only; one pair per row
    outputs  sequences       int32 [batch, length + max_new_tokens]
             scores          float32 [batch, max_new_tokens]  log-prob of each token
             sequences_scores float32 [batch]        (strategy="beam" only)

Every input has a full static spec (rank and dtype), and the values are
checked in the graph one after another, so a bad request always gets the
first failing check's message. The values match ``lm.generate``: same
function, same tokens.

How shapes stay static inside (XLA compiles one program per shape)
------------------------------------------------------------------
The decoding function (``compiled.build_generate``, the very function
``lm.generate`` runs, ``tf.function(jit_compile=True)``) needs a static
``[rows, prompt_len]``. The signature accepts any batch and any length, so
the exported graph adapts on the way in and out, in ordinary (non-XLA) ops:

* **length buckets**: the prompt is left-padded to the smallest bucket that
  fits (``prompt_length``; default powers of two from 16 up to
  ``n_positions - max_new_tokens_buffer``). Left padding never changes a
  result (padding-aware positions and masks); the buckets are the widths of
  the engine's one shape rule (``plan.prompt_widths``). A ``tf.switch_case`` picks the
  bucket, so each bucket is one XLA program, compiled the first time a prompt
  of that size arrives.
* **batch chunks**: rows are filled to a multiple of ``chunk_size`` with
  filler rows (``plan.fit_rows``: copies of row 0) and decoded ``chunk_size`` at a time by ``tf.map_fn`` (a
  while loop around the compiled program). Any batch size then runs on one
  compiled program per bucket; padding rows are dropped at the end. With
  ``batch_size=N`` the signature's batch is fixed to N and one chunk is the
  whole batch.
* The output buffer holds ``max_new_tokens_buffer`` new tokens; the
  ``max_new_tokens`` input is a loop bound (a tensor), so any value up to the
  buffer reuses the same program, and the outputs are sliced to it.

Options that are not inputs (:data:`FIXED_OPTIONS`: the options whose
``options.Spec.role`` is "fixed", e.g. repetition_penalty, eos/pad ids,
length_penalty) are fixed at export from the keyword arguments, else the
checkpoint's generation config; they are recorded in
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

from . import plan, validation
from .compiled import build_generate
from .decoding import DecodeOptions
from .options import GenerationOptions

STRATEGIES = ("greedy", "sample", "beam")

#: Generation options that may be fixed at export: those whose ``Spec.role``
#: is "fixed". Values left out come from the model's generation config.
FIXED_OPTIONS = tuple(n for n in GenerationOptions.names() if GenerationOptions.spec(n).role == "fixed")

#: Signature inputs after ids and mask, per strategy.
SAMPLING_INPUTS = ("temperature", "top_k", "top_p", "seed")

#: Name of the metadata file written next to the tokenizer in ``assets/``.
EXPORT_INFO = "xladecode_export.json"

# DecodeOptions fields that signature inputs may set; every other field is
# fixed at export (a numpy constant in the graph).
_INPUT_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "seeds", "sample_index")


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
    plan = _plan_export(lm, strategy, num_beams, max_new_tokens_buffer, batch_size, chunk_size,
                        prompt_length, jit_compile, fixed_options)
    _check_destination(path, validation.boolean("overwrite", overwrite))  # a refused export writes nothing
    decode = build_generate(lm.model, plan.info["max_new_tokens_buffer"], plan.strategy, plan.info["jit_compile"])
    module = _ServingModule(lm.model, decode, plan.fixed, plan.info["prompt_length_buckets"],
                            plan.info["chunk_size"], plan.info["max_new_tokens_buffer"], plan.info["batch_size"],
                            with_sequences_scores=strategy == "beam", inputs=plan.info["signature_inputs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write everything into a hidden sibling directory, then rename: a crash
    # or an error never leaves a half-written SavedModel at `path`.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with tempfile.TemporaryDirectory() as staging:
            module.assets = _asset_files(lm, Path(staging), plan.info)  # copied into tmp/assets/
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serving_signature()})
        os.chmod(tmp, 0o755)  # mkdtemp made it private (0700); a model server may run as another user
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _plan_export(lm, strategy, num_beams, max_new_tokens_buffer, batch_size, chunk_size, prompt_length,
                 jit_compile, fixed_options) -> types.SimpleNamespace:
    """Checks every export argument (no compile, nothing written).

    Returns a namespace: ``strategy`` (``compiled.Strategy``), ``fixed``
    (numpy values of the fixed ``DecodeOptions`` fields) and ``info`` (what
    ``xladecode_export.json`` records).
    """
    if strategy not in STRATEGIES:
        validation.fail("strategy", strategy, f"must be one of {', '.join(STRATEGIES)}")
    unknown = sorted(set(fixed_options) - set(FIXED_OPTIONS))
    if unknown:
        validation.fail(unknown[0], fixed_options[unknown[0]],
                        f"is not an export option; fixed options are {', '.join(FIXED_OPTIONS)} "
                        "(max_new_tokens, temperature, top_k, top_p and seed are signature inputs)")
    model = lm.model
    if not isinstance(model, tf.Module):
        raise TypeError(f"lm.model is a {type(model).__name__}; export needs a tf.Module that holds "
                        "its weights as tf.Variables (as xladecode.gpt2.GPT2 does; see protocol.py)")
    if strategy == "beam":
        num_beams = validation.integer("num_beams", num_beams, 2)
    if max_new_tokens_buffer is None:
        max_new_tokens_buffer = lm.defaults.max_new_tokens
    n_new = validation.integer("max_new_tokens_buffer", max_new_tokens_buffer, 1, model.max_positions - 1)
    buckets = _buckets(prompt_length, model.max_positions, n_new)
    if batch_size is not None:
        chunk_size = batch_size = validation.integer("batch_size", batch_size)
    chunk_size = validation.integer("chunk_size", chunk_size)
    # The checks generate runs, on the fixed options.
    call = lm.prepare([[0]], None, max_new_tokens=n_new, do_sample=strategy == "sample",
                      num_beams=num_beams if strategy == "beam" else 1, num_return_sequences=1,
                      seed=(0, 0), **fixed_options)
    fixed = {name: value.numpy() for name, value in call.options._asdict().items()
             if name not in _INPUT_FIELDS}
    if strategy != "sample":  # not inputs: constants that the greedy / beam program never reads
        fixed.update(temperature=np.float32(1.0), top_k=np.int32(0), top_p=np.float32(1.0))
    readable = {k: getattr(call.checked, k) for k in FIXED_OPTIONS}
    readable["early_stopping"] = readable["early_stopping"].user_value()
    inputs = ("input_ids", "attention_mask", "max_new_tokens") + (SAMPLING_INPUTS if strategy == "sample" else ())
    info = dict(strategy=strategy, num_beams=call.strategy.num_beams, max_new_tokens_buffer=n_new,
                batch_size=batch_size, chunk_size=chunk_size, prompt_length_buckets=list(buckets),
                jit_compile=validation.boolean("jit_compile", jit_compile), fixed_options=readable,
                signature_inputs=list(inputs),
                signature_outputs=["sequences", "scores"] + (["sequences_scores"] if strategy == "beam" else []))
    return types.SimpleNamespace(strategy=call.strategy, fixed=fixed, info=info)


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
                 batch_size: int | None, with_sequences_scores: bool, inputs: Sequence[str]):
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
        self._inputs = tuple(inputs)
        self._vocab = model.vocab_size

    def serving_signature(self):
        """The concrete ``serving_default`` function (traced once, here), with a
        full static spec for exactly the inputs this strategy uses."""
        b, spec = self._batch_size, tf.TensorSpec  # b None = dynamic batch
        specs = dict(input_ids=spec([b, None], tf.int32, name="input_ids"),
                     attention_mask=spec([b, None], tf.int32, name="attention_mask"),
                     max_new_tokens=spec([], tf.int32, name="max_new_tokens"),
                     temperature=spec([], tf.float32, name="temperature"),
                     top_k=spec([], tf.int32, name="top_k"),
                     top_p=spec([], tf.float32, name="top_p"),
                     seed=spec([b, 2], tf.int32, name="seed"))
        # autograph=False: all control flow is explicit (switch_case, map_fn).
        return tf.function(self._serve, autograph=False).get_concrete_function(
            **{name: specs[name] for name in self._inputs})

    def _serve(self, input_ids, attention_mask, max_new_tokens, temperature=None, top_k=None, top_p=None,
               seed=None):
        """Inputs a strategy does not use arrive as None (not signature inputs)."""
        f = self._fixed
        temperature = f["temperature"] if temperature is None else temperature
        top_k = f["top_k"] if top_k is None else top_k
        top_p = f["top_p"] if top_p is None else top_p
        checked = self._checked(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed)
        input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed = checked
        width = tf.shape(input_ids)[1]
        # Smallest bucket that fits (the checks guarantee one does).
        index = tf.reduce_sum(tf.cast(tf.constant(self._buckets) < width, tf.int32))
        branches = [
            (lambda p=p: self._run_bucket(p, input_ids, attention_mask, seed, max_new_tokens,
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
        chunk, f = self._chunk, self._fixed
        # 1. Left-pad to the bucket, fill the rows to whole chunks (plan.py's
        #    helpers: the same padding and filler rows as every entry point).
        ids, mask = plan.left_pad(input_ids, attention_mask, bucket, f["pad_token_id"])
        n_chunks = (batch + chunk - 1) // chunk
        ids, mask, seeds = plan.fit_rows((ids, mask, seeds), n_chunks * chunk)
        elems = tuple(tf.reshape(x, tf.concat([[n_chunks, chunk], inner], 0))  # static inner dims
                      for x, inner in ((ids, [bucket]), (mask, [bucket]), (seeds, [2])))

        def decode_chunk(args):
            chunk_ids, chunk_mask, chunk_seeds = args  # [chunk, bucket], [chunk, bucket], [chunk, 2]
            options = DecodeOptions(
                **{name: tf.constant(value) for name, value in f.items()
                   if name not in ("temperature", "top_k", "top_p")},  # fixed at export
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
        # 2. Undo the padding: drop filler rows and extra columns, cut to max_new_tokens.
        extra_cols = bucket - width
        sequences = tf.reshape(sequences, [-1, bucket + n])[:batch, extra_cols:bucket + max_new_tokens]
        scores = tf.reshape(scores, [-1, n])[:batch, :max_new_tokens]
        sequences_scores = tf.reshape(sequences_scores, [-1])[:batch]
        return sequences, scores, sequences_scores

    def _checked(self, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed):
        """In-graph argument checks, run ONE AFTER ANOTHER: a bad request always
        fails with the first failing check's message, never with a crash of an
        op that a later check would have guarded (each check's condition is
        computed only once the earlier checks passed)."""
        batch = tf.shape(input_ids)[0]
        if seed is None:  # greedy / beam: no seed input
            seed = tf.zeros([batch, 2], tf.int32)
        longest = self._buckets[-1]
        n_new = self._n_new
        checks = [
            (lambda: batch > 0, "input_ids: need at least one row"),
            (lambda: tf.shape(input_ids)[1] > 0, "input_ids: prompts need at least one token"),
            (lambda: tf.shape(input_ids)[1] <= longest,
             f"input_ids: prompt length must be <= {longest} (prompt_length fixed at export)"),
            (lambda: tf.reduce_all(input_ids >= 0), "input_ids: token ids must be >= 0"),
            (lambda: tf.reduce_all(input_ids < self._vocab), f"input_ids: token ids must be < {self._vocab}"),
            (lambda: tf.reduce_all(tf.equal(tf.shape(attention_mask), tf.shape(input_ids))),
             "attention_mask: must have the shape of input_ids"),
            (lambda: tf.reduce_all((attention_mask == 0) | (attention_mask == 1)),
             "attention_mask: values must be 0 or 1"),
            (lambda: tf.reduce_all(attention_mask[:, -1] == 1),
             "attention_mask: every row needs its last column = 1 (prompts are LEFT-padded, and at "
             "least one token)"),
            (lambda: tf.reduce_all(attention_mask[:, 1:] >= attention_mask[:, :-1]),
             "attention_mask: padding must be on the LEFT (a 0 after a 1)"),
            (lambda: max_new_tokens >= 1, "max_new_tokens: must be >= 1"),
            (lambda: max_new_tokens <= n_new,
             f"max_new_tokens: must be <= {n_new} (max_new_tokens_buffer fixed at export)"),
            (lambda: tf.math.is_finite(temperature) & (temperature >= 0),
             "temperature: must be finite and >= 0"),
            (lambda: top_k >= 0, "top_k: must be >= 0 (0 = off)"),
            (lambda: (top_p > 0) & (top_p <= 1), "top_p: must be in (0, 1]"),
            (lambda: tf.equal(tf.shape(seed)[0], batch), "seed: must have shape [batch, 2] (one pair per row)"),
        ]
        done = tf.no_op()
        for condition, message in checks:
            with tf.control_dependencies([done]):
                done = tf.debugging.Assert(condition(), [message], name="check")
        with tf.control_dependencies([done]):
            return tuple(tf.identity(x) for x in (input_ids, attention_mask, max_new_tokens,
                                                   tf.cast(temperature, tf.float32), tf.cast(top_k, tf.int32),
                                                   tf.cast(top_p, tf.float32), seed))


def _buckets(prompt_length, max_positions: int, n_new: int) -> tuple[int, ...]:
    """Prompt-length buckets, ascending, each <= ``max_positions - n_new``.

    None: every width the engine's shape rule picks (``plan.prompt_widths``).
    """
    longest_allowed = max_positions - n_new
    if longest_allowed < 1:
        validation.fail("max_new_tokens_buffer", n_new, "leaves no room for a prompt within n_positions")
    if prompt_length is None:
        return plan.prompt_widths(longest_allowed, max_positions, n_new)
    if isinstance(prompt_length, (bool, str, bytes)):
        validation.fail("prompt_length", prompt_length, "must be an int or a list of ints")
    values = [prompt_length] if isinstance(prompt_length, (int, np.integer)) else list(prompt_length)
    if not values:
        validation.fail("prompt_length", prompt_length, "give at least one length")
    for v in values:
        validation.integer("prompt_length", v, 1, longest_allowed)
    return tuple(sorted(set(int(v) for v in values)))


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
    generation = {k: v for k, v in lm.defaults.as_dict().items() if v is not None}
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
