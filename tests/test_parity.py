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
from laws import assert_same_tokens, left_pad

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


@pytest.mark.parametrize("eos", [None, 3], ids=["no-eos", "eos"])
def test_greedy_matches_transformers(pair, eos):
    ref, lm, vocab = pair
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(0, vocab, n)) for n in (6, 2, 4)]
    ids, mask = left_pad(rows, pad_id=0)
    new = 10
    # None means "the checkpoint's default" in xladecode; [] means "no EOS".
    out = lm.generate(ids, mask, max_new_tokens=new, eos_token_id=[] if eos is None else eos, pad_token_id=0)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                              max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=0,
                              num_beams=1).numpy()
    width = ids.shape[1]
    theirs_new = np.zeros([len(rows), new], np.int64)  # transformers stops early when all rows end
    theirs_new[:, :theirs.shape[1] - width] = theirs[:, width:]
    assert out.sequences.shape == (len(rows), width + new)
    np.testing.assert_array_equal(out.sequences[:, :width], ids)
    for i, row in enumerate(rows):
        assert_same_tokens(lm, row, out.sequences[i, width:], theirs_new[i], f"row {i}")


def test_eos_fires_mid_way_in_some_rows(pair):
    """The EOS case above is only meaningful if EOS really fires before the end."""
    ref, lm, vocab = pair
    rng = np.random.default_rng(1)
    ids, mask = left_pad([list(rng.integers(0, vocab, n)) for n in (6, 2, 4)])
    free = lm.generate(ids, mask, max_new_tokens=10, eos_token_id=[], pad_token_id=0).sequences
    most_common = np.bincount(free[:, ids.shape[1]:].ravel()).argmax()
    out = lm.generate(ids, mask, max_new_tokens=10, eos_token_id=int(most_common), pad_token_id=0)
    new = out.sequences[:, ids.shape[1]:]
    assert (new == most_common).any(axis=1).any()
    with torch.no_grad():
        theirs = ref.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                              max_new_tokens=10, do_sample=False, eos_token_id=int(most_common),
                              pad_token_id=0).numpy()[:, ids.shape[1]:]
    padded = np.zeros_like(new)
    padded[:, :theirs.shape[1]] = theirs
    np.testing.assert_array_equal(new, padded)
