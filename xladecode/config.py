"""GPT-2 hyper-parameters, read from a Hugging Face ``config.json``.

One frozen dataclass holds everything the TensorFlow model needs; every GPT-2
size (distilgpt2 .. gpt2-xl) differs only in these numbers. Values the model
cannot honour are refused here, with the field, the value and what is allowed,
so a bad checkpoint fails before any weight is read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# Activation names as transformers spells them, mapped to the function family
# we implement in gpt2.py. "gelu_new" and "gelu_pytorch_tanh" are the same
# tanh approximation; "gelu" is the exact erf form.
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu", "swish")


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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config.json: {name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"config.json: n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"config.json: activation_function={self.activation_function!r} is not supported; "
                f"allowed: {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"config.json: layer_norm_epsilon={self.layer_norm_epsilon!r} must be > 0"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPT2Config":
        """Builds a config from a ``config.json`` dict, refusing what we cannot run."""
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"config.json: model_type={model_type!r} is not supported; allowed: 'gpt2'")
        if data.get("add_cross_attention", False):
            raise ValueError("config.json: add_cross_attention=True is not supported; allowed: False")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "GPT2Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config.json not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))
