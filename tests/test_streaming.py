"""Streaming (``lm.stream``, ``lm.stream_text``): the laws, the text rule, the refusals.

Laws (hypothesis, tiny random checkpoints):

* the streamed tokens are ``generate``'s tokens, for greedy and seeded
  sampling, any chunk size, with left padding, EOS and several rows;
* a row's text pieces join to ``generate_text``'s text, also when the model
  can only emit the byte fragments of multi-byte characters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from budget import examples

from xladecode.testing.adapters import language_model_logits, xladecode_noise
from xladecode.testing.decoder import left_pad
from xladecode.testing.ties import assert_same_tokens, next_token_logits
from xladecode.streaming import REPLACEMENT_CHARACTER, TextPieces

VOCAB = 37
WIDTH = 6
SETTINGS = examples(10)

prompt = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=WIDTH)


def _streamed(chunks) -> np.ndarray:
    return np.concatenate([c.tokens for c in chunks], axis=1)


@pytest.fixture(scope="module")
def frequent(tiny_lm):
    """The two tokens this model emits most often, greedy and sampled: EOS ids that really fire."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, WIDTH)).astype(np.int32)
    outs = [tiny_lm.generate(ids, max_new_tokens=12, eos_token_id=[], pad_token_id=0, do_sample=do_sample,
                             top_k=0, seed=(1, 2)).sequences[:, WIDTH:] for do_sample in (False, True)]
    counts = np.bincount(np.concatenate(outs).ravel(), minlength=VOCAB)
    return [int(t) for t in np.argsort(-counts, kind="stable")[:2]]


def _check_against_generate(lm, rows, chunks, out, do_sample, seed, eos):
    """The chunks joined == generate's new tokens; generate's later columns are pad (= EOS here)."""
    got, want = _streamed(chunks), out.sequences[:, WIDTH:]
    steps = got.shape[1]
    assert [c.step for c in chunks] == list(np.cumsum([c.tokens.shape[1] for c in chunks]))
    assert (want[:, steps:] == eos).all(), "the stream stopped before generate did"
    assert (chunks[-1].finished | (steps == want.shape[1])).all(), "the stream stopped early"
    for i, row in enumerate(rows):
        # Equal, or first different where the reference's (Gumbel-perturbed, when sampling) logits nearly tie.
        logits_fn = next_token_logits(language_model_logits(lm), row, noise=xladecode_noise if do_sample else None,
                                      seed=seed)
        assert_same_tokens(got[i], want[i, :steps], logits_fn, what="stream vs generate")
        finished_at = np.flatnonzero(want[i] == eos)
        if finished_at.size:  # a row's flag is set from the chunk of its EOS on
            chunk_of_eos = next(k for k, c in enumerate(chunks) if c.step > finished_at[0])
            assert [bool(c.finished[i]) for c in chunks] == [k >= chunk_of_eos for k in range(len(chunks))]


@SETTINGS
@given(rows=st.lists(prompt, min_size=3, max_size=3), new=st.integers(1, 12), chunk_size=st.integers(1, 13),
       do_sample=st.booleans(), eos=st.sampled_from([0, 1]),
       seed=st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)))
def test_streamed_tokens_are_generates_tokens(tiny_lm, frequent, rows, new, chunk_size, do_sample, eos, seed):
    """Any chunk size, greedy or seeded sampling, three rows with their own left padding and EOS steps.

    Three rows: the plan adds a filler row (bucket 4), which the stream drops
    as generate does. Batch 1 (no filler) is :func:`test_stream_ends_with_the_last_row`.
    """
    eos = frequent[eos]
    ids, mask = left_pad(rows, WIDTH, pad_id=0)
    options = dict(max_new_tokens=new, eos_token_id=eos, pad_token_id=eos, do_sample=do_sample,
                   top_k=0, seed=seed)
    out = tiny_lm.generate(ids, mask, **options)
    chunks = list(tiny_lm.stream(ids, mask, chunk_size=chunk_size, **options))
    assert all(1 <= c.tokens.shape[1] <= chunk_size and c.tokens.shape[0] == len(rows) for c in chunks)
    _check_against_generate(tiny_lm, rows, chunks, out, do_sample, seed, eos)


