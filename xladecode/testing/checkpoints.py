"""Tiny random GPT-2 checkpoints, written by transformers' own ``save_pretrained``.

Weights are drawn with a wide normal init (std 0.5) so that logits are spread
out and greedy paths are not degenerate (with GPT-2's usual 0.02 every random
model repeats one token). They load through exactly the code path a real
checkpoint takes (config.json + model.safetensors).

Needs torch and transformers (imported when called, not at import).
"""

from __future__ import annotations

from pathlib import Path


def make_checkpoint(folder, *, n_layer=2, n_head=2, n_embd=16, vocab_size=67, n_positions=64,
                    seed=0, dtype=None, eos_token_id=None, std=0.5, **config_kwargs):
    """Writes a random ``GPT2LMHeadModel`` to ``folder`` and returns it (eval mode, fp32).

    Args:
      folder: where ``config.json`` and ``model.safetensors`` go.
      n_layer, n_head, n_embd, vocab_size, n_positions: the GPT-2 config.
      seed: torch seed of the weights.
      dtype: torch dtype the weights are stored in (default float32).
      eos_token_id: also the BOS id; default ``vocab_size - 1``.
      std: standard deviation of every non-LayerNorm weight.
      **config_kwargs: any other ``GPT2Config`` field.
    """
    import torch
    import transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    eos = eos_token_id if eos_token_id is not None else vocab_size - 1
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=eos, eos_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config_kwargs)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, std)
    model.eval()
    model.to(dtype or torch.float32).save_pretrained(folder)
    return model.to(torch.float32)
