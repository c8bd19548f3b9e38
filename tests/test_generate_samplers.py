"""The newer samplers and stop strings as ``generate`` options (issue 16, parts 2 and 3).

* every new option is validated before any compile, naming the argument;
* end to end, RNG-free: the distribution each sampled token was drawn from
  (``output_scores``: its log-probability under the processed scores) equals
  transformers' own processor chain for the same ``generate`` arguments
  (``_get_logits_processor``: its order, its warpers), applied to the same
  prefix on the same checkpoint;
* beam search with ``sequence_bias`` + ``renormalize_logits``, and greedy /
  beam with ``stop_strings``, match transformers' ``generate`` token for token;
* changing values (and contents within a bucket) never recompiles; options
  that are off trace nothing new.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import xladecode
from xladecode import sequence_bias, stop_strings
from xladecode.lm import LanguageModel

PROMPTS = np.array([[3, 14, 15, 9, 2, 6], [27, 1, 8, 8, 30, 12]], np.int32)  # no padding: HF needs none


@pytest.fixture(scope="module")
def hf_tiny(tiny_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(tiny_dir).eval()


# ---------------------------------------------------------------------------
# Validation: before any compile, naming the option
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("min_p", 1.5, "min_p=1.5 is invalid: must be <= 1"),
    ("min_p", -0.1, "min_p=-0.1 is invalid: must be >= 0"),
    ("typical_p", 0.0, "typical_p=0.0 is invalid: must be > 0"),
    ("typical_p", 1.1, "typical_p=1.1 is invalid"),
    ("epsilon_cutoff", 1.0, "epsilon_cutoff=1.0 is invalid: must be < 1"),
    ("eta_cutoff", -1e-3, "eta_cutoff=-0.001 is invalid"),
    ("eta_cutoff", "0.1", "eta_cutoff='0.1' is invalid"),
    ("renormalize_logits", 1, "renormalize_logits=1 is invalid"),
    ("sequence_bias", {(40,): 1.0}, "sequence_bias"),
    ("sequence_bias", {(1,): float("nan")}, "sequence_bias"),
    ("sequence_bias", [], "sequence_bias"),
    ("stop_strings", [], "stop_strings"),
    ("stop_strings", ["ok", ""], r"stop_strings\[1\]"),
])
def test_bad_values_are_refused_before_any_compile(tiny_lm, option, value, message):
    before = tiny_lm.compile_count
    with pytest.raises(ValueError, match=message):
        tiny_lm.generate(PROMPTS, max_new_tokens=2, do_sample=True, **{option: value})
    assert tiny_lm.compile_count == before


def test_stop_strings_need_a_tokenizer(tiny_lm):
    bare = LanguageModel(tiny_lm.model)  # no tokenizer
    with pytest.raises(ValueError, match="stop_strings=.*needs the model's tokenizer"):
        bare.generate(PROMPTS, max_new_tokens=2, stop_strings=["a"])
    assert bare.compile_count == 0


def test_stop_strings_are_refused_with_speculative_decoding(text_lm):
    with pytest.raises(ValueError, match="stop_strings=.*speculative"):
        text_lm.generate([[1, 2, 3]], max_new_tokens=2, stop_strings="a", prompt_lookup_num_tokens=2)


def test_checked_forms_are_plain_json():
    from xladecode.options import GenerationOptions, check

    checked = check(GenerationOptions(sequence_bias={(1, 2): 1, (3,): -2.5}, stop_strings="\n\n"), 37, 64)
    assert checked.sequence_bias == [[[1, 2], 1.0], [[3], -2.5]]
    assert checked.stop_strings == ["\n\n"] and checked.min_p is None


# ---------------------------------------------------------------------------
# End to end, RNG-free: the processed distribution vs transformers' chain
# ---------------------------------------------------------------------------

def hf_processed_logprobs(hf_model, sequences, prompt_len, **generate_kwargs):
    """log_softmax of transformers' processed scores at each generated position: [B, N, V]."""
    config = transformers.GenerationConfig(**generate_kwargs)
    config._eos_token_tensor = torch.tensor([hf_model.config.eos_token_id])  # as generate prepares it
    chain = hf_model._get_logits_processor(config, input_ids_seq_length=prompt_len, device="cpu",
                                           model_kwargs={})
    ids = torch.tensor(sequences, dtype=torch.long)
    with torch.no_grad():
        logits = hf_model(ids).logits
    steps = []
    for t in range(ids.shape[1] - prompt_len):
        scores = chain(ids[:, :prompt_len + t], logits[:, prompt_len + t - 1].clone())
        steps.append(torch.log_softmax(scores, dim=-1))
    return torch.stack(steps, 1).numpy()


