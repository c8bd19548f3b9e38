"""Tests for xladecode.stop_strings: tables, the in-graph check, trimming.

* transformers' own examples (its ``StopStringCriteria`` docstring), exactly;
* a brute-force byte oracle on a small vocabulary with random stop strings;
* parity with transformers' ``StopStringCriteria`` on the real GPT-2
  tokenizer, over hypothesis-drawn token sequences that split stop strings
  (and multi-byte characters) across tokens in unusual places, at every
  prefix length, i.e. at every step a generation could stop;
* left padding is never read as text; the compiled check never retraces when
  the stop strings change within a bucket.
"""

import functools
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import event, given, strategies as st
from hypothesis.extra import numpy as hnp
from budget import examples

from xladecode import stop_strings as S
from xladecode.tokenizer import Tokenizer
from three_ways import traced_once

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_JSON = REPO / "models" / "gpt2-shakespeare" / "tokenizer.json"
SETTINGS = examples(25)
NUM_STRINGS, MAX_BYTES = 4, 16  # one bucket for every stop-string set below


def as_tensors(tables):
    return S.StopStringTables(*[tf.constant(x) for x in tables])


_HIT_XLA = tf.function(S.stop_string_hit, jit_compile=True)


def hit_xla(tokens, mask, cur_len, tables):
    """The compiled check; a tensor ``cur_len`` so its value is no trace key."""
    return _HIT_XLA(tf.constant(tokens), tf.constant(mask), tf.constant(cur_len, tf.int32), tables)


# ---------------------------------------------------------------------------
# transformers' documented examples, on a vocabulary of exactly those pieces
# ---------------------------------------------------------------------------

PIECES = [b"st", b"op", b"stop", b"opera", b"sto", b"pper", b"las", b"topper", b"s", b"to", b"pped",
          b"at", b"tion", b"x"]
PIECE_ID = {piece.decode(): i for i, piece in enumerate(PIECES)}


@pytest.mark.parametrize("row, expected", [
    (["st", "op"], True), (["stop"], True), (["st", "opera"], True), (["sto", "pper"], True),
    (["las", "topper"], True), (["s", "to", "pped"], True),
    (["stop", "at"], False), (["st", "op", "at"], False), (["st", "opera", "tion"], False),
    (["x", "s", "to", "pped"], True), (["s", "x", "to", "pped"], False), (["op"], False),
])
def test_transformers_documented_examples(row, expected):
    tables = S.tables_from_vocab(PIECES, ["stop"])
    ids = np.array([[PIECE_ID[p] for p in row]], np.int32)
    got = S.stop_string_hit(ids, np.ones_like(ids, bool), ids.shape[1], tables).numpy()
    assert got.tolist() == [expected]


# ---------------------------------------------------------------------------
# A brute-force oracle: join the bytes, look for an occurrence ending in the
# last token
# ---------------------------------------------------------------------------

SMALL_VOCAB = [b"a", b"b", b"ab", b"ba", b"aab", b"bba", b"abab", b"\xc3", b"\xa9", b"\xc3\xa9", b"c"]
B, L = 3, 10


def oracle(vocab, row_ids, row_mask, cur_len, stop_strings):
    valid = [t for t, m in zip(row_ids[:cur_len], row_mask[:cur_len]) if m]
    if not row_mask[cur_len - 1]:
        return False
    text = b"".join(vocab[t] for t in valid)
    before = len(text) - len(vocab[valid[-1]])  # the occurrence must end after this many bytes
    return any(s.encode() in text[max(0, before - len(s.encode()) + 1):] for s in stop_strings)


STOPS = st.lists(st.text(alphabet="abcé", min_size=1, max_size=5), min_size=1, max_size=NUM_STRINGS)


