"""Every decoding option, defined once: name, default, type, allowed range.

:class:`GenerationOptions` is the single definition. Everything else is
derived from its fields:

* the defaults, and how ``generation_config.json`` and call keywords are
  merged over them (:meth:`GenerationOptions.merged`);
* the unknown-option check, always :class:`UnknownOptionError`;
* validation (:func:`check`), with ranges that follow the model (vocab size,
  ``n_positions``) and int32, so no value can wrap around inside the graph;
* the tensors the compiled loop reads (:func:`decode_options` builds
  ``decoding.DecodeOptions``);
* the CLI flags (``cli.py`` builds one flag per field from its :class:`Spec`);
* what an export fixes and what its signature takes (:attr:`Spec.role`).

Worked example::

    defaults = GenerationOptions.from_generation_config({"do_sample": True, "top_k": 40})
    request = defaults.merged(top_k=5, seed=(1, 2))      # keywords win over the file
    checked = check(request, vocab_size=50257, max_positions=1024)
    checked.eos_token_id  -> [50256]   (always a list once checked)
    checked.pad_token_id  -> 50256     (the pad default: the first EOS id, else 0)
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping

import numpy as np

from . import validation

INT32_MAX = 2**31 - 1


class UnknownOptionError(TypeError, ValueError):
    """A keyword that is not a decoding option.

    A ``TypeError`` like any unexpected keyword argument, and a
    ``ValueError`` like every other bad option value, so either ``except``
    catches it.
    """


class EarlyStopping(enum.IntEnum):
    """Beam search's stopping rule (transformers' ``early_stopping``)."""

    HEURISTIC = 0  # False: stop when no live beam can beat the worst finished one at this length
    ON_FULL = 1  # True: stop as soon as num_beams hypotheses are finished
    NEVER = 2  # "never": the canonical bound at the maximum length

    @classmethod
    def parse(cls, value) -> "EarlyStopping":
        """``False`` / ``True`` / ``"never"`` (or a member) -> a member."""
        if isinstance(value, cls):
            return value
        if value is False or value is True:
            return cls.ON_FULL if value else cls.HEURISTIC
        if value == "never":
            return cls.NEVER
        validation.fail("early_stopping", value, 'must be True, False or "never"')

    def user_value(self):
        """The transformers spelling: False, True or "never"."""
        return {self.HEURISTIC: False, self.ON_FULL: True, self.NEVER: "never"}[self]


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one option is checked and where it goes.

    Attributes:
      kind: "int", "real", "bool", "ids" (one id or a list), "id" (one id),
        "words" (a list of token-id lists), "bias" (token-id sequences ->
        a bias), "strings" (one string or a list), "early_stopping", "seed".
      low / high: inclusive bounds ("int", "real"); ``high`` may name a model
        limit: "vocab" or "positions".
      low_open / high_open: the lower / upper bound is exclusive ("real").
      optional: None is a legal value, meaning off ("real"; transformers' ``min_p``).
      role: "input" (an export signature input), "compile" (picks the
        compiled program) or "fixed" (fixed at export).
      help: one line for ``--help``.
    """

    kind: str
    help: str
    low: float | None = None
    high: float | str | None = None
    low_open: bool = False
    role: str = "fixed"
    high_open: bool = False
    optional: bool = False