SAMPLER_CASES = [
    dict(min_p=0.2),
    dict(typical_p=0.6),
    dict(epsilon_cutoff=0.03),
    dict(eta_cutoff=0.05),
    dict(min_p=0.05, typical_p=0.8, eta_cutoff=0.01, temperature=0.7, top_k=12),
    dict(sequence_bias={(8,): 3.0, (14, 15): -2.0, (2, 6, 17): 4.0}, top_p=0.9),
]


@pytest.mark.parametrize("kwargs", SAMPLER_CASES, ids=lambda k: ",".join(k))
def test_each_token_is_drawn_from_transformers_processed_distribution(tiny_lm, hf_tiny, kwargs):
    base = dict(max_new_tokens=6, do_sample=True, eos_token_id=[], pad_token_id=0, output_scores=True)
    out = tiny_lm.generate(PROMPTS, seed=(3, 4), **base, **kwargs)
    hf_kwargs = dict(do_sample=True, top_k=0) | {k: v for k, v in kwargs.items() if k != "sequence_bias"}
    if "sequence_bias" in kwargs:
        hf_kwargs["sequence_bias"] = {tuple(k): v for k, v in kwargs["sequence_bias"].items()}
    want = hf_processed_logprobs(hf_tiny, out.sequences, PROMPTS.shape[1], **hf_kwargs)
    chosen = np.take_along_axis(want, out.sequences[:, PROMPTS.shape[1]:, None], axis=-1)[..., 0]
    assert np.isfinite(chosen).all()  # every token drawn is one transformers' chain keeps
    np.testing.assert_allclose(out.scores, chosen, atol=2e-4)
    assert (np.isfinite(want).sum(-1) < want.shape[-1]).any() or "sequence_bias" in kwargs  # it did cut


def test_a_sampler_that_keeps_one_token_samples_greedily(tiny_lm):
    """min_p=1 keeps only the most likely token: every seed gives greedy's tokens."""
    greedy = tiny_lm.generate(PROMPTS, max_new_tokens=5, eos_token_id=[], pad_token_id=0).sequences
    for seed in range(3):
        sampled = tiny_lm.generate(PROMPTS, max_new_tokens=5, do_sample=True, min_p=1.0, seed=(seed, 9),
                                   eos_token_id=[], pad_token_id=0).sequences
        np.testing.assert_array_equal(sampled, greedy)


def test_beam_search_with_sequence_bias_and_renormalize_matches_transformers(tiny_lm, hf_tiny):
    bias = {(8,): 2.0, (14, 15): -3.0, (9,): -1.5}
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, repetition_penalty=1.3,
                  renormalize_logits=True)
    ours = tiny_lm.generate(PROMPTS, sequence_bias=bias, **kwargs)
    theirs = hf_tiny.generate(torch.tensor(PROMPTS, dtype=torch.long), attention_mask=torch.ones(PROMPTS.shape),
                              sequence_bias=bias, do_sample=False, output_scores=True,
                              return_dict_in_generate=True, pad_token_id=5, **kwargs)
    want = theirs.sequences.numpy()
    np.testing.assert_array_equal(ours.sequences[:, :want.shape[1]], want)
    np.testing.assert_allclose(ours.sequences_scores, theirs.sequences_scores.numpy(), atol=1e-4)
    plain = tiny_lm.generate(PROMPTS, sequence_bias=bias, **(kwargs | dict(renormalize_logits=False)))
    assert not np.allclose(plain.sequences_scores, ours.sequences_scores)  # renormalising mattered


# ---------------------------------------------------------------------------
# Stop strings end to end: where generation ends, vs transformers' generate
# ---------------------------------------------------------------------------

STOPS = [["e"], ["l U", "y a"], ["6646", "ed c"], ["FPS", "ropy p"], [" the", "\n"]]
TEXT_PROMPTS = ["ROMEO:", "To be, or not", "The"]