@st.composite
def padded_rows(draw, vocab_size):
    """Left-padded rows ending at ``cur_len``, garbage after it; pads hold real ids."""
    cur_len = draw(st.integers(1, L))
    tokens = draw(hnp.arrays(np.int32, (B, L), elements=st.integers(0, vocab_size - 1)))
    mask = np.zeros((B, L), bool)
    for row in range(B):
        mask[row, cur_len - draw(st.integers(1, cur_len)):cur_len] = True
    tokens[:, cur_len:] = draw(hnp.arrays(np.int32, (B, L - cur_len), elements=st.integers(-5, 99)))
    return tokens, mask, cur_len


def planted(data, tokens, mask, cur_len):
    """A stop string cut from a row's own text, so that hits are common."""
    row = data.draw(st.integers(0, B - 1))
    text = b"".join(SMALL_VOCAB[t] for t, m in zip(tokens[row, :cur_len], mask[row, :cur_len]) if m)
    end = data.draw(st.integers(1, len(text)))
    piece = text[max(0, end - data.draw(st.integers(1, 6))):end]
    try:
        return [piece.decode("utf-8")]
    except UnicodeDecodeError:  # cut inside "é": plant nothing
        return []


@examples(40)
@given(padded_rows(len(SMALL_VOCAB)), STOPS, st.data())
def test_matches_brute_force_oracle(rows, stops, data):
    tokens, mask, cur_len = rows
    stops = (planted(data, tokens, mask, cur_len) + stops)[:NUM_STRINGS]
    tables = S.tables_from_vocab(SMALL_VOCAB, stops, num_strings=NUM_STRINGS, max_bytes=MAX_BYTES)
    got = hit_xla(tokens, mask, cur_len, as_tensors(tables)).numpy()
    want = [oracle(SMALL_VOCAB, tokens[r], mask[r], cur_len, stops) for r in range(B)]
    assert got.tolist() == want
    np.testing.assert_array_equal(S.stop_string_hit(tokens, mask, cur_len, tables).numpy(), got)
    event(f"some row stops: {any(want)}")


def test_compiled_check_never_retraces_within_a_bucket():
    fn = tf.function(S.stop_string_hit, jit_compile=True)
    tokens, mask = np.zeros((B, L), np.int32), np.ones((B, L), bool)
    for stops, cur_len in ((["a"], 3), (["ab", "ba", "é"], 4), (["abcab"], 10)):
        tables = S.tables_from_vocab(SMALL_VOCAB, stops, num_strings=NUM_STRINGS, max_bytes=MAX_BYTES)
        fn(tokens, mask, tf.constant(cur_len), as_tensors(tables))
    assert traced_once(fn)


def test_left_padding_is_not_text():
    # Row 0 is "ab" alone; row 1 has pads holding "a" before the same "b".
    tables = S.tables_from_vocab(SMALL_VOCAB, ["ab"])
    tokens = np.array([[1, 1, 0, 1], [0, 0, 0, 1]], np.int32)  # a=0, b=1
    mask = np.array([[False, False, True, True], [False, False, False, True]])
    assert S.stop_string_hit(tokens, mask, 4, tables).numpy().tolist() == [True, False]


def test_model_vocab_larger_than_the_tokenizer():
    tables = S.tables_from_vocab([b"a", b"b"], ["ab"], vocab_size=4)
    assert tables.token_lengths.tolist() == [1, 1, 0, 0] and tables.contains.shape == (1, 4)
    tokens = np.array([[0, 1], [0, 3]], np.int32)
    assert S.stop_string_hit(tokens, np.ones((2, 2), bool), 2, tables).numpy().tolist() == [True, False]


