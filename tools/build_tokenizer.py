"""Builds a single ``tokenizer.json`` from GPT-2's ``vocab.json`` + ``merges.txt``.

Usage::

    python tools/build_tokenizer.py VOCAB MERGES OUT_DIR

Writes ``OUT_DIR/tokenizer.json`` (byte-level BPE model, ByteLevel
pre-tokenizer without prefix space, ByteLevel decoder, ``<|endoftext|>`` as a
special token) and nothing else. Shipping one self-contained JSON file next
to a checkpoint means loading never depends on where the raw files live.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Allow running as a plain script from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xladecode.tokenizer import Tokenizer  # noqa: E402

# A known GPT-2 tokenization, used as a smoke test of the written file.
_CHECK_TEXT, _CHECK_IDS = "TensorFlow is", [51, 22854, 37535, 318]


def build(vocab_path, merges_path, out_dir) -> Path:
    """Writes ``out_dir/tokenizer.json`` and returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    out = Path(out_dir) / "tokenizer.json"
    Tokenizer.from_vocab_merges(vocab_path, merges_path).save_tokenizer_json(out)
    # Reload what was written and check it behaves like GPT-2.
    tok = Tokenizer.from_folder(out_dir)
    ids = tok.encode(_CHECK_TEXT)
    if ids != _CHECK_IDS or tok.vocab_size != 50257 or tok.eos_token_id != 50256:
        raise RuntimeError(f"written tokenizer is not GPT-2: {_CHECK_TEXT!r} -> {ids}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("vocab", help="path to vocab.json")
    p.add_argument("merges", help="path to merges.txt")
    p.add_argument("out_dir", help="folder to write tokenizer.json into")
    args = p.parse_args(argv)
    print(f"wrote {build(args.vocab, args.merges, args.out_dir)}")


if __name__ == "__main__":
    main()
