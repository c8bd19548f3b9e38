"""Tiny random GPT-2 checkpoints written by transformers' own save_pretrained.

Weights are drawn with a wide normal init (std 0.5) so that logits are spread
out and greedy paths are not degenerate (with GPT-2's usual 0.02 every random
model repeats one token). They load through exactly the code path a real
checkpoint takes (config.json + model.safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers


def make_checkpoint(folder, *, n_layer=2, n_head=2, n_embd=16, vocab_size=67, n_positions=64,
                    seed=0, dtype=torch.float32, eos_token_id=None, std=0.5, **config_kwargs):
    """Writes a random ``GPT2LMHeadModel`` to ``folder`` and returns it (eval mode, fp32)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=eos_token_id if eos_token_id is not None else vocab_size - 1,
        eos_token_id=eos_token_id if eos_token_id is not None else vocab_size - 1,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config_kwargs)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, std)
    model.eval()
    model.to(dtype).save_pretrained(folder)
    return model.to(torch.float32)