@pytest.mark.parametrize("do_sample", [False, True])
def test_eos_fires_in_the_law_test(tiny_lm, frequent, do_sample):
    """The law above means something only if rows end early, at different steps: they do."""
    ids, mask = left_pad([[1, 2, 3], [4], [7, 8, 9, 10, 11, 12]], WIDTH)
    new = tiny_lm.generate(ids, mask, max_new_tokens=12, eos_token_id=frequent[0], pad_token_id=frequent[0],
                           do_sample=do_sample, top_k=0, seed=(1, 2)).sequences[:, WIDTH:]
    first_eos = {int(np.argmax(row == frequent[0])) if (row == frequent[0]).any() else None for row in new}
    assert len(first_eos) > 1 and min((f for f in first_eos if f is not None), default=99) < 11, new


def test_stream_ends_with_the_last_row(tiny_lm):
    """When every row has finished, the stream stops (as generate's loop does), mid-chunk or not."""
    ids = np.array([[3, 1, 4, 1, 5]], np.int32)
    greedy = tiny_lm.generate(ids, max_new_tokens=8, eos_token_id=[], pad_token_id=0).sequences[0, 5:]
    eos = int(greedy[2])  # the third token becomes the EOS
    stop = int(np.argmax(greedy == eos)) + 1  # the first step that emits it
    chunks = list(tiny_lm.stream(ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=0, chunk_size=1))
    assert [c.step for c in chunks] == list(range(1, stop + 1))
    assert [bool(c.finished[0]) for c in chunks] == [False] * (stop - 1) + [True]
    assert _streamed(chunks)[0].tolist() == greedy[:stop].tolist()


def test_several_samples_per_prompt_and_scores(tiny_lm, frequent):
    """num_return_sequences rows, grouped by prompt; scores stream with their tokens."""
    ids, mask = left_pad([[1, 2], [3, 4, 5]], WIDTH)
    options = dict(max_new_tokens=7, do_sample=True, num_return_sequences=2, seed=(5, 6),
                   output_scores=True, eos_token_id=frequent[0], pad_token_id=frequent[0])
    out = tiny_lm.generate(ids, mask, **options)
    chunks = list(tiny_lm.stream(ids, mask, chunk_size=3, **options))
    steps = chunks[-1].step
    assert _streamed(chunks).tolist() == out.sequences[:, WIDTH:WIDTH + steps].tolist()
    scores = np.concatenate([c.scores for c in chunks], axis=1)
    np.testing.assert_allclose(scores, out.scores[:, :steps], rtol=1e-5, atol=1e-6)


def test_chunk_size_is_not_a_compile_key(tiny_lm):
    """Two programs (prefill, resume) per shape bucket, in the cache generate uses; any chunk size."""
    ids = np.array([[2, 7, 1]], np.int32)
    before = tiny_lm.compile_count
    list(tiny_lm.stream(ids, max_new_tokens=9, chunk_size=4, temperature=0.5, do_sample=True))
    assert tiny_lm.compile_count - before in (0, 2)  # 0: an earlier test compiled this bucket
    before = tiny_lm.compile_count
    for chunk_size in (1, 2, 5, 9, 100):  # other values, lengths and options of the same buckets
        list(tiny_lm.stream(ids[:, :chunk_size % 3 + 1], max_new_tokens=chunk_size % 20 + 1,
                            chunk_size=chunk_size, temperature=1.5, seed=chunk_size, do_sample=True))
    assert tiny_lm.compile_count == before


def test_without_xla_too(tiny_lm):
    ids = np.array([[2, 7, 1]], np.int32)
    out = tiny_lm.generate(ids, max_new_tokens=9, jit_compile=False, eos_token_id=[], pad_token_id=0)
    chunks = list(tiny_lm.stream(ids, max_new_tokens=9, chunk_size=4, jit_compile=False, eos_token_id=[],
                                 pad_token_id=0))
    assert _streamed(chunks).tolist() == out.sequences[:, 3:].tolist()


class _TwoReplicas:
    """A placement that splits rows over two replicas (never run: streaming refuses it first)."""

    row_multiple = 2

    def place_model(self, model):
        return model


def test_a_placement_over_several_devices_is_refused(tiny_lm):
    with pytest.raises(ValueError, match="placement=._TwoReplicas.*one device"):
        tiny_lm.with_placement(_TwoReplicas()).stream(np.array([[1, 2]], np.int32))


