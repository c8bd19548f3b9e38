"""Benchmark of speculative decoding (``xladecode/speculative.py``): speedup against plain greedy.

Usage::

    python tools/bench_speculative.py                  # all parts (quiet machine: tens of minutes)
    python tools/bench_speculative.py --smoke          # tiny sizes, few tokens: checks the tool runs
    python tools/bench_speculative.py --parts shipped --batch 1 8 --lookup-k 2 4 8

Parts (``--parts``):

* ``shipped``: the shipped model ``models/gpt2-shakespeare``. *Grounded*
  prompts quote a passage and then restart it, so the continuation repeats
  text the prompt holds; *free* prompts are a speaker's name ("ROMEO:").
  Plain greedy vs prompt lookup (``prompt_lookup_num_tokens=k``) at each
  ``--batch``, with and without the drafter's backoff (``--lookup-backoff``), copying after the
  latest or the leftmost match (``--lookup-match``); at batch 1 also transformers (PyTorch) greedy vs its
  ``prompt_lookup_num_tokens`` -- the speedup factors are compared, not the
  absolute speeds. Tokens are checked identical to plain greedy.
* ``draft``: gpt2-small- and gpt2-medium-shaped random targets. The draft is
  the target's first ``--draft-layers`` layers with its final norm and head,
  every weight perturbed by ``noise x`` its tensor's std. On a random target
  the first layers alone predict nothing (acceptance 0), so ``--tail-scale``
  scales the outputs of the target's later blocks down: together with the
  noise it sets the acceptance rate. Sweeps noise and ``k``; reports the measured acceptance
  ``a`` (accepted / proposed draft tokens) and the speedup, plotted with the
  ideal ``(1 - a^(k+1)) / (1 - a)`` tokens per target forward.
* ``hf_draft``: transformers (PyTorch) ``assistant_model`` with the same
  target and draft weights (``num_assistant_tokens=k``, constant schedule),
  batch 1, vs transformers greedy.

Method: every timed configuration runs ``--repeats`` times, interleaved with
its plain-greedy baseline (plain, speculative, plain, ...), and the medians
are compared; the first call (trace + compile) is reported separately. EOS is
disabled, so every row decodes exactly ``--new-tokens`` tokens; tokens/s counts
all rows. Results: ``tools/results/bench_speculative.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import xladecode  # noqa: E402
from xladecode import speculative  # noqa: E402
from xladecode.config import GPT2Config  # noqa: E402
from xladecode.drafters import ModelDrafter, PromptLookupDrafter  # noqa: E402
from xladecode.gpt2 import GPT2  # noqa: E402
from xladecode.lm import LanguageModel  # noqa: E402

RESULTS = REPO / "tools" / "results"
SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "tiny": (2, 2, 64)}

# Public-domain passages; a grounded prompt is a passage, a blank line, and its first words again.
PASSAGES = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
    "And by opposing end them. To die, to sleep;\nNo more; and by a sleep to say we end\n"
    "The heart-ache and the thousand natural shocks\nThat flesh is heir to: 'tis a consummation\n"
    "Devoutly to be wish'd.",
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n"
    "Sometime too hot the eye of heaven shines,\nAnd often is his gold complexion dimm'd;\n"
    "And every fair from fair sometime declines,\nBy chance or nature's changing course untrimm'd.",
    "To-morrow, and to-morrow, and to-morrow,\nCreeps in this petty pace from day to day,\n"
    "To the last syllable of recorded time;\nAnd all our yesterdays have lighted fools\n"
    "The way to dusty death. Out, out, brief candle!\nLife's but a walking shadow, a poor player,\n"
    "That struts and frets his hour upon the stage,\nAnd then is heard no more.",
    "Friends, Romans, countrymen, lend me your ears;\nI come to bury Caesar, not to praise him.\n"
    "The evil that men do lives after them;\nThe good is oft interred with their bones;\n"
    "So let it be with Caesar. The noble Brutus\nHath told you Caesar was ambitious:\n"
    "If it were so, it was a grievous fault,\nAnd grievously hath Caesar answer'd it.",
]
FREE = ["ROMEO:", "JULIET:", "HAMLET:", "KING LEAR:", "First Citizen:", "MACBETH:", "PORTIA:", "OTHELLO:"]


def log(*a):
    print("[bench_speculative]", *a, file=sys.stderr, flush=True)


def grounded_prompts(batch: int) -> list[str]:
    out = []
    for i in range(batch):
        passage = PASSAGES[i % len(PASSAGES)]
        restart = passage.split()[: 3 + i // len(PASSAGES)]
        out.append(passage + "\n\n" + " ".join(restart))
    return out


class Timer:
    """Runs one configuration: ``first`` call time, then ``call()`` timings for medians."""

    def __init__(self, fn):
        self.fn = fn
        start = time.perf_counter()
        self.result = fn()
        self.first_s = time.perf_counter() - start
        self.times: list[float] = []

    def once(self):
        start = time.perf_counter()
        self.result = self.fn()
        self.times.append(time.perf_counter() - start)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def interleave(timers: list[Timer], repeats: int):
    for _ in range(repeats):
        for t in timers:
            t.once()


# ------------------------------------------------------------------ xladecode
def plain_fn(lm, ids, mask, new):
    kw = dict(max_new_tokens=new, eos_token_id=[], pad_token_id=0, do_sample=False)  # greedy, whatever the checkpoint's generation_config says
    return lambda: lm.generate(ids, mask, **kw).sequences[:, ids.shape[1]:]


def speculative_fn(lm, ids, mask, new, drafter):
    """``speculative_loop`` compiled like ``generate`` (prepare + one XLA function)."""
    kw = dict(max_new_tokens=new, eos_token_id=[], pad_token_id=0, do_sample=False)  # greedy, whatever the checkpoint's generation_config says
    call = lm.prepare(ids, mask, **kw)
    speculative.prepare(lm.model)  # eagerly, as generate does: inside the trace it would make TF trace twice
    graph = tf.function(lambda i, m, o: speculative.speculative_loop(lm.model, i, m, o, call.plan.buffer, False, drafter),
                        jit_compile=True, autograph=False)

    def run():
        c = lm.prepare(ids, mask, **kw)
        seq, _, stats = graph(tf.constant(c.input_ids), tf.constant(c.attention_mask), c.options)
        start = c.input_ids.shape[1]
        rows = c.plan.batch * c.strategy.rows_per_prompt
        return (seq.numpy()[:rows, start:start + new],
                dict(iterations=int(stats.iterations), proposed=int(stats.proposed.numpy()[:rows].sum()),
                     accepted=int(stats.accepted.numpy()[:rows].sum())))
    return run


def compare(name: str, lm, ids, mask, new, drafter, repeats, extra: dict) -> dict:
    plain = Timer(plain_fn(lm, ids, mask, new))
    spec = Timer(speculative_fn(lm, ids, mask, new, drafter))
    interleave([plain, spec], repeats)
    tokens, stats = spec.result
    rows = ids.shape[0]
    row = dict(name=name, batch=rows, new_tokens=new, k=drafter.k, **extra,
               plain_tok_s=round(rows * new / plain.median_s, 1), spec_tok_s=round(rows * new / spec.median_s, 1),
               speedup=round(plain.median_s / spec.median_s, 3),
               acceptance=round(stats["accepted"] / max(stats["proposed"], 1), 3),
               tokens_per_iteration=round(rows * new / max(stats["iterations"], 1) / rows, 2),
               identical_tokens=bool(np.array_equal(tokens, plain.result)),
               first_call_plain_s=round(plain.first_s, 2), first_call_spec_s=round(spec.first_s, 2))
    log(json.dumps(row))
    return row


# --------------------------------------------------------------- transformers
def torch_model(folder_or_weights, config: GPT2Config | None = None):
    import torch
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel

    if config is None:
        model = GPT2LMHeadModel.from_pretrained(str(folder_or_weights), dtype=torch.float32)
    else:
        c = config
        model = GPT2LMHeadModel(HFConfig(vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd,
                                         n_layer=c.n_layer, n_head=c.n_head))
        state = {("transformer." + k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in folder_or_weights.items()}
        state["lm_head.weight"] = state["transformer.wte.weight"]
        model.load_state_dict(state, strict=False)
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = None, 0, None
    return model.eval()


def torch_compare(name, model, ids, new, repeats, extra: dict, **spec_kwargs) -> dict:
    import torch

    input_ids = torch.from_numpy(ids.astype(np.int64))

    def gen(**kw):
        def run():
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=new, do_sample=False, **kw)
            return out[:, ids.shape[1]:].numpy()
        return run

    plain, spec = Timer(gen()), Timer(gen(**spec_kwargs))
    interleave([plain, spec], repeats)
    row = dict(name=name, batch=ids.shape[0], new_tokens=new, **extra,
               plain_tok_s=round(new / plain.median_s, 1), spec_tok_s=round(new / spec.median_s, 1),
               speedup=round(plain.median_s / spec.median_s, 3),
               identical_tokens=bool(np.array_equal(spec.result, plain.result)))
    log(json.dumps(row))
    return row


# ---------------------------------------------------------------------- parts
def part_shipped(args) -> list[dict]:
    lm = xladecode.load()
    rows = []
    for batch in args.batch:
        for kind, texts in (("grounded", grounded_prompts(batch)), ("free", FREE[:batch] * (batch // 8 + 1))):
            ids, mask = lm.tokenizer.encode_batch(texts[:batch], pad_token_id=0)
            for k in args.lookup_k:
                for backoff in args.lookup_backoff:
                    for match in args.lookup_match:
                        drafter = PromptLookupDrafter(k, max_backoff=backoff, latest=match == "latest")
                        rows.append(compare(f"shipped/{kind}/lookup", lm, ids, mask, args.new_tokens, drafter,
                                            args.repeats, dict(prompts=kind, max_backoff=backoff, match=match)))
            if batch == 1 and not args.no_transformers:
                model = torch_model(xladecode.default_model_path())
                for k in args.lookup_k:
                    rows.append(torch_compare(f"shipped/{kind}/transformers_lookup", model, ids, args.new_tokens,
                                              args.repeats, dict(prompts=kind, k=k), prompt_lookup_num_tokens=k))
    return rows


def truncated_noisy_draft(target: GPT2, layers: int, noise: float, seed: int = 0) -> GPT2:
    """The target's first ``layers`` blocks + final norm + head, each weight perturbed by
    ``noise`` x its tensor's std (biases and norms too)."""
    import dataclasses

    weights = target.hf_weights()
    config = dataclasses.replace(target.config, n_layer=layers)
    keep = {k: v for k, v in weights.items() if not k.startswith("h.") or int(k.split(".")[1]) < layers}
    rng = np.random.default_rng(seed)
    noisy = {k: v + noise * (v.std() or 1.0) * rng.normal(size=v.shape).astype(np.float32) for k, v in keep.items()}
    return GPT2(config, weights=noisy)