@pytest.mark.parametrize("stops, kwargs, match", [
    ([], {}, "non-empty list"),
    (None, {}, "non-empty list"),
    ([""], {}, r"stop_strings\[0\]"),
    (["a", 3], {}, r"stop_strings\[1\]"),
    (["x" * (S.MAX_STOP_STRING_BYTES + 1)], {}, "at most"),
    (["a", "b"], {"num_strings": 1}, "num_strings=1"),
    (["abc"], {"max_bytes": 2}, "max_bytes=2"),
])
def test_bad_stop_strings_are_rejected(stops, kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.tables_from_vocab(SMALL_VOCAB, stops, **kwargs)


# ---------------------------------------------------------------------------
# Parity with transformers' StopStringCriteria, real GPT-2 tokenizer
# ---------------------------------------------------------------------------

STOP_SETS = [("\n\n",), ("ROMEO:",), ("stop", "\n\n"), ("é", "the end"), ("🙂",), ("a",),
             ("aa", "end"), (" ROMEO", "—", "op")]
FRAGMENTS = ["ROMEO: ", " ROMEO:", "\n\n", "\n", "stop", "stopper", "the end", " the endless",
             "café!", "é", "🙂🙂", "a", "aaa", "—", "JULIET:\n\nROMEO", "<|endoftext|>", " opera"]
PB, PL = 2, 20


@functools.lru_cache(maxsize=None)
def gpt2():
    return Tokenizer.from_folder(TOKENIZER_JSON.parent)


@functools.lru_cache(maxsize=None)
def gpt2_bytes():
    return gpt2().token_bytes()


@functools.lru_cache(maxsize=None)
def hf_criteria(stops):
    from transformers import PreTrainedTokenizerFast
    from transformers.generation.stopping_criteria import StopStringCriteria

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_JSON))
    return StopStringCriteria(hf_tokenizer, list(stops))


@functools.lru_cache(maxsize=None)
def our_tables(stops):
    return as_tensors(S.tables_from_vocab(gpt2_bytes(), list(stops), num_strings=NUM_STRINGS,
                                          max_bytes=MAX_BYTES))


@st.composite
def fragment_ids(draw):
    """A fragment's text cut at random characters, each part encoded alone:
    token boundaries fall where a tokenizer would never put them."""
    text = draw(st.sampled_from(FRAGMENTS))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=3)))
    parts = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)]) if j > i]
    return [t for part in parts for t in gpt2().encode(part)]


@st.composite
def gpt2_rows(draw):
    rows = []
    for _ in range(PB):
        pieces = draw(st.lists(st.one_of(fragment_ids(), st.integers(0, 50256).map(lambda t: [t])),
                               min_size=1, max_size=12))
        row = [t for piece in pieces for t in piece][:PL]
        row += draw(st.lists(st.integers(0, 50256), min_size=PL - len(row), max_size=PL - len(row)))
        rows.append(row)
    return np.array(rows, np.int32)


def test_gpt2_token_bytes_rebuild_the_text():
    for text in ["ROMEO: 🙂 café — <|endoftext|>\n\n", " the end", "\u00e9\u0301"]:
        ids = gpt2().encode(text)
        assert b"".join(gpt2_bytes()[t] for t in ids) == text.encode("utf-8")
    assert len(gpt2_bytes()) == 50257 and min(len(b) for b in gpt2_bytes()) >= 1


@SETTINGS
@given(gpt2_rows(), st.sampled_from(STOP_SETS))
def test_matches_transformers_stop_string_criteria(ids, stops):
    criteria, tables = hf_criteria(stops), our_tables(stops)
    mask, stops_seen = np.ones_like(ids, bool), False
    for cur_len in range(1, PL + 1):
        want = criteria(torch.as_tensor(ids[:, :cur_len], dtype=torch.long), None).numpy()
        got = hit_xla(ids, mask, cur_len, tables).numpy()
        assert got.tolist() == want.tolist(), (cur_len, [gpt2().decode(r[:cur_len]) for r in ids])
        stops_seen = stops_seen or bool(want.any())
    event(f"a row stops at some step: {stops_seen}")  # see --hypothesis-show-statistics


def test_stops_on_the_token_that_completes_a_string_split_three_ways():
    ids = np.array([gpt2().encode("ROM") + gpt2().encode("EO") + gpt2().encode(":")], np.int32)
    assert ids.shape[1] == 3
    stops = ("ROMEO:",)
    for cur_len, expected in [(1, False), (2, False), (3, True)]:
        want = hf_criteria(stops)(torch.as_tensor(ids[:, :cur_len], dtype=torch.long), None).numpy()
        got = S.stop_string_hit(ids, np.ones_like(ids, bool), cur_len, our_tables(stops)).numpy()
        assert want.tolist() == got.tolist() == [expected]


