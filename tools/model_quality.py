"""Measures a checkpoint's quality and writes it into its model card.

Usage::

    python tools/model_quality.py models/gpt2-shakespeare --data data/shakespeare \
        [--samples 256] [--write]          # --write: quality.json + the card's quality section

What it measures (everything seeded, so two runs print the same numbers):

1. **Held-out cross-entropy** (nats/token) on ``val.bin`` (the validation
   plays, from ``tools/prepare_shakespeare.py``): every non-overlapping window
   of ``n_positions`` tokens, each token predicted from the window before it,
   over the FULL vocabulary (as the training tool's final evaluation).
2. **Degenerate-sample rate** over ``--samples`` samples, split evenly over
   :data:`PROMPTS`, 40 new tokens each, with the checkpoint's own
   ``generation_config.json`` and per-row seeds ``(i, 7)``. A sample is
   degenerate (:func:`is_degenerate`) if it has fewer than 10 words, or a run
   of 8 or more whitespace-only tokens.
3. **distinct-2**: distinct word bigrams / all word bigrams, over all samples.
4. **Repeated lines**: the share of generated lines (non-blank) that repeat
   an earlier line of the same sample.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

PROMPTS = ("ROMEO:", "JULIET:", "HAMLET:", "To be, or not to be")
NEW_TOKENS = 40
MIN_WORDS = 10
MAX_WHITESPACE_RUN = 8
CARD_BEGIN, CARD_END = "<!-- quality:begin -->", "<!-- quality:end -->"


# ------------------------------------------------------------------ metrics
def whitespace_run(pieces: list[str]) -> int:
    """Longest run of consecutive whitespace-only token pieces (``" "``, ``"\\n"``, ``"  "`` ...)."""
    longest = run = 0
    for piece in pieces:
        run = run + 1 if piece and piece.isspace() else 0
        longest = max(longest, run)
    return longest


def is_degenerate(pieces: list[str]) -> bool:
    """Fewer than :data:`MIN_WORDS` words, or :data:`MAX_WHITESPACE_RUN`+ whitespace-only tokens in a row.

    Args:
      pieces: the sample's new tokens, each decoded on its own.
    """
    words = "".join(pieces).split()
    return len(words) < MIN_WORDS or whitespace_run(pieces) >= MAX_WHITESPACE_RUN


def distinct_2(texts: list[str]) -> float:
    """Distinct word bigrams / word bigrams, pooled over ``texts`` (bigrams stay within a text)."""
    bigrams = [tuple(pair) for t in texts for pair in zip(t.split(), t.split()[1:])]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def repeated_line_share(texts: list[str]) -> float:
    """Share of non-blank generated lines equal to an earlier line of the same text."""
    total = repeated = 0
    for text in texts:
        seen = set()
        for line in (ln.strip() for ln in text.split("\n")):
            if not line:
                continue
            total += 1
            repeated += line in seen
            seen.add(line)
    return repeated / total if total else 0.0


# ---------------------------------------------------------------- measuring
def samples(lm, n: int, prompts=PROMPTS, new_tokens: int = NEW_TOKENS) -> list[dict]:
    """``n`` seeded samples (seeds ``(i, 7)``), ``n / len(prompts)`` per prompt, the
    checkpoint's generation config otherwise. Returns dicts: prompt, seed, pieces, text."""
    per_prompt = n // len(prompts)
    out = []
    for p_index, prompt in enumerate(prompts):
        ids = np.asarray([lm.tokenizer.encode(prompt)] * per_prompt, np.int32)
        seeds = np.stack([np.arange(per_prompt) + p_index * per_prompt, np.full(per_prompt, 7)], 1)
        result = lm.generate(ids, max_new_tokens=new_tokens, seed=seeds)
        eos = set(lm.prepare([[0]]).checked.eos_token_id)
        for row, seed in zip(result.sequences[:, ids.shape[1]:], seeds):
            tokens = [int(t) for t in row]
            if any(t in eos for t in tokens):
                tokens = tokens[:next(i for i, t in enumerate(tokens) if t in eos)]
            pieces = [lm.tokenizer.decode([t]) for t in tokens]
            out.append({"prompt": prompt, "seed": [int(seed[0]), int(seed[1])], "pieces": pieces,
                        "text": "".join(pieces)})
    return out


