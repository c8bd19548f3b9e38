"""GPT-2 in plain TensorFlow: no Keras layers, weights kept under their HF names.

The model is a ``tf.Module`` holding one ``tf.Variable`` per Hugging Face
tensor, keyed by the HF name (``h.3.attn.c_attn.weight`` ...), so loading a
checkpoint is a dictionary copy you can read in :data:`param_shapes`. HF stores
GPT-2 linear layers as ``Conv1D`` with weights ``[in, out]``: ``y = x @ W + b``.

Two entry points share one transformer body:

* :meth:`GPT2.forward` -- the whole sequence at once, no cache (training,
  ``lm.logits``, and the "recompute everything" reference in tests);
* :meth:`GPT2.step` -- the decoder protocol (``protocol.py``): runs ``t`` new
  tokens, writes their keys/values into the fixed-size KV cache
  (``kv_cache.py``) and returns the last position's logits;
  :meth:`GPT2.step_all` is its speculative form (per-row write slots, logits
  at every position).
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Mapping, TypeVar

import numpy as np
import tensorflow as tf

from . import kv_cache, positions as pos
from . import checkpoint, safetensors_file
from .config import GPT2Config
from .files import short_repr

#: Tensors kept transposed, ``[n_embd, vocab]`` instead of HF's ``[vocab, n_embd]``.
#: The LM head multiplies by this matrix at every step, one row per sequence,
#: and with one row XLA:CPU's dot is fastest in this layout (``[vocab, C]`` is
#: 1.07x-1.4x slower; ``tools/bench_head_layout.py``). Against ``x @ W^T`` it
#: also wins at a few rows (gpt2-small head: 4.6 vs 7.4 ms at 4 rows,
#: ``tools/bench_dot_dtypes.py``), but ``(W @ x^T)^T`` on a ``[vocab, C]``
#: copy beats both there: speculation's many-row head uses that copy
#: (:meth:`GPT2.prepare_verification`). The embedding lookup gathers columns,
#: which costs little for the few tokens of a step.
#: :meth:`GPT2.hf_weights` gives the checkpoint layout back.
STORED_TRANSPOSED = ("wte.weight", "lm_head.weight")

#: ``step_all`` calls with at least this many rows (batch x positions) use the
#: ``[vocab, C]`` head copy when there is one (see :meth:`GPT2.prepare_verification`).
VERIFY_HEAD_MIN_ROWS = 3

# Buffers that old GPT-2 checkpoints carry but that are not parameters (the
# causal mask as a tensor); we build masks ourselves and skip these.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

_LAYER = re.compile(r"h\.(\d+)\.")  # "h.3.attn.c_attn.weight" -> "3"

T = TypeVar("T")


def param_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of GPT-2, by its Hugging Face name, with its shape."""
    c, inner = config.n_embd, config.inner_dim
    shapes = {
        "wte.weight": (config.vocab_size, c),  # token embeddings, also the LM head when tied
        "wpe.weight": (config.n_positions, c),  # learned absolute position embeddings
        "ln_f.weight": (c,),
        "ln_f.bias": (c,),
    }
    for i in range(config.n_layer):
        prefix = f"h.{i}."
        shapes.update({
            prefix + "ln_1.weight": (c,), prefix + "ln_1.bias": (c,),
            prefix + "attn.c_attn.weight": (c, 3 * c), prefix + "attn.c_attn.bias": (3 * c,),  # fused q, k, v
            prefix + "attn.c_proj.weight": (c, c), prefix + "attn.c_proj.bias": (c,),
            prefix + "ln_2.weight": (c,), prefix + "ln_2.bias": (c,),
            prefix + "mlp.c_fc.weight": (c, inner), prefix + "mlp.c_fc.bias": (inner,),
            prefix + "mlp.c_proj.weight": (inner, c), prefix + "mlp.c_proj.bias": (c,),
        })
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, c)
    return shapes


