"""The shipped default model (models/gpt2-shakespeare): it loads by default, it is
a genuine HF checkpoint (transformers agrees), and it writes English."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import xladecode

FOLDER = xladecode.default_model_path()
PROMPTS = ["ROMEO:", "To be, or not to be"]


@pytest.fixture(scope="module")
def lm():
    return xladecode.load()


@pytest.fixture(scope="module")
def reference():
    return transformers.GPT2LMHeadModel.from_pretrained(FOLDER, dtype=torch.float32).eval()


def test_default_is_the_shipped_checkpoint(lm):
    assert FOLDER.name in ("gpt2-shakespeare", "_default_model")
    config = json.loads((FOLDER / "config.json").read_text())
    assert lm.model.config.n_layer == config["n_layer"] and lm.model.vocab_size == 50257
    assert (FOLDER / "model.safetensors").stat().st_size <= 32 * 2**20  # the size budget of issue 17
    assert lm.tokenizer is not None and lm.defaults.do_sample is True


def test_logits_match_transformers(lm, reference):
    ids, mask = lm.tokenizer.encode_batch(PROMPTS, pad_token_id=50256)
    with torch.no_grad():
        positions = torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))
        want = reference(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                         position_ids=positions).logits.numpy()
    got = lm.logits(ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_greedy_tokens_match_transformers(lm, reference):
    ids, mask = lm.tokenizer.encode_batch(PROMPTS, pad_token_id=50256)
    got = lm.generate(ids, mask, max_new_tokens=24, do_sample=False).sequences
    with torch.no_grad():
        want = reference.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                  max_new_tokens=24, do_sample=False, pad_token_id=50256,
                                  eos_token_id=50256).numpy()
    np.testing.assert_array_equal(got[:, :want.shape[1]], want)


def test_continuations_are_english_words(lm):
    """Not token soup: most generated words are common English/Shakespearean words."""
    common = set("""the and i to of a you my that in is not me it with his be your for this he have
        thou as so will what but all thy by her shall no do we our lord are him if on thee good
        now o from come or sir king they let more well was then love than there at how would
        make which upon let their am such may hath an she say one know us must here""".split())
    texts = lm.generate_text(PROMPTS, max_new_tokens=60, do_sample=False)
    texts += lm.generate_text(PROMPTS, max_new_tokens=60, seed=(0, 1))
    words = [w.lower() for t in texts for w in re.findall(r"[A-Za-z']+", t)]
    assert len(words) > 60
    assert sum(w in common for w in words) / len(words) > 0.25, texts


def _quality_tool():
    """tools/model_quality.py (a script folder, not a package): loaded from its file."""
    spec = importlib.util.spec_from_file_location(
        "model_quality", Path(__file__).resolve().parents[1] / "tools" / "model_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_degenerate_sample_rule():
    quality = _quality_tool()
    words = [" to", " be", ",", " or", " not", " to", " be", ":", " that", " is", " the", " question"]
    assert not quality.is_degenerate(words)
    assert quality.is_degenerate([" "] * 40)                       # a whitespace loop
    assert quality.is_degenerate(words + ["\n"] + [" "] * 7 + words)  # a run of 8 whitespace tokens
    assert not quality.is_degenerate(words + [" "] * 7 + words)
    assert quality.is_degenerate(words[:9])                        # fewer than 10 words
    assert quality.distinct_2(["a b a b", "a b"]) == 2 / 4
    assert quality.repeated_line_share(["x\ny\nx", "x"]) == 1 / 4


def test_shipped_model_rarely_degenerates(lm):
    """32 seeded samples with the shipped generation config (no repetition penalty or
    n-gram blocking): at most one is degenerate (whitespace loop or < 10 words)."""
    quality = _quality_tool()
    drawn = quality.samples(lm, 32)
    degenerate = [s["text"] for s in drawn if quality.is_degenerate(s["pieces"])]
    assert len(drawn) == 32 and len(degenerate) <= 1, degenerate