def held_out_cross_entropy(lm, tokens: np.ndarray, batch: int = 16) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over every non-overlapping window; returns (loss, tokens)."""
    import tensorflow as tf

    length = lm.model.max_positions
    n = (len(tokens) - 1) // length
    windows = tokens[np.arange(n)[:, None] * length + np.arange(length + 1)].astype(np.int32)

    @tf.function(jit_compile=True, autograph=False)
    def losses(x, y):
        logits = lm.model.forward(x)
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    total = 0.0
    for i in range(0, n, batch):
        chunk = windows[i:i + batch]  # the last, partial batch compiles once more
        total += float(losses(chunk[:, :-1], chunk[:, 1:]))
    return total / (n * length), n * length


def measure(folder, data: Path | None, n_samples: int) -> dict:
    import xladecode

    t0 = time.perf_counter()
    lm = xladecode.load(folder)
    result = {"checkpoint": str(folder), "prompts": list(PROMPTS), "new_tokens": NEW_TOKENS,
              "generation_config": {k: v for k, v in lm.defaults.as_dict().items() if v is not None}}
    if data is not None:
        val = np.fromfile(Path(data) / "val.bin", dtype="<u2")
        loss, count = held_out_cross_entropy(lm, val)
        result["val_cross_entropy_nats"] = round(loss, 4)
        result["val_perplexity"] = round(math.exp(loss), 2)
        result["val_tokens_scored"] = count
    drawn = samples(lm, n_samples)
    texts = [s["text"] for s in drawn]
    degenerate = [s for s in drawn if is_degenerate(s["pieces"])]
    result.update(
        samples=len(drawn),
        degenerate=len(degenerate),
        degenerate_rate=round(len(degenerate) / len(drawn), 4),
        degenerate_examples=[{"prompt": s["prompt"], "seed": s["seed"], "text": s["text"]}
                             for s in degenerate[:5]],
        distinct_2=round(distinct_2(texts), 4),
        repeated_line_share=round(repeated_line_share(texts), 4),
        seconds=round(time.perf_counter() - t0, 1),
    )
    return result


# ------------------------------------------------------------------ writing
def card_section(result: dict, before: dict | None) -> str:
    """The model card's quality table (between the card's quality markers)."""
    rows = [("held-out cross-entropy (nats/token, validation plays)", "val_cross_entropy_nats"),
            ("degenerate samples", "degenerate_rate"), ("distinct-2 (word bigrams)", "distinct_2"),
            ("generated lines repeating an earlier line", "repeated_line_share")]
    name = before.get("version", "previous model") if before else ""
    head = "| metric | this model |" + (f" {name} |" if before else "")
    lines = [CARD_BEGIN, head, "|---|---|" + ("---|" if before else "")]
    for label, key in rows:
        def cell(r):
            value = r.get(key)
            if key == "degenerate_rate" and value is not None:
                return f"{value:.1%} ({r['degenerate']}/{r['samples']})"
            return "n/a" if value is None else f"{value:.4g}"
        lines.append(f"| {label} | {cell(result)} |" + (f" {cell(before)} |" if before else ""))
    lines.append("")
    lines.append(f"Measured by `python tools/model_quality.py` ({result['samples']} samples of "
                 f"{', '.join(repr(p) for p in PROMPTS)}, {NEW_TOKENS} new tokens, seeds (i, 7), the "
                 "shipped generation_config.json; numbers also in `quality.json`).")
    lines.append(CARD_END)
    return "\n".join(lines)


def write(folder: Path, result: dict, before: dict | None) -> None:
    (folder / "quality.json").write_text(json.dumps({"this_model": result, "previous_model": before},
                                                    indent=2) + "\n")
    card_path = folder / "README.md"
    card = card_path.read_text()
    section = card_section(result, before)
    if CARD_BEGIN in card:
        card = re.sub(re.escape(CARD_BEGIN) + ".*?" + re.escape(CARD_END), lambda m: section, card, flags=re.S)
    else:
        card = card.rstrip() + "\n\n## Quality\n\n" + section + "\n"
    card_path.write_text(card)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(REPO / "models" / "gpt2-shakespeare"))
    p.add_argument("--data", default=str(REPO / "data" / "shakespeare"), help="folder with val.bin ('' = skip)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--before", default=None, help="quality JSON of the previous model, for the card's table (its optional "
                        "\"version\" key names the column)")
    p.add_argument("--write", action="store_true", help="write quality.json and the card's quality section")
    args = p.parse_args(argv)
    result = measure(Path(args.checkpoint), Path(args.data) if args.data else None, args.samples)
    print(json.dumps({k: v for k, v in result.items() if k != "degenerate_examples"}, indent=2))
    if args.write:
        before = json.loads(Path(args.before).read_text()) if args.before else None
        write(Path(args.checkpoint), result, before)


if __name__ == "__main__":
    main()
