"""Shared fixtures: tiny random checkpoints, loaded once per test session.

Loading once matters: a ``LanguageModel`` keeps its compiled functions, so
tests that use the same shapes share one XLA compile.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from checkpoints import make_checkpoint

import xladecode

EOS = 5  # eos of the shared tiny model; frequent enough to fire mid-way


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_checkpoint(folder, n_layer=2, n_head=2, n_embd=16, vocab_size=37, n_positions=64,
                    seed=7, eos_token_id=EOS)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    return xladecode.load(tiny_dir)


@pytest.fixture(scope="session", params=["gpt2", "rope"])
def law_lm(request, tiny_lm):
    """Every model behind the decoder protocol that the law tests hold to account:
    the GPT-2 checkpoint above, and the deliberately different rotary,
    multi-query model of ``xladecode/rope_decoder.py``."""
    if request.param == "gpt2":
        return tiny_lm
    from xladecode.lm import LanguageModel
    from xladecode.rope_decoder import RopeDecoder
    return LanguageModel(RopeDecoder(vocab_size=37, max_positions=64, seed=1))