def quiet_tail(model: GPT2, layers: int, scale: float) -> GPT2:
    """``model`` with the output projections (``attn.c_proj``, ``mlp.c_proj``) of every
    block from ``layers`` on multiplied by ``scale``: those blocks then add little to the
    residual stream, so a draft made of the first ``layers`` blocks and the head agrees
    with the target more the smaller ``scale`` is (1 = unchanged, 0 = the draft exactly)."""
    for name, variable in model.weights.items():
        parts = name.split(".")
        if parts[0] == "h" and int(parts[1]) >= layers and name.endswith("c_proj.weight"):
            variable.assign(variable * scale)
    return model


def part_draft(args) -> list[dict]:
    rows = []
    for size in args.sizes:
        n_layer, n_head, n_embd = SIZES[size]
        config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
        ids = np.random.default_rng(0).integers(0, 50257, (1, args.prompt_len)).astype(np.int32)
        for tail_scale in args.tail_scale:  # one random target per tail scale, shared by every noise
            # A wider init than GPT-2's 0.02 keeps random greedy text from collapsing to one token.
            target = LanguageModel(quiet_tail(GPT2(config, init_std=args.init_std, seed=0), args.draft_layers,
                                              tail_scale))
            for noise in args.noise:
                draft = truncated_noisy_draft(target.model, args.draft_layers, noise)
                for k in args.draft_k:
                    extra = dict(size=size, noise=noise, tail_scale=tail_scale, draft_layers=args.draft_layers)
                    rows.append(compare(f"draft/{size}", target, ids, np.ones_like(ids), args.new_tokens,
                                        ModelDrafter(draft, k), args.repeats, extra))
                    if "hf_draft" in args.parts and not args.no_transformers:
                        rows.append(torch_compare(f"draft/{size}/transformers_assistant",
                                                  torch_model(target.model.hf_weights(), config), ids, args.new_tokens,
                                                  args.repeats, extra | dict(k=k),
                                                  assistant_model=torch_model(draft.hf_weights(), draft.config),
                                                  num_assistant_tokens=k, num_assistant_tokens_schedule="constant",
                                                  assistant_confidence_threshold=0.0))
    return rows


