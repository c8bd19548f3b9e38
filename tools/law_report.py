"""Runs the decoder laws of ``xladecode.testing`` on three systems and tabulates them.

Systems (the same tiny random GPT-2 checkpoints for all three):

* ``transformers-PT``: transformers 5 ``GPT2LMHeadModel.generate`` (PyTorch);
* ``xladecode XLA``: ``LanguageModel.generate`` (one XLA graph);
* ``xladecode eager``: the same graph with ``jit_compile=False``.

For every (law, system) hypothesis searches for a counterexample
(derandomized: the same run every time); a failure is shrunk to a minimal
example, which the report shows. Writes ``tools/results/law_report.md`` and
``law_report.json``.

Usage::

    nice -n 10 python tools/law_report.py [--examples 12] [--out tools/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402

import xladecode  # noqa: E402
from xladecode import testing as xt  # noqa: E402
from xladecode.testing import strategies as xst  # noqa: E402
from xladecode.testing.checkpoints import make_checkpoint  # noqa: E402

VOCAB, WIDTH, NEW, ROWS, EOS = 37, 8, 6, 3, 5  # the shared tiny model of tests/conftest.py
MICRO = dict(vocab=4, eos=3, pad=0, width=4, new=3, beams=64, nrs=3)  # brute force: a 4-token vocabulary
SYSTEMS = ("transformers-PT", "xladecode XLA", "xladecode eager")


@dataclasses.dataclass
class System:
    """One decoder under test, its reference forward, and what it offers."""

    name: str
    decode: xt.Decoder
    logits: xt.LogitsFn
    noise: object  # the sampler's noise for the tie rule, or None
    one_beam: xt.Decoder | None  # a decoder that runs the beam code with one beam (None: there is none)
    micro_decode: xt.Decoder
    micro_logits: xt.LogitsFn
    eager_twin: xt.Decoder | None  # the same decoder without XLA (None: no XLA path)
    draft: object  # a draft model for assistant_model= (speculative decoding), in this system's own form


def build_systems(folder: Path) -> dict[str, System]:
    main, micro = folder / "tiny", folder / "micro"
    # make_checkpoint returns the transformers model it saved (float32, eval mode).
    ref = [make_checkpoint(main, n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=64, seed=7,
                           eos_token_id=EOS),
           make_checkpoint(micro, n_layer=1, n_head=1, n_embd=8, vocab_size=MICRO["vocab"], n_positions=16, seed=5,
                           eos_token_id=MICRO["eos"], std=1.0)]
    draft = noisy_copy(ref[0], folder / "draft")
    lm, micro_lm, draft_lm = xladecode.load(main), xladecode.load(micro), xladecode.load(folder / "draft")
    pt = xt.from_transformers(ref[0])
    systems = {"transformers-PT": System("transformers-PT", pt, xt.transformers_logits(ref[0]), None,
                                         None,  # num_beams=1 runs transformers' greedy path: no beam code to test
                                         xt.from_transformers(ref[1]), xt.transformers_logits(ref[1]), None, draft)}
    for name, jit in (("xladecode XLA", True), ("xladecode eager", False)):
        systems[name] = System(name, xt.from_language_model(lm, jit_compile=jit), xt.language_model_logits(lm),
                               xt.xladecode_noise, xt.language_model_one_beam(lm, jit_compile=jit),
                               xt.from_language_model(micro_lm, jit_compile=jit), xt.language_model_logits(micro_lm),
                               xt.from_language_model(lm, jit_compile=not jit), draft_lm)
    return systems


def noisy_copy(model, folder: Path, scale: float = 0.2):
    """The target with every weight perturbed by ``scale`` x its tensor's std, saved to ``folder``:
    a draft model that agrees with the target often, but not always."""
    import copy

    import torch

    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))
    draft.save_pretrained(folder)
    return draft


def frequent_tokens(system: System) -> list[int]:
    """The model's three most frequent greedy outputs: as EOS ids they really fire."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (ROWS, WIDTH)).astype(np.int32)
    new = system.decode(ids, np.ones_like(ids), max_new_tokens=NEW, eos_token_id=[], pad_token_id=0).tokens
    return [int(t) for t in np.argsort(-np.bincount(new.ravel(), minlength=VOCAB), kind="stable")[:3]]