# ---------------------------------------------------------------------------
# Trimming
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, stops, kwargs, expected", [
    ("it was good\n\nROMEO: no", ["\n\n", "ROMEO:"], {}, "it was good"),
    ("it was good\n\nROMEO: no", ["\n\n", "ROMEO:"], {"keep_stop_string": True}, "it was good\n\n"),
    ("to stopera", "stop", {}, "to "),
    ("to stopera", "stop", {"keep_stop_string": True}, "to stop"),
    ("no stop string", ["\n\n"], {}, "no stop string"),
    # The earliest END wins ("b" ends before "abc"); at the same end, the longest.
    ("xabcd", ["abc", "b"], {}, "xa"),
    ("xabcd", ["bc", "abc"], {}, "x"),
    # An occurrence that begins in the prompt (prefix) and ends in the text.
    ("O: hi", ["ROMEO:"], {"prefix": "ROME"}, ""),
    ("O: hi", ["ROMEO:"], {"prefix": "ROME", "keep_stop_string": True}, "O:"),
    # An occurrence entirely inside the prompt does not count.
    ("fine", ["ROMEO:"], {"prefix": "ROMEO:"}, "fine"),
])
def test_trim_stop_string(text, stops, kwargs, expected):
    assert S.trim_stop_string(text, stops, **kwargs) == expected


def test_docstring_examples():
    import doctest

    result = doctest.testmod(S)
    assert result.failed == 0 and result.attempted >= 5


# ---------------------------------------------------------------------------
# Where generation ends: transformers' generate(stop_strings=...) on a random
# checkpoint over the real GPT-2 vocabulary (conftest.text_model)
# ---------------------------------------------------------------------------

# Chosen from what this random model writes ("... accessory Unreal Unreal",
# "646646646"), so that most of them span a token boundary.
GEN_STOPS = [("e",), ("l U", "y a"), ("6646", "ed c"), ("FPS", "ropy p")]
PROMPTS = ["ROMEO:", "To be, or not", "The"]


@pytest.mark.parametrize("stops", GEN_STOPS)
def test_hit_exactly_where_transformers_generate_stops(text_model, stops):
    """Each generated token of transformers' own run: our check is False until
    the token where generate stopped on a stop string, and True there."""
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    model = GPT2LMHeadModel.from_pretrained(text_model).eval()
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_JSON))
    tables = our_tables(stops)
    max_new, stopped_early = 12, 0
    for prompt in PROMPTS:
        for seed in range(2):
            ids = torch.tensor([gpt2().encode(prompt)])
            torch.manual_seed(seed)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 do_sample=seed > 0, top_k=0, stop_strings=list(stops),
                                 tokenizer=hf_tokenizer, pad_token_id=50256).numpy().astype(np.int32)
            prompt_len, total = ids.shape[1], out.shape[1]
            hits = [bool(S.stop_string_hit(out, np.ones_like(out, bool), n, tables).numpy()[0])
                    for n in range(prompt_len + 1, total + 1)]
            assert not any(hits[:-1]), (prompt, gpt2().decode(out[0]))
            ended_on_stop = total < prompt_len + max_new and out[0, -1] != 50256
            if ended_on_stop:
                assert hits[-1], (prompt, gpt2().decode(out[0]))
                stopped_early += 1
    assert stopped_early > 0  # the stop strings did end some runs


def test_encode_stop_strings_sizes_the_buckets():
    assert S.encode_stop_strings("é!") == ["é!".encode()] == [b"\xc3\xa9!"]
    assert S.encode_stop_strings(["\n\n", "ROMEO:"]) == [b"\n\n", b"ROMEO:"]
    with pytest.raises(ValueError, match=r"stop_strings\[0\]"):
        S.encode_stop_strings([None])


def test_token_bytes_are_cached_and_not_shared_mutably():
    first = gpt2().token_bytes()
    first[0] = b"changed"
    assert gpt2().token_bytes()[0] == b"!"