def _option(default, spec: Spec):
    return dataclasses.field(default=default, metadata={"spec": spec})


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The decoding options of ``generate``, with transformers' names and defaults.

    None means "not given": ``eos_token_id`` / ``pad_token_id`` then come
    from the model config, ``seed`` is drawn at random.
    """

    max_new_tokens: int = _option(20, Spec("int", "tokens to generate per prompt", 1, "positions",
                                           role="input"))
    min_new_tokens: int = _option(0, Spec("int", "no EOS before this many new tokens", 0, "positions"))
    do_sample: bool = _option(False, Spec("bool", "sample instead of greedy", role="compile"))
    temperature: float = _option(1.0, Spec("real", "sampling temperature; 0 = greedy", 0, 1e6,
                                           role="input"))
    top_k: int = _option(50, Spec("int", "keep the k most likely tokens; 0 = off", 0, INT32_MAX,
                                  role="input"))
    top_p: float = _option(1.0, Spec("real", "nucleus sampling mass in (0, 1]; 1 = off", 0, 1,
                                     low_open=True, role="input"))
    # Truncation samplers (sampling only), applied after top-k / top-p in this order.
    min_p: Any = _option(None, Spec("real", "keep tokens >= min_p * the top probability; 0 or unset = off",
                                    0, 1, optional=True))
    typical_p: float = _option(1.0, Spec("real", "locally typical sampling mass in (0, 1]; 1 = off", 0, 1,
                                         low_open=True))
    epsilon_cutoff: float = _option(0.0, Spec("real", "drop tokens of probability < this, in [0, 1); 0 = off",
                                              0, 1, high_open=True))
    eta_cutoff: float = _option(0.0, Spec("real", "entropy-scaled epsilon cutoff, in [0, 1); 0 = off", 0, 1,
                                          high_open=True))
    renormalize_logits: bool = _option(False, Spec("bool", "log-softmax the processed scores (matters for beams)"))
    stop_strings: Any = _option(None, Spec("strings", "end a row once its text contains one of these strings"))
    # No fixed upper bound: a width above the vocabulary is legal (exhaustive
    # search of short continuations); request.py refuses what would not fit in memory.
    num_beams: int = _option(1, Spec("int", "beam search width (> 1 enables it)", 1, INT32_MAX,
                                     role="compile"))
    num_return_sequences: int = _option(1, Spec("int", "outputs per prompt", 1, INT32_MAX, role="compile"))
    repetition_penalty: float = _option(1.0, Spec("real", "> 0; 1 = off", 0, 1e6, low_open=True))
    no_repeat_ngram_size: int = _option(0, Spec("int", "forbid repeating n-grams; 0 = off", 0, "positions"))
    bad_words_ids: Any = _option(None, Spec("words", "token sequences never to generate"))
    sequence_bias: Any = _option(None, Spec(
        "bias", "{(ids...): bias} or [[ids, bias], ...]: add bias to a sequence's last token"))
    suppress_tokens: Any = _option(None, Spec("ids", "token ids never to generate"))
    forced_eos_token_id: Any = _option(None, Spec("ids", "force this EOS at the last step"))
    length_penalty: float = _option(1.0, Spec("real", "beam score = logprob / len**lp", -1e6, 1e6))
    early_stopping: Any = _option(False, Spec("early_stopping", 'beam stopping rule: true, false or never'))
    eos_token_id: Any = _option(None, Spec("ids", "end-of-sequence id(s)"))
    pad_token_id: Any = _option(None, Spec("id", "id written after EOS (default: the first EOS id)"))
    seed: Any = _option(None, Spec("seed", "INT or INT,INT: stateless seed pair", role="input"))
    output_scores: bool = _option(False, Spec("bool", "also return per-step log-probs", role="compile"))
    # Speculative decoding (speculative.py): drafts verified k at a time, same outputs.
    prompt_lookup_num_tokens: int = _option(0, Spec(
        "int", "speculate: draft this many tokens copied from the row's own context; 0 = off", 0, 32,
        role="compile"))
    max_matching_ngram_size: int = _option(2, Spec("int", "prompt lookup: longest n-gram matched", 1, 16,
                                                   role="compile"))
    prompt_lookup_max_backoff: int = _option(16, Spec(
        "int", "prompt lookup: after a draft with fewer than half its tokens accepted, the row skips "
        "drafting for 1, 2, 4 .. up to this many iterations; 0 = never skip", 0, 1024, role="compile"))
    prompt_lookup_latest_match: bool = _option(True, Spec(
        "bool", "prompt lookup: copy after the latest earlier occurrence of the n-gram; false = the leftmost "
        "(transformers' rule)", role="compile"))
    assistant_model: Any = _option(None, Spec("model", "speculate with this draft model (same vocabulary)",
                                              role="compile"))
    num_assistant_tokens: int = _option(4, Spec("int", "tokens per draft of assistant_model", 1, 32,
                                                role="compile"))

    # -------------------------------------------------------------- building
    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option name, in definition order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def spec(cls, name: str) -> Spec:
        """The :class:`Spec` of option ``name``."""
        return cls.__dataclass_fields__[name].metadata["spec"]

    @classmethod
    def from_generation_config(cls, config: Mapping | None, model_config=None) -> "GenerationOptions":
        """Defaults: transformers', then the model config's eos/pad ids, then ``config``.

        Keys of ``generation_config.json`` that are not decoding options
        (``bos_token_id``, ``transformers_version``, ...) are ignored, as
        transformers ignores the ones it does not use.
        """
        base = {}
        for key in ("eos_token_id", "pad_token_id"):
            value = getattr(model_config, key, None)
            if value is not None:
                base[key] = value
        base.update({k: v for k, v in (config or {}).items() if k in cls.__dataclass_fields__})
        return cls(**base)

    def merged(self, **overrides) -> "GenerationOptions":
        """These options with ``overrides`` on top; None values are "not given".

        Raises:
          UnknownOptionError: a keyword that is not an option.
        """
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise UnknownOptionError(
                f"{unknown[0]}={_shown(overrides[unknown[0]])} is not a decoding option; "
                f"options are: {', '.join(self.names())}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.names()}

    @property
    def strategy_name(self) -> str:
        """"beam", "sample" or "greedy" (unchecked values)."""
        return "beam" if self.num_beams != 1 else ("sample" if self.do_sample else "greedy")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------ checking
def check(options: GenerationOptions, vocab_size: int, max_positions: int) -> GenerationOptions:
    """Validates every option against its :class:`Spec` and the model's limits.

    Returns normalised options: ids as lists of ints (``pad_token_id`` one
    int, defaulting to the first EOS id, else 0), ``early_stopping`` an
    :class:`EarlyStopping`, reals as floats, ``bad_words_ids`` a list of
    lists, ``sequence_bias`` a list of ``[ids, bias]`` pairs (the JSON form
    of ``generation_config.json``), ``stop_strings`` a list of strings,
    ``min_p`` None or a float. ``seed`` is left as given (its shape depends on the batch:
    :func:`seed_array`).

    Raises:
      ValueError: naming the option, its value and the allowed range.
    """
    limits = {"vocab": vocab_size, "positions": max_positions}
    values = {}
    for name in GenerationOptions.names():
        spec, value = GenerationOptions.spec(name), getattr(options, name)
        values[name] = _check_one(name, value, spec, limits, vocab_size)
    if values["pad_token_id"] is None:
        values["pad_token_id"] = values["eos_token_id"][0] if values["eos_token_id"] else 0
    nrs, beams = values["num_return_sequences"], values["num_beams"]
    if nrs > 1 and beams == 1 and not values["do_sample"]:
        validation.fail("num_return_sequences", nrs,
                        "must be 1 for greedy decoding; use do_sample=True or num_beams > 1")
    if beams > 1 and nrs > beams:
        validation.fail("num_return_sequences", nrs, f"must be <= num_beams={beams}")
    speculating = values["prompt_lookup_num_tokens"] > 0 or values["assistant_model"] is not None
    if speculating and beams > 1:
        validation.fail("num_beams", beams, "must be 1 with prompt_lookup_num_tokens / assistant_model "
                                            "(speculative decoding is for greedy and sampling)")
    if speculating and values["stop_strings"] is not None:
        validation.fail("stop_strings", values["stop_strings"], "is not supported with prompt_lookup_num_tokens / "
                                                                "assistant_model (speculative decoding)")
    if values["prompt_lookup_num_tokens"] and values["assistant_model"] is not None:
        validation.fail("assistant_model", type(values["assistant_model"]).__name__,
                        "give either prompt_lookup_num_tokens or assistant_model, not both")
    return GenerationOptions(**values)


def _check_one(name: str, value, spec: Spec, limits: dict, vocab_size: int):
    high = limits.get(spec.high, spec.high) if isinstance(spec.high, str) else spec.high
    if spec.kind == "int":
        return validation.integer(name, value, int(spec.low), int(high))
    if spec.kind == "real":
        if value is None and spec.optional:
            return None
        return validation.real(name, value, low=spec.low, high=high, low_open=spec.low_open,
                               high_open=spec.high_open)
    if spec.kind == "bool":
        return validation.boolean(name, value)
    if spec.kind == "ids":
        return validation.token_ids(name, value, vocab_size)
    if spec.kind == "id":
        return None if value is None else validation.token_id(name, value, vocab_size)
    if spec.kind == "words":
        return None if value is None else validation.token_sequences(name, value, vocab_size)
    if spec.kind == "bias":
        from .sequence_bias import sequence_bias_pairs  # imported late: --help needs options, not TensorFlow

        return None if value is None else [[list(ids), bias] for ids, bias in
                                           sequence_bias_pairs(value, vocab_size)]
    if spec.kind == "strings":
        from . import stop_strings

        return None if value is None else [s.decode("utf-8") for s in stop_strings.encode_stop_strings(value)]
    if spec.kind == "early_stopping":
        return EarlyStopping.parse(value)
    if spec.kind == "model":
        return None if value is None else _draft_model(name, value, vocab_size)
    return value  # "seed": checked with the batch size, by seed_array


def _draft_model(name: str, value, vocab_size: int):
    """A draft model: a ``LanguageModel`` (its ``.model``) or a protocol model, same vocabulary."""
    model = getattr(value, "model", value)
    if getattr(model, "vocab_size", None) != vocab_size or not hasattr(model, "step_all"):
        validation.fail(name, type(value).__name__,
                        f"must be a LanguageModel (or a model with step_all) with vocab_size={vocab_size}")
    return model


def seed_array(seed, batch: int) -> np.ndarray:
    """``seed`` as int32 ``[batch, 2]``; None draws one random pair for the call.

    Accepts ``(a, b)``, an int ``a`` (= ``(a, 0)``) or an int array ``[batch, 2]``.
    """
    if seed is None:
        seed = np.random.default_rng().integers(0, 2**31, size=2)
    return validation.seeds(seed, batch)


# ---------------------------------------------------------------- the tensors
def decode_options(checked: GenerationOptions, vocab_size: int, seeds: np.ndarray, rows_per_prompt: int,
                   bad_words: tuple[np.ndarray, np.ndarray], sequence_bias: tuple | None = None,
                   stop_tables=None):
    """The ``decoding.DecodeOptions`` tensors of checked options.

    Args:
      checked: options returned by :func:`check`.
      seeds: int32 ``[prompts, 2]``, one pair per prompt (filler rows included).
      rows_per_prompt: decoded rows per prompt (``num_return_sequences`` when
        sampling several, else 1): row ``r`` of prompt ``p`` gets
        ``seeds[p]`` and ``sample_index = r``.
      bad_words: ``(ids int32 [n_words, max_len], lengths int32 [n_words])``
        from ``processors.pack_bad_words``.
      sequence_bias: ``(ids, lengths, biases)`` from
        ``sequence_bias.pack_sequence_bias``; None = off (zero rows).
      stop_tables: ``stop_strings.StopStringTables``; None = off (zero strings).

    Returns:
      ``decoding.DecodeOptions``.
    """
    import tensorflow as tf

    from . import processors
    from .decoding import DecodeOptions, sequence_bias_fields, stop_string_fields

    def mask(ids):
        return tf.constant(processors.vocab_mask_from_ids(ids, vocab_size))

    c = checked
    prompts = seeds.shape[0]
    return DecodeOptions(
        max_new_tokens=tf.constant(c.max_new_tokens, tf.int32),
        pad_token_id=tf.constant(c.pad_token_id, tf.int32),
        eos_mask=mask(c.eos_token_id),
        min_new_tokens=tf.constant(c.min_new_tokens, tf.int32),
        forced_eos_mask=mask(c.forced_eos_token_id),
        suppress_mask=mask(c.suppress_tokens),
        repetition_penalty=tf.constant(c.repetition_penalty, tf.float32),
        no_repeat_ngram_size=tf.constant(c.no_repeat_ngram_size, tf.int32),
        bad_words_ids=tf.constant(bad_words[0]),
        bad_words_lengths=tf.constant(bad_words[1]),
        temperature=tf.constant(c.temperature, tf.float32),
        top_k=tf.constant(c.top_k, tf.int32),
        top_p=tf.constant(c.top_p, tf.float32),
        seeds=tf.constant(np.repeat(seeds, rows_per_prompt, axis=0)),
        sample_index=tf.constant(np.tile(np.arange(rows_per_prompt, dtype=np.int32), prompts)),
        length_penalty=tf.constant(c.length_penalty, tf.float32),
        early_stopping=tf.constant(int(c.early_stopping), tf.int32),
        min_p=tf.constant(c.min_p or 0.0, tf.float32),
        typical_p=tf.constant(c.typical_p, tf.float32),
        epsilon_cutoff=tf.constant(c.epsilon_cutoff, tf.float32),
        eta_cutoff=tf.constant(c.eta_cutoff, tf.float32),
        renormalize_logits=tf.constant(c.renormalize_logits),
        **sequence_bias_fields(sequence_bias),
        **stop_string_fields(stop_tables),
    )