# --------------------------------------------------------------------------- laws
# Each law: strategies for its inputs, and a check(system, **drawn) that raises
# AssertionError on a violation (NotImplementedError / ValueError: not applicable;
# any other exception is reported as an error).

batch = xst.prompt_batches(VOCAB, WIDTH, max_rows=ROWS, fill_rows=ROWS)
prompt = xst.prompts(VOCAB, WIDTH)
kind = st.sampled_from(["greedy", "sample", "beam"])
any_options = kind.flatmap(lambda k: xst.decoding_options(k, processors=True, num_beams=3, num_return_sequences=2
                                                         if k == "beam" else 1))
eos_index = st.sampled_from([(), (0,), (0, 1)])
pad_index = st.sampled_from([0, 1])  # see _pad
COMMON = dict(max_new_tokens=NEW, pad_token_id=0)


def _eos(frequent, index):
    return [frequent[i] for i in index]


def law_xla_eager(s, frequent, b, options, eos):
    if s.eager_twin is None:
        raise NotImplementedError("no XLA path: PyTorch eager only")
    xt.assert_decoders_agree(s.decode, s.eager_twin, b.input_ids, b.attention_mask, logits=s.logits, noise=s.noise,
                             what="XLA vs eager", eos_token_id=_eos(frequent, eos), **COMMON, **options)


def law_cached(s, frequent, b, eos):
    xt.assert_cached_equals_recompute(s.decode, s.logits, b.input_ids, b.attention_mask,
                                      eos_token_id=_eos(frequent, eos), **COMMON)


def _pad(frequent, which):
    """Pad id: token 0, or one of the model's frequent outputs (where counting pads as text shows)."""
    return [0, frequent[1]][which]


def law_padding(s, frequent, target, extra_pad, options, pad):
    xt.assert_row_invariance(s.decode, target, pad_to=len(target) + extra_pad, logits=s.logits, noise=s.noise,
                             **(COMMON | options | dict(eos_token_id=[frequent[0]], pad_token_id=_pad(frequent, pad))))


def law_batch(s, frequent, target, others, where, options, pad):
    xt.assert_row_invariance(s.decode, target, neighbours=others, position=where, batch_width=WIDTH,
                             fill_rows=ROWS, logits=s.logits, noise=s.noise,
                             **(COMMON | options | dict(eos_token_id=[frequent[0]], pad_token_id=_pad(frequent, pad))))


def law_pad_after_eos(s, frequent, b, options, eos, pad):
    xt.assert_pad_after_eos(s.decode, b.input_ids, b.attention_mask,
                            **(COMMON | options | dict(eos_token_id=_eos(frequent, eos), pad_token_id=pad)))


def law_limit(limit):
    def check(s, frequent, b, seed):
        xt.assert_sampling_limits_are_greedy(s.decode, b.input_ids, b.attention_mask, limits=(limit,), seed=seed,
                                             eos_token_id=[frequent[0]], **COMMON)
    return check


def law_one_beam(s, frequent, b, eos):
    if s.one_beam is None:
        raise NotImplementedError("num_beams=1 runs the greedy path; no one-beam beam search to compare")
    xt.assert_one_beam_equals_greedy(s.one_beam, s.decode, s.logits, b.input_ids, b.attention_mask,
                                     eos_token_id=_eos(frequent, eos), **COMMON)


def law_beam_scores(s, frequent, b, options, eos):
    xt.assert_beam_scores_are_logprobs(s.decode, s.logits, b.input_ids, b.attention_mask,
                                       eos_token_id=_eos(frequent, eos), **COMMON, **options)


