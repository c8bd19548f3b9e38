"""xladecode vs transformers (PyTorch) on random tiny checkpoints.

The checkpoints are written by ``GPT2LMHeadModel.save_pretrained`` and read
back by ``xladecode.load`` -- the same path a real checkpoint takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xladecode
from checkpoints import make_checkpoint
from xladecode.testing import (assert_decoders_agree, from_language_model, from_transformers,
                               language_model_logits, left_pad)

SHAPES = [
    # (n_layer, n_head, n_embd, vocab, dtype, extra config)
    (1, 1, 8, 31, torch.float32, {}),
    (2, 4, 32, 53, torch.float16, {}),
    (3, 2, 24, 41, torch.float32, {"scale_attn_by_inverse_layer_idx": True}),
    (2, 2, 16, 29, torch.bfloat16, {"activation_function": "gelu", "n_inner": 40}),
    (2, 2, 16, 29, torch.float32, {"activation_function": "relu", "reorder_and_upcast_attn": True}),
]


@pytest.fixture(scope="module", params=range(len(SHAPES)), ids=lambda i: f"shape{i}")
def pair(request, tmp_path_factory):
    n_layer, n_head, n_embd, vocab, dtype, extra = SHAPES[request.param]
    folder = tmp_path_factory.mktemp(f"parity{request.param}")
    ref = make_checkpoint(folder, n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab,
                          seed=request.param, dtype=dtype, eos_token_id=3, **extra)
    # The reference runs the weights as stored (fp16/bf16 rounding included), in fp32.
    ref = type(ref).from_pretrained(folder, dtype=torch.float32).eval()
    return ref, xladecode.load(folder), vocab


def _hf_positions(mask):
    return torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))


def test_logits_match_transformers(pair):
    ref, lm, vocab = pair
    rng = np.random.default_rng(0)
    ids, mask = left_pad([list(rng.integers(0, vocab, n)) for n in (9, 4, 1, 7)])
    ours = lm.logits(ids, mask)
    with torch.no_grad():
        theirs = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     position_ids=_hf_positions(mask)).logits.numpy()
    real = mask.astype(bool)  # pad positions are meaningless on both sides
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("eos", [[], [3]], ids=["no-eos", "eos"])
def test_greedy_matches_transformers(pair, eos):
    """Greedy tokens equal transformers' (near-tie rule on our logits). The adapter
    fills the columns transformers drops once every row has ended with pad."""
    ref, lm, vocab = pair
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(0, vocab, n)) for n in (6, 2, 4)]
    ids, mask = left_pad(rows, pad_id=0)
    ours, theirs = assert_decoders_agree(from_language_model(lm), from_transformers(ref), ids, mask,
                                         logits=language_model_logits(lm), what="vs transformers",
                                         max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    assert ours.tokens.shape == (len(rows), 10)


def test_eos_fires_mid_way_in_some_rows(pair):
    """The EOS case above is only meaningful if EOS really fires before the end."""
    ref, lm, vocab = pair
    rng = np.random.default_rng(1)
    ids, mask = left_pad([list(rng.integers(0, vocab, n)) for n in (6, 2, 4)])
    free = lm.generate(ids, mask, max_new_tokens=10, eos_token_id=[], pad_token_id=0).sequences
    most_common = int(np.bincount(free[:, ids.shape[1]:].ravel()).argmax())
    # Exact equality here (no logits: no near-tie can excuse a difference).
    ours, _ = assert_decoders_agree(from_language_model(lm), from_transformers(ref), ids, mask, logits=None,
                                    what="vs transformers, frequent EOS", max_new_tokens=10,
                                    eos_token_id=[most_common], pad_token_id=0)
    assert (ours.tokens == most_common).any(axis=1).any()
