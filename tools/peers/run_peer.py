"""Times ONE text-generation system on a shared GPT-2 checkpoint; prints one JSON line.

Run by ``tools/bench_peers.py`` inside the interpreter the system needs
(system python, ``.venv-tf457`` or ``.venv-kerashub``), one process per
measurement so that the peak RSS belongs to that system alone::

    python tools/peers/run_peer.py --system xladecode_xla --checkpoint DIR \
        --batch 1 --prompt-len 16 --new-tokens 4 --mode greedy --repeats 3

Systems:
  torch_eager     transformers (5) PyTorch ``generate``
  torch_compile   the same with ``cache_implementation="static"`` and a
                  ``torch.compile``-d ``forward``
  tf_eager        transformers 4.57 ``TFGPT2LMHeadModel.generate`` (eager)
  tf_xla          the same wrapped in ``tf.function(..., jit_compile=True)``
  kerashub        keras-hub ``GPT2CausalLM.generate`` (TF backend), preprocessor
                  bypassed, as configured by default: its generate loop is a
                  ``tf.function`` whose ``jit_compile`` is Keras' "auto", which
                  Keras resolves to False (no XLA) on a CPU-only machine
  kerashub_xla    the same with ``compile(jit_compile=True)``: XLA forced on
  xladecode_xla   ``xladecode`` ``LanguageModel.generate(jit_compile=True)``
  xladecode_noxla the same graph without XLA

Every system decodes exactly ``--new-tokens`` tokens per row: EOS is
disabled (no stop token), and the count actually produced is reported as
``produced_new_tokens`` (the minimum over rows). Tokens/s counts the new
tokens of all prompts: ``batch * new_tokens / median_s`` (beams are not
counted separately). ``first_call_s`` is the first ``generate`` call (trace +
compile + one run); ``median_s`` is the median of ``--repeats`` later calls.

The JSON line is the last line of stdout and starts with ``{"system"``; any
failure is reported in it as ``error`` (exit code 0 all the same) so that a
benchmark driver never crashes on a broken peer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

SYSTEMS = ("torch_eager", "torch_compile", "tf_eager", "tf_xla", "kerashub", "kerashub_xla", "xladecode_xla",
           "xladecode_noxla")
MODES = ("greedy", "beam4")
REPO = Path(__file__).resolve().parent.parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_prompts(batch: int, prompt_len: int, vocab: int, seed: int = 0):
    """Deterministic random prompts (PCG64 streams are stable across numpy versions)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.integers(1, vocab, (batch, prompt_len)).astype("int32")


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# --------------------------------------------------------------------- systems
# Each builder returns ``generate(ids) -> (new_tokens [batch, <=N] int array,
# produced_new_tokens int)``; the first call of it is the timed first call.

def build_torch(args, ids, compile_forward: bool):
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(args.checkpoint), dtype=torch.float32).eval()
    gc = model.generation_config
    gc.eos_token_id = None  # no stop token: every row decodes exactly N tokens
    gc.pad_token_id = 0
    gc.bos_token_id = None
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, num_beams=args.num_beams,
                  early_stopping=False, length_penalty=1.0)
    if compile_forward:
        # A fresh inductor cache, so that first_call_s is a cold compile as
        # for every other system (inductor otherwise reuses /tmp/torchinductor_*).
        if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            import atexit
            import shutil
            cache = tempfile.mkdtemp(prefix="peers-inductor-")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            atexit.register(shutil.rmtree, cache, True)
        model.forward = torch.compile(model.forward)
        kwargs["cache_implementation"] = "static"
    input_ids = torch.from_numpy(ids.astype(np.int64))
    mask = torch.ones_like(input_ids)

    def generate(_ids):
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1]:].numpy()
        return new, new.shape[1]

    return generate