@pytest.fixture(scope="module")
def hf_text(text_model):
    model = transformers.GPT2LMHeadModel.from_pretrained(text_model).eval()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(text_model / "tokenizer.json"))
    return model, tokenizer


@pytest.mark.parametrize("num_beams", [1, 2])
def test_stop_strings_end_generation_where_transformers_does(text_lm, hf_text, num_beams):
    model, tokenizer = hf_text
    stopped = 0
    for stops in STOPS:
        for prompt in TEXT_PROMPTS:
            ids = np.array([text_lm.tokenizer.encode(prompt)], np.int32)
            ours = text_lm.generate(ids, max_new_tokens=10, num_beams=num_beams, stop_strings=stops).sequences
            theirs = model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.ones(ids.shape),
                                    max_new_tokens=10, num_beams=num_beams, do_sample=False,
                                    stop_strings=stops, tokenizer=tokenizer, pad_token_id=50256).numpy()
            np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs, err_msg=f"{stops} {prompt!r}")
            assert (ours[:, theirs.shape[1]:] == 50256).all()  # then only padding
            stopped += theirs.shape[1] < ids.shape[1] + 10 and theirs[0, -1] != 50256
    assert stopped >= 3  # the stop strings really ended several runs


def test_generate_text_trims_the_stop_string_or_keeps_it(text_lm):
    stops = ["6646", "y a", " the"]
    kept = text_lm.generate_text(TEXT_PROMPTS, max_new_tokens=10, stop_strings=stops, trim_stop_strings=False)
    trimmed = text_lm.generate_text(TEXT_PROMPTS, max_new_tokens=10, stop_strings=stops)
    cut = 0
    for prompt, k, t in zip(TEXT_PROMPTS, kept, trimmed):
        assert t == stop_strings.trim_stop_string(k, stops, prefix=prompt) and k.startswith(t)
        if t != k:
            cut += 1
            assert any(s in prompt + k for s in stops) and not any((prompt + t).endswith(s) for s in stops)
    assert cut >= 1


# ---------------------------------------------------------------------------
# Tensor-valued: no recompiles; off traces nothing
# ---------------------------------------------------------------------------

def test_changing_values_and_contents_within_a_bucket_never_recompiles(tiny_lm):
    call = dict(max_new_tokens=4, do_sample=True, seed=(1, 2))
    tiny_lm.generate(PROMPTS, min_p=0.1, sequence_bias={(3,): 1.0}, **call)
    before = tiny_lm.compile_count
    for values in [dict(min_p=0.3, typical_p=0.5, sequence_bias={(4, 5): -1.0}),
                   dict(epsilon_cutoff=0.01, eta_cutoff=0.2, sequence_bias={(1,): 2.0, (2, 3): 1.0}),
                   dict(renormalize_logits=True, sequence_bias={(7,): -np.inf, (1,): 1.0, (2,): 1.0})]:
        tiny_lm.generate(PROMPTS, **call, **values)
    assert tiny_lm.compile_count == before


def test_changing_stop_strings_within_a_bucket_never_recompiles(text_lm):
    ids = np.array([text_lm.tokenizer.encode("ROMEO: hi")], np.int32)
    text_lm.generate(ids, max_new_tokens=3, stop_strings=["ab"])
    before = text_lm.compile_count
    for stops in (["xyz"], ["a", "bc", "d"], "\n\n"):
        text_lm.generate(ids, max_new_tokens=3, stop_strings=stops)
    assert text_lm.compile_count == before


def test_options_that_are_off_are_not_traced(tiny_dir, monkeypatch):
    """Default options trace neither sequence_bias nor the stop-string check
    (zero rows is a shape), so the graph of a plain call has no trace of them."""
    def refuse(*args, **kwargs):
        raise AssertionError("traced although off")

    monkeypatch.setattr(sequence_bias, "sequence_bias", refuse)
    monkeypatch.setattr(stop_strings, "stop_string_hit", refuse)
    lm = xladecode.load(tiny_dir)
    for strategy in (dict(), dict(do_sample=True), dict(num_beams=2)):
        lm.generate(PROMPTS, max_new_tokens=2, **strategy)
    with pytest.raises(AssertionError, match="traced although off"):
        lm.generate(PROMPTS, max_new_tokens=2, sequence_bias={(1,): 1.0})