@pytest.mark.parametrize("options, message", [
    (dict(chunk_size=0), "chunk_size=0"),
    (dict(chunk_size=2.5), "chunk_size=2.5"),
    (dict(num_beams=2), "num_beams=2"),
    (dict(prompt_lookup_num_tokens=2), "prompt_lookup_num_tokens=2"),
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(jit_compile="yes"), "jit_compile"),
])
def test_bad_calls_fail_at_the_call_before_any_compile(tiny_lm, options, message):
    before = tiny_lm.compile_count
    with pytest.raises(ValueError, match=message):
        tiny_lm.stream(np.array([[1, 2]], np.int32), **options)  # no next(): the call itself raises
    assert tiny_lm.compile_count == before
    if "num_beams" in options:
        with pytest.raises(ValueError, match="re-ranks its beams"):
            tiny_lm.stream(np.array([[1, 2]], np.int32), **options)


# ---------------------------------------------------------------------- text
@examples(40)
@given(text=st.text(max_size=40), cuts=st.lists(st.integers(0, 60), max_size=8))
def test_text_pieces_join_to_the_decoded_text(text_lm, text, cuts):
    """Any text (multi-byte characters included), its tokens pushed in any groups."""
    tokenizer = text_lm.tokenizer
    ids = tokenizer.encode(text)
    bounds = sorted({0, len(ids), *[c for c in cuts if c < len(ids)]})
    pieces = TextPieces(tokenizer)
    shown = [pieces.push(ids[a:b]) for a, b in zip(bounds, bounds[1:])] + [pieces.finish()]
    assert "".join(shown) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT_CHARACTER not in piece for piece in shown)  # no half character ever shown


def test_text_pieces_hold_back_a_split_character_only(text_lm):
    tokenizer = text_lm.tokenizer
    ids = tokenizer.encode("ok 日本語")
    assert ids[:4] == [482, 10545, 245, 98]  # "ok", " " + byte 1 of "日", byte 2, byte 3
    pieces = TextPieces(tokenizer)
    assert [pieces.push(ids[:2]), pieces.push(ids[2:3]), pieces.push(ids[3:4])] == ["ok ", "", "日"]
    assert pieces.push(ids[4:]) == "本語" and pieces.finish() == ""
    # Half a character that nothing completes is shown as the decoder shows it, at the end.
    broken = TextPieces(tokenizer, skip_ids={50256})
    assert broken.push(ids[:3] + [50256]) == "ok " and broken.finish() == REPLACEMENT_CHARACTER


#: Byte-fragment tokens: only these (and EOS) may be sampled, so the text is
#: made of multi-byte characters split over tokens, and of invalid leftovers.
FRAGMENT_TEXTS = ("🙂", "日本語", " é", "ü", " a")


@pytest.fixture(scope="module")
def fragments_only(text_lm):
    allowed = {t for text in FRAGMENT_TEXTS for t in text_lm.tokenizer.encode(text)} | {50256}
    return dict(suppress_tokens=sorted(set(range(50257)) - allowed), eos_token_id=50256)


@examples(6)
@given(seed=st.integers(0, 2**31 - 1), chunk_size=st.integers(1, 9),
       prompts=st.sampled_from([["Hi", "x"], ["naïve café", "日本"], ["🙂 x", "é"]]))
def test_stream_text_joins_to_generate_text(text_lm, fragments_only, seed, chunk_size, prompts):
    options = dict(fragments_only, max_new_tokens=12, do_sample=True, temperature=3.0, top_k=0, seed=seed)
    want = text_lm.generate_text(prompts, **options)
    got = [""] * len(prompts)
    for pieces in text_lm.stream_text(prompts, chunk_size=chunk_size, **options):
        assert len(pieces) == len(prompts) and any(pieces)
        got = [g + p for g, p in zip(got, pieces)]
    assert got == want


def test_the_fragment_law_really_splits_characters(text_lm, fragments_only):
    """The law above is tested on text with multi-byte characters rebuilt from several tokens."""
    options = dict(fragments_only, max_new_tokens=12, do_sample=True, temperature=3.0, top_k=0, seed=3)
    ids, mask, skip_ids, _ = text_lm.encode_prompts(["Hi", "x"], **options)  # the law's shapes: no new compile
    tokenizer = text_lm.tokenizer
    rebuilt = []
    for row in text_lm.generate(ids, mask, **options).sequences[:, ids.shape[1]:]:
        text = tokenizer.decode(row, skip_ids=skip_ids)
        one_token_text = "".join(tokenizer.decode([t]) for t in row.tolist())  # each token decoded alone
        rebuilt += [c for c in text if ord(c) > 127 and c != REPLACEMENT_CHARACTER and c not in one_token_text]
    assert rebuilt  # characters made of fragments
