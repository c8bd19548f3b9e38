"""Trains a small GPT-2 on Shakespeare with xladecode's own TensorFlow model.

Usage::

    python tools/train_shakespeare.py --steps 1100 --batch 16 --seq-len 256 \
        --warmup 80 --lr 2e-3 --eval-every 110 --ckpt-every 110 --seed 0 \
        --out data/train_run --export models/gpt2-shakespeare [--resume]

    (the command that made models/gpt2-shakespeare; see its training_log.json)

    python tools/train_shakespeare.py --benchmark 20 ...   # tokens/s, then exit
    python tools/train_shakespeare.py --verify models/gpt2-shakespeare  # vs transformers

What it does
  * Model: ``xladecode.gpt2.GPT2`` (random GPT-2 init, N(0, 0.02)) with the
    real GPT-2 vocabulary (50257) and a tied LM head; the shape is set by
    ``--n-layer/--n-head/--n-embd/--n-positions``. ``--dropout`` zeroes
    activations after the embeddings and on every residual branch
    (``GPT2.forward(dropout_rate=...)``), with stateless masks seeded by
    (``--seed``, step).
  * ``--init-from FOLDER`` starts from a trained checkpoint's weights instead
    of the random init (fine-tuning; same shape flags). ``--resume
    --change-schedule`` continues a run with a new learning-rate schedule
    (``--steps/--lr/--min-lr-ratio/--warmup``), recorded in the log.
  * Data: ``train.bin`` / ``val.bin`` from ``tools/prepare_shakespeare.py``
    (flat uint16 token ids). Each batch is ``--batch`` windows of
    ``--seq-len + 1`` tokens at uniformly random offsets in ``train.bin``,
    drawn from a ``numpy`` Generator seeded with ``--seed``.
  * One train step is one ``tf.function(jit_compile=True)``: forward, mean
    next-token cross-entropy, gradients, global-norm clipping (``--clip``),
    learning rate (linear warmup for ``--warmup`` steps, then cosine decay to
    ``--lr * --min-lr-ratio`` at ``--steps``) and a hand-written AdamW update
    (below).
  * AdamW (Loshchilov & Hutter): ``m = b1 m + (1-b1) g``,
    ``v = b2 v + (1-b2) g^2``, bias-corrected, ``p -= lr (m_hat /
    (sqrt(v_hat) + eps) + wd p)``. The decay is decoupled (not folded into the
    gradient) and applies to tensors with two or more dimensions: the linear
    layers' weight matrices and the token / position embeddings (as nanoGPT
    does; the token embedding is also the LM head). Biases and layer-norm
    gains are not decayed.
  * Validation: every ``--eval-every`` steps on a fixed, evenly spaced subset
    of ``--eval-windows`` non-overlapping val windows; at the end on every
    non-overlapping window of ``val.bin`` (the reported val loss).
  * Determinism: same ``--seed``, same flags -> same weights, bit for bit.
    The batches come from the seeded Generator, the init from the seed, and
    TF op determinism is enabled (``--no-determinism`` turns it off; on CPU
    with XLA it costs nothing measurable).
  * Checkpoints: every ``--ckpt-every`` steps (and at the end) ``--out``/
    ``state.npz`` holds float32 weights, both Adam moments, the step, the
    Generator state and the run's history. ``--resume`` continues from it and
    ends with exactly the weights an uninterrupted run would have.
    ``--stop-after N`` ends a run early at step N (to test resuming).
  * Export (``--export``): ``config.json`` (transformers ``GPT2LMHeadModel``),
    ``model.safetensors`` (float16, ``transformer.``-prefixed HF names, no
    ``lm_head`` since it is tied; written by :func:`write_safetensors`) and
    ``training_log.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import struct
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from xladecode.config import GPT2Config  # noqa: E402
from xladecode.gpt2 import GPT2  # noqa: E402

EOT = 50256
VOCAB = 50257

# Flags that change the training trajectory: a resumed run must match them.
TRAJECTORY_FLAGS = ("n_layer", "n_head", "n_embd", "n_positions", "seq_len", "batch", "steps",
                    "lr", "min_lr_ratio", "warmup", "weight_decay", "dropout", "init_from", "beta1", "beta2", "eps",
                    "clip", "seed", "data", "seen_vocab")


# Flags that only shape the learning-rate schedule: --change-schedule lets a
# resumed run change them (recorded in the log as a schedule change).
SCHEDULE_FLAGS = ("steps", "lr", "min_lr_ratio", "warmup")


# ----------------------------------------------------------------- safetensors
_ST_DTYPES = {np.dtype("float16"): "F16", np.dtype("float32"): "F32"}


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Writes a ``.safetensors`` file.

    Layout: 8-byte little-endian header length, a JSON header
    ``{name: {dtype, shape, data_offsets: [start, end]}, "__metadata__": {...}}``
    padded with spaces to a multiple of 8 bytes, then the tensors' raw
    little-endian bytes back to back, in header order.
    """
    header: dict = {}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        tag = _ST_DTYPES[np.dtype(array.dtype.name)]
        header[name] = {"dtype": tag, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        blobs.append(array.tobytes())
        offset += array.nbytes
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def hf_config_dict(config: GPT2Config) -> dict:
    """``config.json`` for ``transformers.GPT2LMHeadModel`` (float16 weights)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        # Inference checkpoint: transformers applies these only in train mode (see training_log.json for ours).
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "use_cache": True,
        "dtype": "float16",
    }


# ------------------------------------------------------------------------ data
def load_tokens(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2")


def sample_batch(tokens: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int):
    """``batch`` random windows: inputs and next-token targets, int32 ``[batch, seq_len]``."""
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch, endpoint=True)
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Every non-overlapping window of ``seq_len + 1`` tokens (targets overlap inputs by one)."""
    n = (len(tokens) - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return tokens[idx].astype(np.int32)


# ----------------------------------------------------------------------- model
class VocabularyRestriction:
    """The LM head restricted to the token ids the training data has.

    A 7M-parameter GPT-2 with a 50,257-token head spends most of its training
    FLOPs on the head, yet the Shakespeare training text uses only ~19k of
    those ids. The other ~31k appear neither as inputs nor as targets, so all
    training does to their columns is push them down. Keeping those columns
    *equal* (one shared column ``u``) loses nothing: their n_unseen equal
    logits ``h.u`` sum to one logit ``h.u + log(n_unseen)``. Training then
    computes ``n_seen + 1`` logits instead of 50,257, and the shared column is
    copied into every unseen column before evaluation and export, so the
    exported model is an ordinary full-vocabulary GPT-2.

    Example: seen = [0, 2], vocab 4 -> columns [0, 2, 1] (1 is the shared
    column), column_offsets [0, 0, log 2], label_of [0, 2, 1, 2]
    (token 1 and token 3 both train the shared column, index 2).
    """

    def __init__(self, seen_ids: np.ndarray, vocab_size: int):
        seen = np.zeros(vocab_size, bool)
        seen[seen_ids] = True
        seen_list = np.flatnonzero(seen)
        self.unseen = np.flatnonzero(~seen)
        if len(self.unseen) == 0:
            raise SystemExit("--seen-vocab: the training data uses every token id; nothing to skip")
        self.shared = int(self.unseen[0])
        self.columns = tf.constant(np.append(seen_list, self.shared), tf.int32)  # [n_seen + 1]
        offsets = np.zeros(len(seen_list) + 1, np.float32)
        offsets[-1] = math.log(len(self.unseen))
        self.column_offsets = tf.constant(offsets)
        label_of = np.full(vocab_size, len(seen_list), np.int32)  # unseen ids -> the shared column
        label_of[seen_list] = np.arange(len(seen_list), dtype=np.int32)
        self.label_of = tf.constant(label_of)


class Trainer(tf.Module):
    """The model, AdamW state and the compiled train / eval steps."""

    def __init__(self, config: GPT2Config, args, seen=None):
        super().__init__(name="trainer")
        self.model = GPT2(config, seed=args.seed)
        self.args = args
        self.vocab = VocabularyRestriction(seen, config.vocab_size) if seen is not None else None
        self.names = list(self.model.weights)
        self.params = [self.model.weights[n] for n in self.names]
        self.decay = [len(p.shape) >= 2 for p in self.params]
        self.m = [tf.Variable(tf.zeros_like(p), name="m_" + p.name.split(":")[0]) for p in self.params]
        self.v = [tf.Variable(tf.zeros_like(p), name="v_" + p.name.split(":")[0]) for p in self.params]
        self.step = tf.Variable(0, dtype=tf.int64, name="step")
        # autograph=False: plain Python loops unroll at trace time, and tracing never
        # re-reads this file's source (editing the script mid-run cannot break a run).
        self.train_step = tf.function(self._train_step, jit_compile=True, autograph=False)
        self.eval_step = tf.function(self._eval_step, jit_compile=True, autograph=False)

    def learning_rate(self, step):
        """Linear warmup to ``lr`` over ``warmup`` steps, then cosine to ``lr * min_lr_ratio``."""
        a = self.args
        t = tf.cast(step, tf.float32)
        peak, low = a.lr, a.lr * a.min_lr_ratio
        warm = peak * t / max(a.warmup, 1)
        progress = tf.clip_by_value((t - a.warmup) / max(a.steps - a.warmup, 1), 0.0, 1.0)
        cosine = low + 0.5 * (peak - low) * (1.0 + tf.cos(math.pi * progress))
        return tf.where(t <= a.warmup, warm, cosine)

    def _loss(self, x, y, dropout_seed=None):
        """Per-token loss ``[b, T]`` (dropout only with a ``dropout_seed``: training steps)."""
        rate = self.args.dropout if dropout_seed is not None else 0.0
        if self.vocab is None or dropout_seed is None:  # evaluation always scores the full vocabulary
            logits = self.model.forward(x, dropout_rate=rate, dropout_seed=dropout_seed)
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)  # [b, T]
        logits = self.model.forward(x, dropout_rate=rate, dropout_seed=dropout_seed,
                                    head_columns=self.vocab.columns)  # [b, T, n_seen + 1]
        logits += self.vocab.column_offsets  # the shared column stands for n_unseen equal columns
        labels = tf.gather(self.vocab.label_of, y)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    def _train_step(self, x, y):
        a = self.args
        # Dropout masks: a stateless function of (seed, step), so a resumed run
        # draws exactly the masks an uninterrupted one would.
        dropout_seed = tf.stack([tf.constant(a.seed, tf.int64), self.step + 1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(self._loss(x, y, tf.cast(dropout_seed, tf.int32)))
        grads = tape.gradient(loss, self.params)
        grads = [tf.convert_to_tensor(g) for g in grads]  # the embedding's IndexedSlices -> dense
        grads, grad_norm = tf.clip_by_global_norm(grads, a.clip)
        self.step.assign_add(1)
        lr = self.learning_rate(self.step)
        t = tf.cast(self.step, tf.float32)
        correction1 = 1.0 - tf.pow(a.beta1, t)
        correction2 = 1.0 - tf.pow(a.beta2, t)
        for p, g, m, v, decay in zip(self.params, grads, self.m, self.v, self.decay):
            m.assign(a.beta1 * m + (1.0 - a.beta1) * g)
            v.assign(a.beta2 * v + (1.0 - a.beta2) * tf.square(g))
            update = (m / correction1) / (tf.sqrt(v / correction2) + a.eps)
            if decay:
                update += a.weight_decay * p
            p.assign_sub(lr * update)
        return loss, grad_norm, lr

    def _eval_step(self, x, y, row_weight):
        """Sum of token losses over rows with weight 1 (weight-0 rows are padding), and the token count."""
        loss = self._loss(x, y)
        w = tf.cast(row_weight, tf.float32)[:, None] * tf.ones_like(loss)
        return tf.reduce_sum(loss * w), tf.reduce_sum(w)

    def tie_unseen_columns(self) -> None:
        """With ``--seen-vocab``: copy the shared column into every unseen token's column."""
        if self.vocab is not None:
            wte = self.model.weights["wte.weight"]  # [C, V]
            w = wte.numpy()
            w[:, self.vocab.unseen] = w[:, self.vocab.shared][:, None]
            wte.assign(w)

    def evaluate(self, windows: np.ndarray, batch: int) -> float:
        """Mean next-token loss (nats) over ``windows`` ``[n, T+1]``, in fixed-shape batches."""
        self.tie_unseen_columns()
        total, count = 0.0, 0.0
        for i in range(0, len(windows), batch):
            chunk = windows[i:i + batch]
            weight = np.ones(batch, np.float32)
            if len(chunk) < batch:  # pad with copies, weighted 0: no recompilation
                weight[len(chunk):] = 0.0
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), 0)])
            s, c = self.eval_step(chunk[:, :-1], chunk[:, 1:], weight)
            total += float(s)
            count += float(c)
        return total / count

    # ---------------------------------------------------------- checkpointing
    def save(self, path: Path, rng: np.random.Generator, meta: dict) -> None:
        arrays = {"step": np.int64(self.step.numpy()),
                  "rng_state": np.array(json.dumps(rng.bit_generator.state)),
                  "meta": np.array(json.dumps(meta))}
        for name, p, m, v in zip(self.names, self.params, self.m, self.v):
            arrays["w/" + name] = p.numpy()
            arrays["m/" + name] = m.numpy()
            arrays["v/" + name] = v.numpy()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    def load(self, path: Path, rng: np.random.Generator) -> dict:
        with np.load(path) as data:
            for name, p, m, v in zip(self.names, self.params, self.m, self.v):
                p.assign(data["w/" + name])
                m.assign(data["m/" + name])
                v.assign(data["v/" + name])
            self.step.assign(int(data["step"]))
            rng.bit_generator.state = json.loads(str(data["rng_state"]))
            return json.loads(str(data["meta"]))

    def export(self, folder: Path, log: dict) -> int:
        """Writes the HF checkpoint; returns the size of ``model.safetensors`` in bytes."""
        folder.mkdir(parents=True, exist_ok=True)
        self.tie_unseen_columns()
        cfg = self.model.config
        (folder / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2) + "\n")
        tensors = {"transformer." + n: a.astype(np.float16) for n, a in self.model.hf_weights().items()}
        write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
        (folder / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
        return (folder / "model.safetensors").stat().st_size


# ---------------------------------------------------------------------- verify
def verify_export(folder: str | Path, tokens: int = 128) -> dict:
    """Loads ``folder`` with transformers and with xladecode and compares logits.

    Both sides use the float16 weights widened to float32 (so the difference
    is arithmetic only). Fails if transformers reports missing / unexpected /
    mismatched keys or logs a warning while loading. Needs torch + transformers.
    """
    import io
    import logging

    import torch
    import transformers

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    hf_logger = transformers.utils.logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    try:
        model, info = transformers.GPT2LMHeadModel.from_pretrained(
            folder, output_loading_info=True, dtype=torch.float32)
    finally:
        hf_logger.removeHandler(handler)
    problems = {k: sorted(map(str, v)) for k, v in info.items() if v}
    if problems or stream.getvalue().strip():
        raise SystemExit(f"transformers did not load {folder} cleanly: {problems} {stream.getvalue()!r}")
    model.eval()
    ours = GPT2.from_pretrained(folder)
    ids = np.random.default_rng(0).integers(0, ours.vocab_size, size=(2, min(tokens, ours.max_positions)))
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()
    mine = ours.forward(ids.astype(np.int32)).numpy()
    result = {"folder": str(folder), "loading_info": "no missing/unexpected/mismatched keys, no warnings",
              "max_abs_logit_diff": float(np.abs(theirs - mine).max()),
              "max_abs_logit": float(np.abs(theirs).max()),
              "argmax_agreement": float((theirs.argmax(-1) == mine.argmax(-1)).mean())}
    print(json.dumps(result), flush=True)
    return result


# ------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="data/shakespeare", help="folder with train.bin, val.bin")
    p.add_argument("--out", default="data/train_run", help="folder for resumable state")
    p.add_argument("--export", default=None, help="HF checkpoint folder written at the end")
    p.add_argument("--resume", action="store_true", help="continue from --out/state.npz")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=1100, help="total optimizer steps (fixes the schedule)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr")
    p.add_argument("--warmup", type=int, default=80)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--init-from", default=None, metavar="FOLDER",
                   help="start from this checkpoint's weights (same shape flags) instead of a random init")
    p.add_argument("--seen-vocab", action="store_true",
                   help="train the LM head only on the token ids the training data has, plus one shared "
                        "column standing for all the others (exact for a model whose unseen columns are "
                        "equal; they are made equal before every evaluation and export)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout after the embeddings and on every residual branch (training only)")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=110)
    p.add_argument("--eval-windows", type=int, default=64, help="val windows in periodic evals")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--ckpt-every", type=int, default=110)
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) at this step")
    p.add_argument("--change-schedule", action="store_true",
                   help="with --resume: allow new --steps/--lr/--min-lr-ratio/--warmup from the checkpoint's "
                        "step on (recorded in the log)")
    p.add_argument("--benchmark", type=int, default=0, help="time this many steps, print tokens/s, exit")
    p.add_argument("--no-determinism", action="store_true", help="skip TF op determinism")
    p.add_argument("--verify", default=None, metavar="FOLDER",
                   help="only compare FOLDER's logits in transformers and xladecode, then exit")
    args = p.parse_args(argv)
    if args.seq_len > args.n_positions:
        p.error(f"--seq-len {args.seq_len} exceeds --n-positions {args.n_positions}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.verify:
        verify_export(args.verify)
        return
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (argv or sys.argv[1:])))
    if not args.no_determinism:
        tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(args.seed)

    data = Path(args.data)
    train = load_tokens(data / "train.bin")
    val = load_tokens(data / "val.bin")
    meta_path = data / "meta.json"
    unigram = json.loads(meta_path.read_text()).get("unigram_val_xent_nats") if meta_path.is_file() else None

    config = GPT2Config(vocab_size=VOCAB, n_positions=args.n_positions, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=EOT, eos_token_id=EOT)
    trainer = Trainer(config, args, seen=np.unique(train) if args.seen_vocab else None)
    if args.init_from and not args.resume:  # start from a trained checkpoint's weights (fine-tuning)
        source = GPT2.from_pretrained(args.init_from)
        for name, variable in trainer.model.weights.items():
            if tuple(source.weights[name].shape) != tuple(variable.shape):
                raise SystemExit(f"--init-from {args.init_from}: {name} has shape "
                                 f"{tuple(source.weights[name].shape)}, this model {tuple(variable.shape)}")
            variable.assign(source.weights[name])
        print(f"initialised from {args.init_from}", flush=True)

    def next_batch():
        return sample_batch(train, rng, args.batch, args.seq_len)
    n_params = sum(int(np.prod(p.shape)) for p in trainer.params)
    rng = np.random.default_rng(args.seed)
    tokens_per_step = args.batch * args.seq_len

    if args.benchmark:
        x, y = next_batch()
        t0 = time.perf_counter()
        trainer.train_step(x, y)[0].numpy()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.benchmark):
            x, y = next_batch()
            loss = trainer.train_step(x, y)[0]
        loss = float(loss)
        dt = time.perf_counter() - t0
        print(json.dumps({"params": n_params, "batch": args.batch, "seq_len": args.seq_len,
                          "determinism": not args.no_determinism, "compile_s": round(compile_s, 1),
                          "step_s": round(dt / args.benchmark, 3),
                          "tokens_per_s": round(args.benchmark * tokens_per_step / dt, 1),
                          "loss": loss}))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.npz"
    val_all = eval_windows(val, args.seq_len)
    pick = np.linspace(0, len(val_all) - 1, min(args.eval_windows, len(val_all))).round().astype(int)
    val_subset = val_all[pick]
    run = {"args": {k: getattr(args, k) for k in TRAJECTORY_FLAGS}, "history": [],
           "train_losses": [], "wall_s": 0.0, "train_s": 0.0, "timed_tokens": 0}
    if args.resume:
        if not state_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {state_path}")
        saved = trainer.load(state_path, rng)
        changed = {k: (saved["args"].get(k), v) for k, v in run["args"].items() if saved["args"].get(k) != v}
        schedule_only = set(changed) <= set(SCHEDULE_FLAGS)
        if changed and not (args.change_schedule and schedule_only):
            raise SystemExit(f"--resume: flags differ from the checkpoint (saved, now): {changed}"
                             + ("" if schedule_only else f"; only {SCHEDULE_FLAGS} may change, with "
                                                          "--change-schedule"))
        if changed:  # recorded, so the log says exactly how the run was made
            saved.setdefault("schedule_changes", []).append(
                {"at_step": int(trainer.step.numpy()), "changed": changed})
            saved["args"].update(run["args"])
        run = saved
        print(f"resumed from {state_path} at step {int(trainer.step.numpy())}", flush=True)

    start = int(trainer.step.numpy())
    stop = min(args.steps, args.stop_after) if args.stop_after else args.steps
    print(f"model: {config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, "
          f"n_positions {config.n_positions}, {n_params:,} params; batch {args.batch} x seq {args.seq_len} "
          f"= {tokens_per_step} tokens/step, steps {start} -> {stop} of {args.steps}", flush=True)

    def record_eval(step):
        loss = trainer.evaluate(val_subset, args.eval_batch)
        recent = run["train_losses"][-args.eval_every:]
        entry = {"step": step, "val_loss_subset": round(loss, 4),
                 "train_loss_recent": round(float(np.mean(recent)), 4) if recent else None}
        run["history"].append(entry)
        tqdm.write(json.dumps(entry))

    t_run = time.perf_counter()
    bar = tqdm(total=args.steps, initial=start, dynamic_ncols=True, smoothing=0.1,
               mininterval=1.0 if sys.stderr.isatty() else 15.0)
    first = True
    for step in range(start + 1, stop + 1):
        x, y = next_batch()
        t0 = time.perf_counter()
        loss, grad_norm, lr = trainer.train_step(x, y)
        loss = float(loss)
        dt = time.perf_counter() - t0
        if not first:  # the first call of a process includes XLA compilation
            run["train_s"] += dt
            run["timed_tokens"] += tokens_per_step
        first = False
        if not math.isfinite(loss):
            raise SystemExit(f"loss is {loss} at step {step}")
        run["train_losses"].append(loss)
        tok_s = run["timed_tokens"] / run["train_s"] if run["train_s"] else 0.0
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{float(lr):.2e}", gnorm=f"{float(grad_norm):.2f}",
                        tok_s=f"{tok_s:.0f}", refresh=False)
        bar.update(1)
        if step % args.eval_every == 0 or step == args.steps:
            record_eval(step)
        if step % args.ckpt_every == 0 or step == stop:
            run["wall_s"] += time.perf_counter() - t_run
            t_run = time.perf_counter()
            trainer.save(state_path, rng, run)
    bar.close()
    run["wall_s"] += time.perf_counter() - t_run
    t_run = time.perf_counter()
    if stop < args.steps:
        trainer.save(state_path, rng, run)
        print(f"stopped at step {stop}; continue with --resume", flush=True)
        return

    # Final evaluation: every non-overlapping val window, and as many train windows from a fixed spot.
    t0 = time.perf_counter()
    val_loss = trainer.evaluate(val_all, args.eval_batch)
    train_windows = eval_windows(train, args.seq_len)
    pick = np.linspace(0, len(train_windows) - 1, min(len(val_all), len(train_windows))).round().astype(int)
    train_eval_loss = trainer.evaluate(train_windows[pick], args.eval_batch)
    eval_s = time.perf_counter() - t0
    wall_s = run["wall_s"] + (time.perf_counter() - t_run)
    last = run["train_losses"][-100:]
    log = {
        "command": command,
        "seed": args.seed,
        "model_config": hf_config_dict(config),
        "parameters": n_params,
        "steps": args.steps,
        "batch_size": args.batch,
        "seq_len": args.seq_len,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": args.steps * tokens_per_step,
        "epochs": round(args.steps * tokens_per_step / len(train), 3),
        "optimizer": {"name": "AdamW (hand-written, decoupled weight decay on >=2-D tensors: "
                              "linear weights and wte/wpe; not biases or layer-norm gains)",
                      "lr_peak": args.lr, "lr_min": args.lr * args.min_lr_ratio,
                      "schedule": "linear warmup then cosine decay", "warmup_steps": args.warmup,
                      "beta1": args.beta1, "beta2": args.beta2, "eps": args.eps,
                      "weight_decay": args.weight_decay, "grad_clip_global_norm": args.clip},
        "dropout": args.dropout,
        "init_from": args.init_from,
        "data": {"train_tokens": int(len(train)), "val_tokens": int(len(val)),
                 "unigram_val_loss": unigram},
        "final_train_loss_last100_steps": round(float(np.mean(last)), 4),
        "final_train_loss_eval": round(train_eval_loss, 4),
        "final_train_perplexity_eval": round(math.exp(train_eval_loss), 2),
        "final_val_loss": round(val_loss, 4),
        "final_val_perplexity": round(math.exp(val_loss), 2),
        "final_eval_tokens": int(len(val_all) * args.seq_len),
        "history": run["history"],
        "schedule_changes": run.get("schedule_changes", []),
        "wall_time_s": round(wall_s, 1),
        "final_eval_s": round(eval_s, 1),
        "train_tokens_per_s": round(run["timed_tokens"] / max(run["train_s"], 1e-9), 1),
        "overall_tokens_per_s": round(args.steps * tokens_per_step / wall_s, 1),
        "tf_version": tf.__version__,
        "op_determinism": not args.no_determinism,
        "device": "CPU",
    }
    print(json.dumps({k: log[k] for k in ("final_train_loss_last100_steps", "final_train_loss_eval",
                                          "final_val_loss", "final_val_perplexity", "wall_time_s",
                                          "train_tokens_per_s")}), flush=True)
    if args.export:
        size = trainer.export(Path(args.export), log)
        print(f"wrote {args.export}: model.safetensors {size:,} bytes", flush=True)
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")


if __name__ == "__main__":
    main()