def law_brute_force(s, frequent, rows, lp):
    m = MICRO
    ids, mask = xt.left_pad(rows, m["width"], pad_id=m["pad"])
    xt.assert_beam_equals_brute_force(s.micro_decode, s.micro_logits, ids, mask, vocab_size=m["vocab"],
                                      width=m["width"] + m["new"] - 1, max_new_tokens=m["new"], num_beams=m["beams"],
                                      num_return_sequences=m["nrs"], length_penalty=lp, early_stopping="never",
                                      eos_token_id=[m["eos"]], pad_token_id=m["pad"])


def law_reproducible(s, frequent, b, options):
    xt.assert_sampling_reproducible(s.decode, b.input_ids, b.attention_mask, eos_token_id=[frequent[0]], **COMMON,
                                    **options)


def law_neighbour_seeds(s, frequent, target, others, seed):
    xt.assert_row_invariance(s.decode, target, neighbours=others, position=len(others), batch_width=WIDTH,
                             fill_rows=ROWS, neighbour_seed=lambda i: (i + 99, 7), logits=s.logits, noise=s.noise,
                             do_sample=True, top_k=0, seed=seed, eos_token_id=[frequent[0]], **COMMON)


def law_return_sequences(s, frequent, b, seed):
    xt.assert_return_sequences_independent(s.decode, b.input_ids, b.attention_mask, counts=(2, 3), do_sample=True,
                                           top_k=0, seed=seed, eos_token_id=[], **COMMON)


def law_frequencies(s, frequent, target, seed, warp):
    temperature, top_k, top_p = warp
    xt.assert_sample_frequencies(s.decode, s.logits, target, draws=2000, seed=seed, temperature=temperature,
                                 top_k=top_k, top_p=top_p, eos_token_id=[], pad_token_id=0)


def speculation(s: System, drafter: str) -> dict:
    """The ``generate`` options that switch speculative decoding on (same names in both libraries)."""
    if drafter == "lookup":
        return dict(prompt_lookup_num_tokens=3)
    return dict(assistant_model=s.draft, num_assistant_tokens=2)


def law_speculative(drafter):
    def check(s, frequent, rows, eos):
        ids, mask = xt.left_pad(rows, WIDTH)
        spec = speculation(s, drafter)
        xt.assert_speculative_equals_plain(s.decode, lambda i, m, **o: s.decode(i, m, **o, **spec), ids, mask,
                                           logits=s.logits, score_atol=1e-4, eos_token_id=_eos(frequent, eos),
                                           **COMMON)
    return check


def law_speculative_frequencies(s, frequent, target, seed):
    decode = lambda i, m, **o: s.decode(i, m, **o, **speculation(s, "model"))  # noqa: E731
    xt.assert_sample_frequencies(decode, s.logits, target, draws=2000, seed=seed, eos_token_id=[], pad_token_id=0)


# Prompts that repeat a chunk give prompt lookup something to find. One prompt
# per call: transformers' assisted generation takes a batch of one.
repetitive = st.builds(lambda unit, times: (unit * times)[:WIDTH], st.lists(st.integers(0, VOCAB - 1), min_size=1,
                                                                            max_size=4), st.integers(1, 3))