def map_hf_weights(config: GPT2Config, tensors: Mapping[str, T]) -> dict[str, T]:
    """Checks and renames a checkpoint's tensors to :func:`param_shapes` names.

    ``GPT2LMHeadModel`` files prefix names with ``transformer.``; ``GPT2Model``
    files do not. A tied ``lm_head.weight`` is dropped (it is ``wte``).
    ``tensors`` may be numpy arrays or header records
    (``safetensors_file.TensorInfo``): only ``.shape`` and ``.dtype`` are
    used, so the check can run before any weight is read.

    Raises:
      ValueError: naming the tensor, the expected and the actual shape, for a
        missing, unexpected, duplicated, misshaped or non-float tensor; and
        naming config.json when it claims more layers than the checkpoint has.
    """
    _check_layer_count(config, tensors)
    expected = param_shapes(config)
    found: dict[str, T] = {}
    for name, array in tensors.items():
        short = name.removeprefix("transformer.")
        if short.endswith(_IGNORED_SUFFIXES):
            continue
        if short == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if short not in expected:
            raise ValueError(f"unexpected tensor {short_repr(name)} with shape {tuple(array.shape)} in checkpoint")
        if short in found:  # "wte.weight" beside "transformer.wte.weight": which one is meant?
            raise ValueError(f"tensor {short!r} appears twice in the checkpoint, with and "
                             "without the 'transformer.' prefix")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; weights must be floats")
        found[short] = array
    for name, shape in expected.items():
        if name not in found:
            raise ValueError(f"missing tensor {name!r}: expected shape {shape}")
        if tuple(found[name].shape) != shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(found[name].shape)}, expected {shape} "
                "(from config.json)"
            )
    return found


def _check_layer_count(config: GPT2Config, tensors) -> None:
    """config.json's n_layer against the layers the checkpoint has tensors for.

    Runs first because :func:`param_shapes` makes 12 entries per layer: a
    config claiming a billion layers must fail here, not fill the memory.
    (Every other size only enters shapes, compared one by one afterwards.)
    """
    layers = {match.group(1) for name in tensors
              if (match := _LAYER.match(name.removeprefix("transformer.")))}
    if config.n_layer > len(layers):
        raise ValueError(f"config.json: n_layer={config.n_layer}, but the checkpoint has "
                         f"tensors for {len(layers)} layers")


def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: tf.nn.gelu(x, approximate=True)  # 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
    if name == "gelu":
        return lambda x: tf.nn.gelu(x, approximate=False)
    if name == "relu":
        return tf.nn.relu
    return tf.nn.silu  # "silu" / "swish"; config.py refuses anything else


