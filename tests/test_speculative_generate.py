"""Speculative decoding through the public API: ``lm.generate(prompt_lookup_num_tokens=k)``
and ``lm.generate(assistant_model=draft_lm)`` give plain decoding's tokens, at any batch."""

from __future__ import annotations

import numpy as np
import pytest

from xladecode import cli

IDS = np.array([[0, 0, 3, 4, 3, 4, 3], [1, 2, 3, 1, 2, 3, 1]], np.int32)
MASK = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], np.int32)


def test_prompt_lookup_greedy_equals_plain_greedy(tiny_lm):
    plain = tiny_lm.generate(IDS, MASK, max_new_tokens=9, eos_token_id=5, output_scores=True)
    for k, backoff, latest in ((1, 16, True), (3, 16, True), (3, 0, True), (3, 0, False)):
        fast = tiny_lm.generate(IDS, MASK, max_new_tokens=9, eos_token_id=5, output_scores=True,
                                prompt_lookup_num_tokens=k, prompt_lookup_max_backoff=backoff,
                                prompt_lookup_latest_match=latest)
        np.testing.assert_array_equal(fast.sequences, plain.sequences)
        np.testing.assert_allclose(fast.scores, plain.scores, atol=1e-4)


def test_assistant_equal_to_the_target_changes_nothing(tiny_lm):
    plain = tiny_lm.generate(IDS, MASK, max_new_tokens=6, eos_token_id=5)
    fast = tiny_lm.generate(IDS, MASK, max_new_tokens=6, eos_token_id=5, assistant_model=tiny_lm,
                            num_assistant_tokens=2)
    np.testing.assert_array_equal(fast.sequences, plain.sequences)


def test_speculative_sampling_is_seeded(tiny_lm):
    kw = dict(max_new_tokens=6, do_sample=True, seed=(3, 4), prompt_lookup_num_tokens=2)
    a, b = tiny_lm.generate(IDS, MASK, **kw), tiny_lm.generate(IDS, MASK, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    single = tiny_lm.generate(IDS[1:], MASK[1:], **kw)  # a row does not depend on its neighbours
    np.testing.assert_array_equal(single.sequences, a.sequences[1:])


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_lookup_num_tokens=2, num_beams=2), "num_beams=2"),
    (dict(prompt_lookup_num_tokens=33), "prompt_lookup_num_tokens=33"),
    (dict(prompt_lookup_num_tokens=2, prompt_lookup_max_backoff=-1), "prompt_lookup_max_backoff=-1"),
    (dict(prompt_lookup_num_tokens=2, prompt_lookup_latest_match="no"), "prompt_lookup_latest_match='no'"),
    (dict(assistant_model="nope"), "assistant_model='str'"),
])
def test_bad_speculation_options(tiny_lm, kwargs, message):
    before = tiny_lm.compile_count
    with pytest.raises(ValueError, match=message):
        tiny_lm.generate(IDS, MASK, max_new_tokens=3, **kwargs)
    assert tiny_lm.compile_count == before


def test_cli_flag_gives_the_same_text(text_model, capsys):
    base = ["generate", "--model", str(text_model), "--max-new-tokens", "5", "--no-do-sample",
            "To be, or not to be"]
    assert cli.main(base) == 0
    plain = capsys.readouterr().out
    assert cli.main(base + ["--prompt-lookup-num-tokens", "2"]) == 0
    assert capsys.readouterr().out == plain and plain.startswith("To be, or not to be")
    assert cli.main(base + ["--prompt-lookup-num-tokens", "2", "--prompt-lookup-max-backoff", "0",
                            "--no-prompt-lookup-latest-match"]) == 0
    assert capsys.readouterr().out == plain
