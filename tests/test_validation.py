"""Bad input fails fast: a ValueError naming the argument, the value and what is
allowed, raised before anything is traced or compiled (``compile_count`` is
unchanged)."""

from __future__ import annotations

import math

import numpy as np
import pytest

OK = np.asarray([[1, 2, 3]], np.int32)

CASES = [
    # (kwargs for generate, regex the message must match)
    (dict(input_ids=np.zeros([1, 0], np.int32)), r"input_ids=.*at least one token"),
    (dict(input_ids=[[1, 2], [3, 4]], attention_mask=[[1, 1], [0, 0]]),
     r"attention_mask=.*row 1 all zeros.*at least one real token"),
    (dict(input_ids=[[1, 2, 3]], max_new_tokens=62), r"max_new_tokens=62.*n_positions=64"),
    (dict(input_ids=[[1, -1]]), r"input_ids=-1.*\[0, 36\]"),
    (dict(input_ids=[[1, 37]]), r"input_ids=37.*\[0, 36\]"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 1, 1]]), r"attention_mask=.*shape.*\(1, 2\)"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 2]]), r"attention_mask=2.*0 or 1"),
    (dict(input_ids=[[1, 2, 3]], attention_mask=[[1, 0, 1]]), r"attention_mask=.*LEFT"),
    (dict(input_ids=[[1, 2, 3]], attention_mask=[[1, 1, 0]]), r"attention_mask=.*right padding"),
    (dict(max_new_tokens=0), r"max_new_tokens=0.*>= 1"),
    (dict(max_new_tokens=2.5), r"max_new_tokens=2.5.*integer"),
    (dict(input_ids=[[1.0, 2.0]]), r"input_ids=.*integers"),
    (dict(input_ids=[["a", "b"]]), r"input_ids=.*integers"),
    # sampling options
    (dict(do_sample=True, temperature=-0.5), r"temperature=-0.5.*>= 0"),
    (dict(do_sample=True, temperature=math.nan), r"temperature=nan.*finite"),
    (dict(do_sample=True, top_p=0.0), r"top_p=0.0.*> 0"),
    (dict(do_sample=True, top_p=1.5), r"top_p=1.5.*<= 1"),
    (dict(do_sample=True, top_k=-1), r"top_k=-1.*>= 0"),
    (dict(repetition_penalty=0.0), r"repetition_penalty=0.0.*> 0"),
    (dict(no_repeat_ngram_size=-2), r"no_repeat_ngram_size=-2.*>= 0"),
    (dict(num_return_sequences=0), r"num_return_sequences=0.*>= 1"),
    (dict(num_return_sequences=2), r"num_return_sequences=2.*do_sample=True or num_beams > 1"),
    (dict(do_sample=True, seed=(1, 2, 3)), r"seed=.*shape"),
    (dict(do_sample=True, seed=("a", "b")), r"seed=.*two ints"),
    (dict(do_sample=True, seed=np.zeros([3, 2], np.int64)), r"seed=.*\(1, 2\)"),
    (dict(bad_words_ids=[]), r"bad_words_ids"),
    (dict(bad_words_ids=[[1], []]), r"bad_words_ids.*empty word"),
    (dict(bad_words_ids=[[1, 99]]), r"bad_words_ids.*99"),
    (dict(eos_token_id=99), r"eos_token_id=99.*\[0, 36\]"),
    (dict(suppress_tokens=[40]), r"suppress_tokens.*\[0, 36\]"),
    # beam options
    (dict(num_beams=0), r"num_beams=0.*>= 1"),
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences=3.*<= num_beams=2"),
    (dict(num_beams=2, length_penalty=math.nan), r"length_penalty=nan"),
    (dict(num_beams=2, early_stopping="sometimes"), r"early_stopping='sometimes'.*never"),
]