sample_opts = xst.decoding_options("sample", processors=True)
beam_opts = xst.decoding_options("beam", num_beams=3, num_return_sequences=2)
others = st.lists(prompt, max_size=ROWS - 1)
LAWS = {  # name: (check, strategies, examples relative to --examples)
    "XLA == eager": (law_xla_eager, dict(b=batch, options=any_options, eos=eos_index), 1.0),
    "cached == recompute (greedy)": (law_cached, dict(b=batch, eos=eos_index), 1.0),
    "padding invariance": (law_padding, dict(target=prompt, extra_pad=st.integers(1, 4), options=any_options,
                                             pad=pad_index), 2.0),
    "padding invariance, greedy with processors": (law_padding, dict(
        target=prompt, extra_pad=st.integers(1, 4), options=xst.decoding_options("greedy", processors=True),
        pad=pad_index), 2.0),
    "batch-composition invariance": (law_batch, dict(target=prompt, others=others, where=st.integers(0, 2),
                                                     options=any_options, pad=pad_index), 2.0),
    "only pad after EOS": (law_pad_after_eos, dict(b=batch, options=any_options, eos=eos_index.filter(bool),
                                                    pad=st.sampled_from([0, 36])), 2.0),
    "speculative (prompt lookup) == plain greedy": (law_speculative("lookup"), dict(
        rows=st.lists(repetitive, min_size=1, max_size=1), eos=eos_index), 1.0),
    "speculative (draft model) == plain greedy": (law_speculative("model"), dict(
        rows=st.lists(repetitive, min_size=1, max_size=1), eos=eos_index), 1.0),
    "speculative sampling frequencies == softmax (chi2, alpha 1e-3)": (law_speculative_frequencies, dict(
        target=prompt, seed=xst.seeds()), 0.25),
    "top-k 1 == greedy": (law_limit("top_k=1"), dict(b=batch, seed=xst.seeds()), 0.5),
    "temperature 0 == greedy": (law_limit("temperature=0"), dict(b=batch, seed=xst.seeds()), 0.5),
    "one beam == greedy": (law_one_beam, dict(b=batch, eos=st.sampled_from([(), (0,)])), 0.5),
    "beam scores == recomputed log-probs": (law_beam_scores, dict(b=batch, options=beam_opts, eos=eos_index), 1.0),
    "beam search == brute force (vocab 4)": (law_brute_force, dict(
        rows=st.lists(xst.prompts(MICRO["vocab"], MICRO["width"]), min_size=2, max_size=2),
        lp=st.sampled_from([-1.0, 0.0, 1.0, 2.0])), 0.5),
    "seeded sampling reproducible": (law_reproducible, dict(b=batch, options=sample_opts), 0.5),
    "sampled row independent of neighbours' seeds": (law_neighbour_seeds, dict(
        target=prompt, others=others, seed=xst.seeds()), 0.5),
    "sample j independent of num_return_sequences": (law_return_sequences, dict(b=batch, seed=xst.seeds()), 0.5),
    "sample frequencies == filtered softmax (chi2, alpha 1e-3)": (law_frequencies, dict(
        target=prompt, seed=xst.seeds(), warp=st.sampled_from([(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6)])), 0.25),
}


def run_law(check, strategies: dict, system: System, frequent: list[int], examples: int) -> dict:
    """Runs one law on one system under hypothesis; returns its outcome."""
    calls = {"n": 0}

    # No "explain" phase: it re-runs a failing law many times to annotate the example.
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
    @given(**strategies)
    def law(**drawn):
        calls["n"] += 1
        check(system, frequent, **drawn)

    start, error = time.perf_counter(), None
    try:
        law()
    except Exception as caught:  # noqa: BLE001 -- every outcome goes in the report
        error = caught
    outcome = {"result": "pass", "calls": calls["n"], "seconds": round(time.perf_counter() - start, 1)}
    if error is not None:
        notes = [n for n in getattr(error, "__notes__", []) if n.startswith("Falsifying")]
        result = ("FAIL" if isinstance(error, AssertionError) else
                  "n/a" if isinstance(error, (NotImplementedError, ValueError)) else "error")
        outcome |= {"result": result,
                    "message": f"{type(error).__name__}: {str(error).strip()}", "example": "\n".join(notes)}
    return outcome


def cell(outcome: dict) -> str:
    if outcome["result"] == "pass":
        return f"pass ({outcome['calls']} ex.)"
    return {"FAIL": "**FAIL**", "n/a": "n/a", "error": "**error**"}[outcome["result"]]