def _dim(x, axis):
    """Size of ``x`` along ``axis``: a Python int when static (always, in our
    graphs), else a tensor. Static sizes keep ``Shape``/``StridedSlice``/``Pack``
    ops out of the graph, which makes tracing and XLA lowering faster."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _layer_norm(x, gain, bias, eps):
    # Statistics in float32 whatever the weight dtype.
    x = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + eps) * tf.cast(gain, tf.float32) + tf.cast(bias, tf.float32)


class GPT2(tf.Module):
    """GPT-2 language model; implements the decoder protocol (``protocol.py``).

    Args:
      config: the model's shape.
      weights: HF-named arrays (see :func:`map_hf_weights`), or None for a
        fresh random init (normal, std 0.02; used by training).
      dtype: storage / matmul dtype of the weights (float32 or bfloat16).
        Layer norms, softmax and logits are always computed in float32.
      seed: seed of the random init.
      init_std: standard deviation of the random init's matrices (GPT-2 uses
        0.02; a wider one gives untrained models less repetitive output).
    """

    def __init__(self, config: GPT2Config, weights: dict[str, np.ndarray] | None = None,
                 dtype=tf.float32, seed: int = 0, init_std: float = 0.02):
        super().__init__(name="gpt2")
        self.config = config
        self.dtype = tf.as_dtype(dtype)
        self.vocab_size = config.vocab_size
        self.max_positions = config.n_positions
        self.derived = DerivedWeights()
        self._act = _activation(config.activation_function)
        shapes = param_shapes(config)
        if weights is None:
            weights = _random_init(shapes, seed, init_std)
        # One variable per HF tensor, under its HF name: the mapping in plain sight
        # (two of them transposed, see STORED_TRANSPOSED).
        self.weights = {}
        for name in shapes:
            value = np.asarray(weights[name], np.float32)
            if name in STORED_TRANSPOSED:
                value = value.T
            self.weights[name] = tf.Variable(tf.cast(value, self.dtype), name=name.replace(".", "_"))

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype=tf.float32) -> "GPT2":
        """Loads ``config.json`` + safetensors weights from a checkpoint folder.

        The order bounds memory by the checkpoint's size, whatever config.json
        claims: validate config.json, then the safetensors headers, then
        compare the two (names, shapes, dtypes), and only then read the
        tensors it keeps, and build the variables from them.

        Raises:
          FileNotFoundError: no config.json or no safetensors weights.
          ValueError: an invalid config or file, or config and tensors that
            disagree (see ``checkpoint.read_headers`` and :func:`map_hf_weights`).
        """
        folder = Path(folder)
        config = GPT2Config.from_json(folder / "config.json")
        headers = map_hf_weights(config, checkpoint.read_headers(folder))
        weights = safetensors_file.read_tensors(headers)
        checkpoint.check_finite(headers, weights)
        return cls(config, weights, dtype=dtype)

    def hf_weights(self) -> dict[str, np.ndarray]:
        """The weights as numpy arrays in the Hugging Face checkpoint layout (float32)."""
        out = {}
        for name, variable in self.weights.items():
            value = tf.cast(variable, tf.float32).numpy()
            out[name] = value.T if name in STORED_TRANSPOSED else value
        return out

    def prepare_verification(self, refresh: bool = False) -> None:
        """Makes the ``[vocab, C]`` copy of the LM head that :meth:`step_all` uses (idempotent).

        Speculative verification runs the head on ``B * (k + 1)`` rows at
        once, and from about 3 rows on XLA:CPU's dot is much faster with the
        vocabulary as the MAJOR axis -- the opposite of the one-row case that
        :data:`STORED_TRANSPOSED` is laid out for. Measured, 50257-token head,
        ``tf.function(jit_compile=True)``, medians (``tools/bench_head_layout.py``
        prints it; the ratio is the ``[vocab, C]`` time over the ``[C, vocab]`` one):

        =====  =====  ======  ======  ======  =======
        C      1 row  2 rows  3 rows  5 rows  40 rows
        =====  =====  ======  ======  ======  =======
        192    1.28   0.91    ~0.7    0.65    0.84
        768    1.07   1.07    ~0.4    0.70    0.72
        =====  =====  ======  ======  ======  =======

        (3 rows: from a separate, noisier run.) So the model keeps both: the
        one-row layout for decoding, this copy for ``step_all`` calls of
        :data:`VERIFY_HEAD_MIN_ROWS` rows or more. It costs the head's size again
        (38.6 MB float32 for the shipped model, 154 MB for gpt2-small), so it
        is made only when speculation asks for it (``speculative.prepare``).
        It is derived data, not a parameter: kept in :attr:`derived`, outside
        ``variables``, checkpoints and SavedModels; made under the
        ``tf.distribute`` strategy of a mirrored model. Safe to call while
        tracing (the variable is made eagerly, in ``tf.init_scope``).

        Args:
          refresh: recompute an existing copy from the current head. The copy
            does not follow later ``assign`` calls on the head by itself.
        """
        head = self._head()
        if self.derived.verify_head is not None:
            if refresh:
                self.derived.verify_head.assign(tf.transpose(head))
            return
        strategy = getattr(head, "distribute_strategy", None)  # a mirrored model: mirror the copy too
        with tf.init_scope(), (strategy.scope() if strategy is not None else contextlib.nullcontext()):
            self.derived.verify_head = tf.Variable(tf.transpose(head), trainable=False, name="verify_head")

    def clone(self) -> "GPT2":
        """A new GPT2 with copies of these weights, its variables made in the current
        ``tf.distribute`` scope (how ``placement.Replicated`` mirrors a model)."""
        return GPT2(self.config, self.hf_weights(), dtype=self.dtype)

    # ---------------------------------------------------------------- protocol
    def init_cache(self, batch_size: int, max_length: int) -> kv_cache.KVCache:
        c = self.config
        return kv_cache.allocate(c.n_layer, batch_size, c.n_head, max_length, c.head_dim, self.dtype)

    def step(self, input_ids, positions, cache, cache_index, key_mask):
        """See ``protocol.DecoderModel.step``. Returns last-position logits [batch, vocab]."""
        mask = pos.attention_matrix_for_slots(cache_index, _dim(input_ids, 1), key_mask)
        hidden, cache = self._body(input_ids, positions, mask, cache, cache_index)
        return self._lm_head(hidden[:, -1, :]), cache

    def step_all(self, input_ids, positions, cache, cache_index, key_mask):
        """See ``protocol.VerifyingModel.step_all``: per-row slots ``cache_index [batch]``,
        logits at every position ``[batch, t, vocab]`` (speculative verification)."""
        slots = tf.cast(cache_index, tf.int32)[:, tf.newaxis] + tf.range(_dim(input_ids, 1))
        mask = pos.attention_matrix_per_row(slots, key_mask)
        hidden, cache = self._body(input_ids, positions, mask, cache, cache_index)
        rows = _dim(hidden, 0) * _dim(hidden, 1)
        if self.derived.verify_head is not None and isinstance(rows, int) and rows >= VERIFY_HEAD_MIN_ROWS:
            return self._lm_head_by_rows(hidden), cache  # see prepare_verification
        return self._lm_head(hidden), cache

    # ------------------------------------------------------------ full forward
    def forward(self, input_ids, attention_mask=None, dropout_rate: float = 0.0, dropout_seed=None,
                head_columns=None):
        """All-position logits without a cache.

        Args:
          input_ids: int32 ``[batch, T]``.
          attention_mask: int ``[batch, T]`` (left padding) or None (no padding).
          dropout_rate: training only: the share of activations zeroed after
            the embeddings and on each residual branch (GPT-2's
            ``embd_pdrop`` / ``resid_pdrop``). 0 (the default) is inference.
          dropout_seed: int32 ``[2]``, the stateless seed of the dropout
            masks (one training step's seed), needed when ``dropout_rate > 0``.
          head_columns: training only: int32 ``[n]`` token ids. When given, only
            these columns of the LM head are computed (logits ``[batch, T, n]``);
            a trainer uses it to skip the vocabulary entries its data never has.

        Returns:
          float32 ``[batch, T, vocab]`` (or ``[batch, T, n]`` with ``head_columns``).
        """
        input_ids, positions, mask = pos.full_sequence(input_ids, attention_mask)
        drop = _no_dropout
        if dropout_rate > 0.0:
            def drop(x, site):  # a different, reproducible mask at every site
                seed = tf.random.experimental.stateless_fold_in(dropout_seed, site)
                return tf.nn.experimental.stateless_dropout(x, dropout_rate, seed)
        hidden, _ = self._body(input_ids, positions, mask, drop=drop)
        return self._lm_head(hidden, head_columns)

    # ---------------------------------------------------------------- the body
    def _body(self, input_ids, positions, mask, cache=None, cache_index=None, drop=None):
        """Embeddings, n_layer blocks, final layer norm. Returns (hidden [b,t,C] fp32, cache).

        ``drop(x, site)`` is training's dropout (see :meth:`forward`); None at inference."""
        drop = drop or _no_dropout
        c, w = self.config, self.weights
        tokens = tf.transpose(tf.gather(w["wte.weight"], input_ids, axis=1), [1, 2, 0])  # [C, b, t] -> [b, t, C]
        x = tokens + tf.gather(w["wpe.weight"], positions)
        x = drop(tf.cast(x, tf.float32), 0)
        keys, values = [], []
        for i in range(c.n_layer):
            prefix = f"h.{i}."
            h = _layer_norm(x, w[prefix + "ln_1.weight"], w[prefix + "ln_1.bias"], c.layer_norm_epsilon)
            q, k, v = self._qkv(h, prefix)
            if cache is not None:  # write this step's keys/values, attend over the whole cache
                k = kv_cache.write(cache.keys[i], k, cache_index)
                v = kv_cache.write(cache.values[i], v, cache_index)
                keys.append(k)
                values.append(v)
            x = x + drop(self._attention(q, k, v, mask, i, prefix), 2 * i + 1)
            h = _layer_norm(x, w[prefix + "ln_2.weight"], w[prefix + "ln_2.bias"], c.layer_norm_epsilon)
            x = x + drop(self._mlp(h, prefix), 2 * i + 2)
        x = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], c.layer_norm_epsilon)
        new_cache = kv_cache.KVCache(tuple(keys), tuple(values)) if cache is not None else None
        return x, new_cache

    def _linear(self, x, prefix):
        """HF Conv1D: ``x @ W + b`` with W ``[in, out]``; result float32."""
        w, b = self.weights[prefix + ".weight"], self.weights[prefix + ".bias"]
        y = tf.matmul(tf.cast(x, self.dtype), w) + b
        return tf.cast(y, tf.float32)

    def _qkv(self, h, prefix):
        """Fused projection, split into heads: three ``[b, heads, t, head_dim]``."""
        c = self.config
        qkv = self._linear(h, prefix + "attn.c_attn")  # [b, t, 3C]
        qkv = tf.reshape(qkv, [_dim(qkv, 0), _dim(qkv, 1), 3, c.n_head, c.head_dim])
        return tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # 3 x [b, heads, t, head_dim]

    def _attention(self, q, k, v, mask, layer, prefix):
        """Masked softmax attention; q ``[b,h,t,d]``, k/v ``[b,h,S,d]``, mask ``[b,1,t,S]``."""
        c = self.config
        scores = tf.einsum("bhtd,bhsd->bhts", q, tf.cast(k, tf.float32))
        scale = 1.0
        if c.scale_attn_weights:
            scale /= math.sqrt(c.head_dim)
        if c.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        scores = scores * scale
        # A large finite negative, not -inf: a query with every key masked (a
        # pad position) then gets a harmless uniform softmax instead of NaN.
        scores = tf.where(mask, scores, tf.float32.min)
        probs = tf.nn.softmax(scores, axis=-1)
        out = tf.einsum("bhts,bhsd->bhtd", probs, tf.cast(v, tf.float32))
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [_dim(out, 0), _dim(out, 2), c.n_embd])
        return self._linear(out, prefix + "attn.c_proj")

    def _mlp(self, h, prefix):
        return self._linear(self._act(self._linear(h, prefix + "mlp.c_fc")), prefix + "mlp.c_proj")

    def _head(self):
        """The LM head, ``[C, vocab]`` (``wte`` when tied)."""
        return self.weights["wte.weight" if self.config.tie_word_embeddings else "lm_head.weight"]

    def _lm_head_by_rows(self, hidden):
        """:meth:`_lm_head` through the ``[vocab, C]`` copy: ``[b, t, C]`` -> float32 ``[b, t, vocab]``.

        Computed as ``head_vc @ rows^T`` (``[vocab, b*t]``), then transposed:
        with the vocabulary as the dot's leading output axis XLA:CPU streams
        the head once for all the rows (see :meth:`prepare_verification`).
        """
        b, t = _dim(hidden, 0), _dim(hidden, 1)
        rows = tf.reshape(tf.cast(hidden, self.dtype), [b * t, self.config.n_embd])
        logits = tf.transpose(tf.matmul(self.derived.verify_head, rows, transpose_b=True))
        return tf.cast(tf.reshape(logits, [b, t, self.vocab_size]), tf.float32)

    def _lm_head(self, hidden, columns=None):
        """``[..., C]`` -> float32 ``[..., vocab]`` logits (``[..., n]`` for ``columns`` int32 ``[n]``)."""
        head = self._head()  # [C, V]
        if columns is not None:
            head = tf.gather(head, columns, axis=1)  # [C, n]
        logits = tf.matmul(tf.cast(hidden, self.dtype), head)
        return tf.cast(logits, tf.float32)


class DerivedWeights:
    """Copies computed from a model's weights for speed; not parameters.

    A plain object, not a ``tf.Module``, so that the variables it holds stay
    out of the model's ``variables``, checkpoints and SavedModels.
    """

    def __init__(self):
        #: ``[vocab, C]`` copy of the LM head (``GPT2.prepare_verification``), or None.
        self.verify_head = None


def _no_dropout(x, site):
    """Inference: activations pass unchanged."""
    return x


def _random_init(shapes: dict[str, tuple[int, ...]], seed: int, std: float) -> dict[str, np.ndarray]:
    """GPT-2's init: N(0, std) matrices (std 0.02), zero biases, unit layer-norm gains."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            out[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            out[name] = np.zeros(shape, np.float32)
        else:
            out[name] = rng.normal(0.0, std, shape).astype(np.float32)
    return out