@pytest.mark.parametrize("kwargs,pattern", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_generate_input_is_refused_before_compile(tiny_lm, kwargs, pattern):
    kwargs = dict(kwargs)
    input_ids = kwargs.pop("input_ids", OK)
    before = tiny_lm.compile_count
    with pytest.raises(ValueError, match=pattern):
        tiny_lm.generate(input_ids, **kwargs)
    assert tiny_lm.compile_count == before


def test_bad_logits_input(tiny_lm):
    with pytest.raises(ValueError, match=r"input_ids=.*n_positions=64"):
        tiny_lm.logits(np.ones([1, 65], np.int32))
    with pytest.raises(ValueError, match=r"attention_mask=.*LEFT"):
        tiny_lm.logits([[1, 2]], [[1, 0]])


def test_bad_text_prompts(tiny_lm):
    with pytest.raises(ValueError, match="tokenizer"):
        tiny_lm.generate_text(["hello"])  # the tiny checkpoint ships no tokenizer


def test_valid_edge_values_are_accepted(tiny_lm):
    """The boundaries themselves are allowed (top_p=1, top_k=0, temperature=0, max length)."""
    out = tiny_lm.generate(OK, do_sample=True, top_p=1.0, top_k=0, temperature=0.0, seed=(1, 2),
                           max_new_tokens=61)
    assert out.sequences.shape == (1, 64)


# Hostile values of issue 13: each once wrapped around in int32, was coerced, or
# failed inside TensorFlow after a trace. All are refused before any compile.
HOSTILE = [
    (dict(do_sample=True, top_k=2**32 + 1), r"top_k=4294967297.*<= 2147483647"),
    (dict(no_repeat_ngram_size=2**32 + 1), r"no_repeat_ngram_size=4294967297.*<= 64"),
    (dict(min_new_tokens=2**32), r"min_new_tokens=4294967296.*<= 64"),
    (dict(num_beams=10**9), r"num_beams=1000000000.*GiB of logits"),
    (dict(do_sample=True, num_return_sequences=10**9), r"num_return_sequences=1000000000.*GiB"),
    (dict(do_sample=True, temperature=math.inf), r"temperature=inf.*finite"),
    (dict(repetition_penalty=-math.inf), r"repetition_penalty=-inf.*finite"),
    (dict(do_sample="False"), r"do_sample='False'.*True or False"),
    (dict(output_scores="no"), r"output_scores='no'.*True or False"),
    (dict(jit_compile="no"), r"jit_compile='no'.*True or False"),
    (dict(pad_token_id=[1, 2]), r"pad_token_id=.*integer"),
    (dict(eos_token_id="5"), r"eos_token_id='5'"),
    (dict(bad_words_ids=5), r"bad_words_ids=5.*list of token-id lists"),
    (dict(bad_words_ids=[5]), r"bad_words_ids\[0\]=5.*list of token ids"),
    (dict(input_ids=[[1, 2], [3]]), r"input_ids=.*same length"),
    (dict(input_ids="hello"), r"input_ids='hello'.*not text"),
    (dict(seed=True), r"seed=True"),
]


@pytest.mark.parametrize("kwargs,pattern", HOSTILE, ids=[c[1][:30] for c in HOSTILE])
def test_hostile_generate_values_are_refused_before_compile(tiny_lm, kwargs, pattern):
    kwargs = dict(kwargs)
    input_ids = kwargs.pop("input_ids", OK)
    before = tiny_lm.compile_count
    with pytest.raises(ValueError, match=pattern):
        tiny_lm.generate(input_ids, **kwargs)
    assert tiny_lm.compile_count == before


@pytest.mark.parametrize("prompts, pattern", [(None, r"prompts=None"), (b"hello", r"prompts=b'hello'.*not bytes"),
                                              (["ok", ""], r"prompts\[1\]=''"),
                                              (["ok", "a\ud800b"], r"prompts\[1\].*surrogate")])
def test_bad_text_prompts_name_their_index(text_lm, prompts, pattern):
    with pytest.raises(ValueError, match=pattern):
        text_lm.generate_text(prompts, max_new_tokens=2)


@pytest.mark.parametrize("kwargs, pattern", [(dict(prompt_length="16"), r"prompt_length='16'"),
                                             (dict(jit_compile="no"), r"jit_compile='no'"),
                                             (dict(bad_words_ids=5), r"bad_words_ids=5"),
                                             (dict(overwrite="yes"), r"overwrite='yes'")])
def test_bad_export_values(tiny_lm, tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_lm.export(tmp_path / "model", max_new_tokens_buffer=4, **kwargs)
    assert not (tmp_path / "model").exists()