def load_tf457_model(cls, folder: Path):
    """A transformers 4.57 TF model with the checkpoint's PyTorch-format safetensors weights.

    ``from_pretrained`` takes a path that iterates a ``safe_open`` handle, which
    fails with every safetensors we tried (0.4.5, 0.5.3, 0.6.2, 0.8.0:
    "'builtins.safe_open' object is not iterable"), so we read the file as numpy arrays and hand the dict to the
    same transformers converter (PyTorch names/layouts -> TF variables); no
    torch needed. Any missing or misshaped weight is an error: the benchmark
    promises identical weights.
    """
    from safetensors.numpy import load_file
    from transformers import AutoConfig
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    model = cls(AutoConfig.from_pretrained(str(folder)))
    state = load_file(str(folder / "model.safetensors"))
    model, info = load_pytorch_state_dict_in_tf2_model(
        model, state, tf_inputs=None, allow_missing_keys=True, output_loading_info=True)
    unexpected = [k for k in info["unexpected_keys"] if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if info["missing_keys"] or info["mismatched_keys"] or unexpected:
        raise RuntimeError(f"weights did not load cleanly: missing {info['missing_keys']}, "
                           f"mismatched {info['mismatched_keys']}, unexpected {unexpected}")
    return model


def build_tf457(args, ids, xla: bool):
    import numpy as np
    import tensorflow as tf
    import transformers
    from transformers import TFGPT2LMHeadModel

    if not transformers.__version__.startswith("4."):
        raise RuntimeError(f"tf_* systems need transformers 4.x TF models; found {transformers.__version__}")
    model = load_tf457_model(TFGPT2LMHeadModel, args.checkpoint)
    gc = model.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = 0
    gc.bos_token_id = None
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, num_beams=args.num_beams,
                  early_stopping=False, length_penalty=1.0)
    # The HF blog's XLA recipe: fixed input shapes (our prompts all have length
    # P, so they are already "padded to a fixed length") and one tf.function.
    fn = tf.function(model.generate, jit_compile=True) if xla else model.generate
    input_ids = tf.constant(ids)
    mask = tf.ones_like(input_ids)

    def generate(_ids):
        out = fn(input_ids=input_ids, attention_mask=mask, **kwargs)
        seq = out.numpy() if hasattr(out, "numpy") else np.asarray(out.sequences)
        new = seq[:, ids.shape[1]:]
        return new, new.shape[1]

    return generate


def build_kerashub(args, ids, xla: bool):
    import keras
    import keras_hub
    import numpy as np

    if keras.config.backend() != "tensorflow":
        raise RuntimeError(f"KERAS_BACKEND must be tensorflow, is {keras.config.backend()}")
    cfg = read_config(args.checkpoint)
    backbone, note = None, None
    if args.kerashub_weights == "shared":
        try:  # keras-hub's own transformers-checkpoint loader reads a local HF folder
            backbone = keras_hub.models.GPT2Backbone.from_preset(str(args.checkpoint))
            note = "shared (GPT2Backbone.from_preset on the checkpoint folder)"
        except Exception as exc:  # fall back to same-shape random weights
            note = f"RANDOM, same shapes (loading the checkpoint failed: {type(exc).__name__}: {exc})"[:300]
    if backbone is None:
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=cfg["vocab_size"], num_layers=cfg["n_layer"], num_heads=cfg["n_head"],
            hidden_dim=cfg["n_embd"], intermediate_dim=cfg.get("n_inner") or 4 * cfg["n_embd"],
            max_sequence_length=cfg["n_positions"], dropout=0.0)
        note = note or "RANDOM, same shapes (--kerashub-weights random)"
    if args.num_beams > 1:
        sampler = keras_hub.samplers.BeamSampler(num_beams=args.num_beams)
    else:
        sampler = keras_hub.samplers.GreedySampler()
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    # compile() is where keras-hub takes the sampler; "auto" is Keras' default.
    lm.compile(sampler=sampler, jit_compile=True if xla else "auto")
    batch, p = ids.shape
    total = p + args.new_tokens  # the max length: token_ids are pre-padded to it
    token_ids = np.zeros((batch, total), np.int32)
    token_ids[:, :p] = ids
    padding_mask = np.zeros((batch, total), bool)
    padding_mask[:, :p] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    args.extra["kerashub_weights"] = note

    def generate(_ids):
        out = lm.generate(inputs, stop_token_ids=None)
        args.extra["kerashub_jit_compile"] = bool(lm.jit_compile)  # as resolved by Keras
        new = np.asarray(out["token_ids"])[:, p:]
        produced = int(np.asarray(out["padding_mask"])[:, p:].sum(axis=1).min())
        return new, produced

    return generate


