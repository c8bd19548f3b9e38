"""Tests for xladecode.tokenizer against the real GPT-2 vocabulary."""

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from budget import examples

from xladecode.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
RAW_DIR = REPO / "tests" / "data" / "gpt2-tokenizer"        # vocab.json + merges.txt
JSON_DIR = REPO / "models" / "gpt2-shakespeare"             # tokenizer.json
EOT = 50256
TF_IDS = [51, 22854, 37535, 318]                            # "TensorFlow is"


@functools.lru_cache(maxsize=None)
def _shared() -> Tokenizer:
    """One tokenizer for all tests (hypothesis tests cannot take fixtures)."""
    return Tokenizer.from_folder(JSON_DIR)


@pytest.fixture
def tok():
    return _shared()


@pytest.mark.parametrize("load", [
    lambda: Tokenizer.from_folder(RAW_DIR),
    lambda: Tokenizer.from_folder(JSON_DIR),
    lambda: Tokenizer.from_vocab_merges(RAW_DIR / "vocab.json", RAW_DIR / "merges.txt"),
], ids=["vocab+merges folder", "tokenizer.json", "from_vocab_merges"])
def test_known_gpt2_ids(load):
    t = load()
    assert t.encode("TensorFlow is") == TF_IDS
    assert t.vocab_size == 50257
    assert t.eos_token_id == EOT
    assert t.encode("<|endoftext|>") == [EOT]


def test_save_tokenizer_json_round_trip(tmp_path):
    Tokenizer.from_folder(RAW_DIR).save_tokenizer_json(tmp_path / "tokenizer.json")
    t = Tokenizer.from_folder(tmp_path)
    assert t.encode("TensorFlow is") == TF_IDS
    assert (tmp_path / "tokenizer.json").read_bytes() == (JSON_DIR / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("text", [
    "Hello world", "  two leading spaces", " one", "tab\tand\nnew lines\n\n",
    "héllo wörld — naïve café", "日本語のテキスト", "emoji 😀👍🏽", "", "a<|endoftext|>b",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@examples(50)
@given(st.text(max_size=40))
def test_round_trip_property(text):
    t = _shared()
    assert t.decode(t.encode(text)) == text


def test_encode_batch_left_pads(tok):
    ids, mask = tok.encode_batch(["TensorFlow is", " is", ""], pad_token_id=EOT)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.shape == mask.shape == (3, 4)
    np.testing.assert_array_equal(ids, [TF_IDS, [EOT, EOT, EOT, 318], [EOT] * 4])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])


def test_encode_batch_pad_to_multiple_of(tok):
    ids, mask = tok.encode_batch(["TensorFlow is", " is"], pad_token_id=0, pad_to_multiple_of=8)
    assert ids.shape == (2, 8)
    np.testing.assert_array_equal(ids[0], [0, 0, 0, 0] + TF_IDS)
    np.testing.assert_array_equal(mask.sum(axis=1), [4, 1])
    assert mask[1, -1] == 1 and ids[1, -1] == 318           # real tokens are right-aligned
    # Already a multiple: no extra padding.
    assert tok.encode_batch(["TensorFlow is"], pad_token_id=0, pad_to_multiple_of=4)[0].shape == (1, 4)
    with pytest.raises(ValueError):
        tok.encode_batch(["x"], pad_token_id=0, pad_to_multiple_of=0)


def test_decode_strips_padding(tok):
    texts = ["TensorFlow is", " great", ""]
    # pad id 0 is the real token "!": only the mask can tell pads apart.
    ids, mask = tok.encode_batch(texts, pad_token_id=0, pad_to_multiple_of=8)
    assert tok.decode_batch(ids, mask) == texts
    assert tok.decode(ids[1], attention_mask=mask[1]) == " great"
    assert tok.decode(ids[1]).startswith("!!!")            # without a mask, pads decode
    # skip_ids removes ids wherever they occur; otherwise EOT is decoded verbatim.
    row = np.array([EOT, EOT] + TF_IDS + [EOT], dtype=np.int32)
    assert tok.decode(row, skip_ids=[EOT]) == "TensorFlow is"
    assert tok.decode(row) == "<|endoftext|><|endoftext|>TensorFlow is<|endoftext|>"
    assert tok.decode_batch(row[None], skip_ids={EOT}) == ["TensorFlow is"]


@examples(30)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_encode_batch_matches_encode(texts):
    t = _shared()
    ids, mask = t.encode_batch(texts, pad_token_id=EOT)
    for row, m, text in zip(ids, mask, texts):
        assert row[m == 1].tolist() == t.encode(text)
        assert m.tolist() == sorted(m.tolist())             # zeros strictly before ones
    assert t.decode_batch(ids, mask) == texts


def test_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        Tokenizer.from_folder(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg
    assert "tokenizer.json" in msg and "vocab.json" in msg and "merges.txt" in msg
    # vocab.json alone is not enough.
    (tmp_path / "vocab.json").write_bytes((RAW_DIR / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_folder(tmp_path)
