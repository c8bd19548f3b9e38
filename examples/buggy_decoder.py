"""Catching decoder bugs with ``xladecode.testing`` (the example of docs/testing.md).

A toy language model in plain numpy, and three greedy decoders for it: a
correct one and two with classic bugs. Two laws of the toolkit are pointed at
each decoder, with hypothesis searching for inputs that break them:

* padding invariance (``assert_row_invariance``): a prompt's continuation
  must not change when the prompt is left-padded;
* only pad after EOS (``assert_pad_after_eos``).

Run it: ``python examples/buggy_decoder.py``. It prints, per decoder and
law, "pass" or the failure with the minimal input hypothesis found.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from xladecode.testing import Decoded, assert_pad_after_eos, assert_row_invariance, strategies as xst

VOCAB = 11
EMBED = np.random.default_rng(0).normal(0.0, 2.0, (VOCAB, VOCAB))


def toy_logits(input_ids, attention_mask):
    """The toy model's next-token logits, float ``[B, T, VOCAB]``: a decaying sum of
    the embeddings of the real (unmasked) tokens read so far."""
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    state = np.zeros((ids.shape[0], VOCAB))
    out = np.zeros(ids.shape + (VOCAB,))
    for t in range(ids.shape[1]):
        state = 0.5 * state + mask[:, t, None] * EMBED[ids[:, t]]
        out[:, t] = state
    return out


def make_decoder(*, respect_mask: bool = True, pad_after_eos: bool = True):
    """A greedy decoder of the toy model in ``xladecode.testing``'s callable form.

    ``respect_mask=False`` reads the padding as if it were text (a classic bug);
    ``pad_after_eos=False`` keeps generating after a row's EOS (another one).
    """

    def decode(input_ids, attention_mask, *, max_new_tokens, eos_token_id=(), pad_token_id=0, **options):
        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask) if respect_mask else np.ones_like(ids)
        done = np.zeros(len(ids), bool)
        new = []
        for _ in range(max_new_tokens):
            token = toy_logits(ids, mask)[:, -1].argmax(-1)
            if pad_after_eos:
                token = np.where(done, pad_token_id, token)
            done |= np.isin(token, eos_token_id)
            new.append(token)
            ids = np.concatenate([ids, token[:, None]], 1)
            mask = np.concatenate([mask, np.ones_like(token)[:, None]], 1)
        return Decoded(np.stack(new, 1))

    return decode


DECODERS = {
    "correct": make_decoder(),
    "ignores the attention mask": make_decoder(respect_mask=False),
    "extends finished rows": make_decoder(pad_after_eos=False),
}
OPTIONS = dict(max_new_tokens=5, eos_token_id=[3], pad_token_id=0)
CHECKS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def padding_invariance(decode):
    @CHECKS
    @given(prompt=xst.prompts(VOCAB, max_len=6), extra=st.integers(1, 4))
    def law(prompt, extra):
        assert_row_invariance(decode, prompt, pad_to=len(prompt) + extra, logits=toy_logits, **OPTIONS)

    law()


def only_pad_after_eos(decode):
    @CHECKS
    @given(batch=xst.prompt_batches(VOCAB, width=6, max_rows=3))
    def law(batch):
        assert_pad_after_eos(decode, batch.input_ids, batch.attention_mask, **OPTIONS)

    law()


LAWS = {"padding invariance": padding_invariance, "only pad after EOS": only_pad_after_eos}


def main(verbose: bool = True) -> dict[str, dict[str, str]]:
    """Runs every law on every decoder; returns ``{decoder: {law: "pass" or the failure}}``."""
    results: dict[str, dict[str, str]] = {}
    for name, decode in DECODERS.items():
        for law_name, law in LAWS.items():
            try:
                law(decode)
                outcome = "pass"
            except AssertionError as failure:
                # hypothesis shrinks the input and attaches it as a note: "Falsifying example: ..."
                notes = [n for n in getattr(failure, "__notes__", []) if n.startswith("Falsifying")]
                outcome = f"FAIL: {str(failure).splitlines()[0]}\n    {' '.join(notes)}"
            results.setdefault(name, {})[law_name] = outcome
            if verbose:
                print(f"{name:28s} {law_name:20s} {outcome}")
    return results


if __name__ == "__main__":
    main()
