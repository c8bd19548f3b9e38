"""``xladecode.testing``: decoder laws as a toolkit, for ANY decoder.

Install with ``pip install "xladecode[testing]"`` (adds hypothesis). Nothing
here is imported by ``import xladecode``.

The decoder under test is a plain callable (:mod:`xladecode.testing.decoder`)::

    decode(input_ids [B, P] int32, attention_mask [B, P] int32, **options) -> Decoded

returning the NEW tokens ``[B * num_return_sequences, max_new_tokens]`` (pad
after EOS) and, optionally, per-token ``scores`` and beam
``sequence_scores``. Options use transformers' ``generate()`` names. Laws
that recompute things take a reference forward
``logits(input_ids, attention_mask) -> [B, T, vocab]``.

Pieces:

* :mod:`.laws`: XLA == eager (any two decoders), cached == recompute,
  padding and batch-composition invariance, only pad after EOS, and
  speculative == plain;
* :mod:`.sampling_laws`: reproducible seeds, per-row independence, top-k 1 /
  temperature 0 == greedy, sample frequencies (chi-square);
* :mod:`.beam_laws`: one beam == greedy, scores == recomputed log-probs,
  beam search == brute force;
* :mod:`.ties`: :func:`assert_same_tokens`, the near-tie rule;
* :mod:`.strategies` (needs hypothesis): prompt batches, option sets, seeds,
  tiny GPT-2 configs; import it as ``from xladecode.testing import strategies``;
* :mod:`.adapters`: transformers' ``generate`` and xladecode's
  ``LanguageModel`` in the callable form;
* :mod:`.reference`: the slow reference algorithms; :mod:`.checkpoints`:
  tiny random GPT-2 checkpoints (torch + transformers).

Example (see ``docs/testing.md`` and ``examples/buggy_decoder.py``)::

    from hypothesis import given, settings
    from xladecode.testing import assert_row_invariance, strategies as xst

    @settings(max_examples=20, deadline=None)
    @given(prompt=xst.prompts(vocab_size=50, max_len=6))
    def test_my_decoder_ignores_padding(prompt):
        assert_row_invariance(my_decode, prompt, pad_to=8, logits=my_logits,
                              max_new_tokens=5, eos_token_id=[], pad_token_id=0)
"""

from .adapters import (from_language_model, from_transformers, language_model_logits, language_model_one_beam,
                       transformers_logits, xladecode_noise)
from .beam_laws import assert_beam_equals_brute_force, assert_beam_scores_are_logprobs, assert_one_beam_equals_greedy
from .decoder import Decoded, Decoder, LogitsFn, end_of, left_pad, prompts_of, run
from .laws import (assert_cached_equals_recompute, assert_decoders_agree, assert_pad_after_eos,
                   assert_row_invariance, assert_same_output, assert_speculative_equals_plain, check_pad_after_eos)
from .sampling_laws import (CHI_SQUARE_ALPHA, assert_return_sequences_independent, assert_sample_frequencies,
                            assert_sampling_limits_are_greedy, assert_sampling_reproducible)
from .ties import BEAM_TIE, NEAR_TIE, SCORE_ATOL, assert_same_beams, assert_same_tokens, next_token_logits, top2_gap

__all__ = [
    "Decoded", "Decoder", "LogitsFn", "run", "left_pad", "prompts_of", "end_of",
    "NEAR_TIE", "BEAM_TIE", "SCORE_ATOL", "assert_same_tokens", "assert_same_beams", "next_token_logits",
    "top2_gap", "assert_same_output", "assert_decoders_agree", "assert_speculative_equals_plain",
    "assert_cached_equals_recompute", "assert_row_invariance", "assert_pad_after_eos", "check_pad_after_eos",
    "assert_sampling_reproducible", "assert_return_sequences_independent", "assert_sampling_limits_are_greedy",
    "assert_sample_frequencies", "CHI_SQUARE_ALPHA", "assert_one_beam_equals_greedy",
    "assert_beam_scores_are_logprobs", "assert_beam_equals_brute_force", "from_language_model",
    "language_model_logits", "language_model_one_beam", "xladecode_noise", "from_transformers", "transformers_logits",
]
