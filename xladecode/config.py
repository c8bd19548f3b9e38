"""GPT-2 hyper-parameters, read from a Hugging Face ``config.json``.

One frozen dataclass holds everything the TensorFlow model needs; every GPT-2
size (distilgpt2 .. gpt2-xl) differs only in these numbers. Values the model
cannot honour are refused here, with the field, the value and what is allowed,
so a bad checkpoint fails before any weight is read.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path
from typing import Any

from .files import read_json_object, short_repr

# Activation names as transformers spells them, mapped to the function family
# we implement in gpt2.py. "gelu_new" and "gelu_pytorch_tanh" are the same
# tanh approximation; "gelu" is the exact erf form.
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu", "swish")

#: Fields that must be JSON booleans: a string like "no" is truthy in Python
#: and would silently mean True.
BOOL_FIELDS = ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
               "tie_word_embeddings")

#: Upper bound of every size: token ids, positions and shapes are int32 in the
#: graph. A config cannot make us allocate beyond its checkpoint, though: the
#: loader checks every size against the tensors' headers first (gpt2.py).
MAX_DIMENSION = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 shape and numerics.

    Attributes mirror transformers' ``GPT2Config`` names so a ``config.json``
    maps onto it field by field.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    # Upcasting q.k to fp32 changes nothing for us: attention always runs in
    # fp32 here. The flag is accepted so such checkpoints load.
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _check_int(name, getattr(self, name))
        if self.n_inner is not None:
            _check_int("n_inner", self.n_inner)
        if self.n_embd % self.n_head:
            _fail("n_embd", self.n_embd, f"must be divisible by n_head={self.n_head}")
        if not isinstance(self.activation_function, str) or self.activation_function not in SUPPORTED_ACTIVATIONS:
            _fail("activation_function", self.activation_function,
                  f"is not supported; allowed: {', '.join(SUPPORTED_ACTIVATIONS)}")
        eps = self.layer_norm_epsilon
        if not _is_real(eps) or not math.isfinite(eps) or eps <= 0:
            _fail("layer_norm_epsilon", eps, "must be a finite number > 0")
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be true or false (a JSON boolean)")

    def check_token_ids(self) -> None:
        """Refuses special-token ids that are not ids of this vocabulary.

        ``bos_token_id`` / ``pad_token_id``: null or one int; ``eos_token_id``:
        null, one int or a list of ints (any of them ends a sequence); every
        int in ``[0, vocab_size)``. An id outside the vocabulary would load
        fine and then fail every generate call, far from its cause. (Not part
        of ``__post_init__``: configs built in code for random models keep
        GPT-2's default ids with any vocabulary.)
        """
        for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(_is_int(i) and 0 <= i < self.vocab_size for i in ids):
                kind = "an int or a list of ints" if name == "eos_token_id" else "one int"
                _fail(name, value, f"must be null or {kind} in [0, {self.vocab_size - 1}] "
                                   f"(vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPT2Config":
        """Builds a config from a ``config.json`` dict, refusing what we cannot run.

        Keys we do not use (``use_cache``, dropout rates, ...) are ignored.

        Raises:
          ValueError: ``"config.json: field=value is invalid: allowed ..."``.
        """
        if not isinstance(data, dict):
            raise ValueError(f"config.json: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            _fail("model_type", model_type, "is not supported; allowed: 'gpt2'")
        if data.get("add_cross_attention", False) is not False:
            _fail("add_cross_attention", data["add_cross_attention"], "is not supported; allowed: false")
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in names})
        config.check_token_ids()
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> "GPT2Config":
        """Reads ``config.json`` (a regular file holding one JSON object, see
        ``files.read_json_object``) and builds the config from it.

        Raises:
          FileNotFoundError: no such file.
          ValueError: the file is not a JSON object, or a field is invalid.
        """
        path = Path(path)
        if not os.path.lexists(path):
            raise FileNotFoundError(f"config.json not found: {path}")
        return cls.from_dict(read_json_object(path))


def _fail(field: str, value, allowed: str):
    raise ValueError(f"config.json: {field}={short_repr(value)} is invalid: {allowed}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(field: str, value) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_DIMENSION:
        _fail(field, value, f"must be an integer in [1, {MAX_DIMENSION}]")