def write_report(results: dict, meta: dict, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "law_report.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    runs = "; ".join(f"`{r['command']}` ({r['date']}, {r['minutes']:.0f} min)" for r in meta["runs"])
    lines = [
        "# Decoder laws on transformers and xladecode",
        "",
        f"Generated by {runs}; transformers {meta['transformers']}, torch {meta['torch']}, tensorflow "
        f"{meta['tensorflow']}, hypothesis {meta['hypothesis']}. Every law is a function of `xladecode.testing`; "
        "per cell hypothesis drew `--examples` x (a per-law factor) examples, derandomized, and shrank each "
        "failure to the minimal counterexample shown below. Models: random GPT-2, 2 layers, vocabulary 37 "
        "(brute force: 1 layer, vocabulary 4); EOS ids are the model's most frequent outputs, and the padding "
        "laws also draw the pad id from {0, a frequent output}. Cells: pass (examples run), **FAIL** (a law "
        "violated), n/a (the system rejects the input the law needs: reason below), **error** (another exception).",
        "",
        "| law | " + " | ".join(SYSTEMS) + " |",
        "|---|" + "---|" * len(SYSTEMS),
    ]
    for law in LAWS:
        row = results.get(law, {})
        lines.append(f"| {law} | " + " | ".join(cell(row[s]) if s in row else "not run" for s in SYSTEMS) + " |")
    lines += ["", "## Counterexamples and n/a reasons", ""]
    for law in [law for law in LAWS if law in results]:
        row = results[law]
        for system in SYSTEMS:
            o = row.get(system)
            if o is None or o["result"] == "pass":
                continue
            message = o["message"] if len(o["message"]) < 1200 else o["message"][:1200] + " ..."
            lines += [f"### {law} -- {system}: {o['result']}", "", "```", message]
            if o.get("example"):
                lines += ["", o["example"]]
            lines += ["```", ""]
    (out / "law_report.md").write_text("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=12, help="hypothesis examples per cell (x law factor)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--laws", nargs="*", help="only laws whose name contains one of these")
    parser.add_argument("--merge", action="store_true", help="keep the other laws' results of the last report")
    args = parser.parse_args()
    import hypothesis
    import tensorflow as tf
    import torch
    import transformers

    results, runs = {}, []
    if args.merge and (args.out / "law_report.json").exists():
        previous = json.loads((args.out / "law_report.json").read_text())
        meta = previous["meta"]
        results = previous["results"]
        runs = meta.get("runs") or [{k: meta[k] for k in ("command", "date", "minutes", "eos_ids")}]  # older format
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        systems = build_systems(Path(folder))
        frequent = frequent_tokens(systems["xladecode XLA"])
        for law, (check, strategies, factor) in LAWS.items():
            if args.laws and not any(part in law for part in args.laws):
                continue
            examples = max(2, round(args.examples * factor))
            results[law] = {}
            for name in SYSTEMS:
                results[law][name] = run_law(check, strategies, systems[name], frequent, examples)
                print(f"{law:58s} {name:16s} {cell(results[law][name]):16s} {results[law][name]['seconds']:7.1f}s",
                      flush=True)
            # Written after every law, so an interrupted run still leaves what it found.
            nice = f"nice -n {os.nice(0)} " if os.nice(0) else ""  # the priority it really ran at
            this_run = dict(command=nice + shlex.join(["python", "tools/law_report.py"] + sys.argv[1:]),
                            date=time.strftime("%Y-%m-%d"), minutes=(time.perf_counter() - begin) / 60,
                            eos_ids=frequent)
            meta = dict(runs=runs + [this_run], transformers=transformers.__version__, torch=torch.__version__,
                        tensorflow=tf.__version__, hypothesis=hypothesis.__version__)
            write_report(results, meta, args.out)


if __name__ == "__main__":
    main()