def build_xladecode(args, ids, jit: bool):
    sys.path.insert(0, str(REPO))
    import xladecode

    lm = xladecode.load(args.checkpoint)
    kwargs = dict(max_new_tokens=args.new_tokens, eos_token_id=[], pad_token_id=0,
                  num_beams=args.num_beams, jit_compile=jit)
    if args.num_beams > 1:
        kwargs.update(early_stopping=False, length_penalty=1.0)

    def generate(_ids):
        out = lm.generate(ids, **kwargs)
        new = out.sequences[:, ids.shape[1]:]
        return new, new.shape[1]

    return generate


def build(args, ids):
    s = args.system
    if s in ("torch_eager", "torch_compile"):
        return build_torch(args, ids, compile_forward=s == "torch_compile")
    if s in ("tf_eager", "tf_xla"):
        return build_tf457(args, ids, xla=s == "tf_xla")
    if s in ("kerashub", "kerashub_xla"):
        return build_kerashub(args, ids, xla=s == "kerashub_xla")
    return build_xladecode(args, ids, jit=s == "xladecode_xla")


def set_threads(args):
    if not args.threads:
        return
    if args.system.startswith("torch"):
        import torch
        torch.set_num_threads(args.threads)
    else:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    args.extra["threads"] = args.threads


def versions(system: str) -> dict:
    out = {"python": sys.version.split()[0]}
    for mod in ("numpy", "torch", "tensorflow", "transformers", "tf_keras", "keras", "keras_hub"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", required=True, choices=SYSTEMS)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--mode", choices=MODES, default="greedy")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first one")
    parser.add_argument("--prompts", type=Path, default=None,
                        help=".npy int [batch, prompt_len] prompts (default: seeded random ids)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (torch.set_num_threads / TF intra-op pool / OMP); default: framework's")
    parser.add_argument("--kerashub-weights", choices=("shared", "random"), default="shared",
                        help="kerashub: copy the checkpoint's weights in (default) or keep random ones")
    args = parser.parse_args(argv)
    args.num_beams = 4 if args.mode == "beam4" else 1
    args.extra = {}

    # Environment each framework needs, before any of them is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.system in ("tf_eager", "tf_xla"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # transformers 4.57 TF models need Keras 2 (tf-keras)
    else:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    if args.system.startswith("kerashub"):
        os.environ["KERAS_BACKEND"] = "tensorflow"
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    result = dict(system=args.system, batch=args.batch, mode=args.mode, prompt_len=args.prompt_len,
                  new_tokens=args.new_tokens, repeats=args.repeats)
    try:
        import numpy as np
        if args.prompts is not None:
            ids = np.load(args.prompts).astype(np.int32)
            if ids.shape != (args.batch, args.prompt_len):
                raise ValueError(f"--prompts has shape {ids.shape}, expected {(args.batch, args.prompt_len)}")
        else:
            ids = make_prompts(args.batch, args.prompt_len, read_config(args.checkpoint)["vocab_size"])
        set_threads(args)
        start = time.perf_counter()
        generate = build(args, ids)
        load_s = time.perf_counter() - start

        start = time.perf_counter()
        new, produced = generate(ids)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            new, produced = generate(ids)
            times.append(time.perf_counter() - start)
        median = statistics.median(times) if times else first
        new = np.asarray(new)
        result.update(
            load_s=round(load_s, 3), first_call_s=round(first, 3), median_s=round(median, 4),
            times_s=[round(t, 4) for t in times],
            tokens_per_s=round(args.batch * args.new_tokens / median, 2),
            produced_new_tokens=int(produced),
            first_row_tokens=[int(t) for t in new[0, :16]],
        )
        if produced != args.new_tokens:
            result["warning"] = f"produced {produced} new tokens per row, expected {args.new_tokens}"
    except Exception as exc:  # reported, never raised: the driver must go on
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc(file=sys.stderr)
    result.update(args.extra)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["versions"] = versions(args.system)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