def plot(rows: list[dict], path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    draft = [r for r in rows if r["name"].startswith("draft/") and "transformers" not in r["name"]]
    alpha = np.linspace(0, 0.99, 100)
    for k in sorted({r["k"] for r in draft}):
        left.plot(alpha, (1 - alpha ** (k + 1)) / (1 - alpha), "--", lw=1, label=f"ideal k={k}")
        pts = [r for r in draft if r["k"] == k]
        left.scatter([r["acceptance"] for r in pts], [r["speedup"] for r in pts], label=f"measured k={k}")
    left.axhline(1, color="grey", lw=0.5)
    left.set(xlabel="measured acceptance a", ylabel="speedup over plain greedy",
             title="draft model (truncated noisy target)")
    left.legend(fontsize=7)
    shipped = [r for r in rows if r["name"].startswith("shipped/")]
    labels = [f"{r['prompts']} b{r['batch']} k{r['k']}" + (" HF" if "transformers" in r["name"] else "")
              + (f" backoff {r['max_backoff']}" if "max_backoff" in r else "")
              + (f" {r['match']}" if "match" in r else "")
              for r in shipped]
    right.barh(range(len(shipped)), [r["speedup"] for r in shipped],
               color=["tab:orange" if "transformers" in r["name"] else "tab:blue" for r in shipped])
    right.set_yticks(range(len(shipped)), labels, fontsize=7)
    right.axvline(1, color="grey", lw=0.5)
    right.set(xlabel="speedup over the same system's greedy", title="prompt lookup, shipped model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log("wrote", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["shipped", "draft", "hf_draft"],
                   choices=["shipped", "draft", "hf_draft"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=16, help="draft part: random prompt length")
    p.add_argument("--lookup-k", type=int, nargs="+", default=[4])
    p.add_argument("--lookup-backoff", type=int, nargs="+", default=[16, 0],
                   help="prompt lookup's max_backoff values (0 = off, transformers' rule)")
    p.add_argument("--lookup-match", nargs="+", default=["latest"], choices=["latest", "leftmost"],
                   help="which earlier occurrence prompt lookup copies after (leftmost = transformers' rule)")
    p.add_argument("--draft-k", type=int, nargs="+", default=[2, 4, 6])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--tail-scale", type=float, nargs="+", default=[1.0],
                   help="draft part: scale of the target's block outputs past --draft-layers (see quiet_tail); "
                        "lower = a draft that agrees more")
    p.add_argument("--sizes", nargs="+", default=["gpt2", "gpt2-medium"], choices=sorted(SIZES))
    p.add_argument("--init-std", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and counts: checks that the tool runs")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_speculative.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.new_tokens, args.repeats = [1, 2], 8, 1
        args.lookup_k, args.draft_k, args.noise, args.sizes, args.draft_layers = [2], [2], [0.0, 1.0], ["tiny"], 1
        args.out = args.out.with_name("bench_speculative_smoke.json")
    rows = []
    if "shipped" in args.parts:
        rows += part_shipped(args)
    if "draft" in args.parts or "hf_draft" in args.parts:
        rows += part_draft(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(argv=sys.argv[1:], tf=tf.__version__, cpus=os.cpu_count(), load_avg=os.getloadavg())
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    log("wrote", args.out)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
