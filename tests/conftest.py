"""Shared fixtures: tiny random checkpoints, loaded once per test session.

Loading once matters: a ``LanguageModel`` keeps its compiled functions, so
tests that use the same shapes share one XLA compile.
"""

from __future__ import annotations

import gc
import os
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite's graphs are tiny and run for milliseconds, so compiling them is most of its
# time. These two XLA:CPU settings halve that (tools/results/suite_time.md): LLVM's
# optimisation level 0, and XLA's classic loop emitters instead of the newer MLIR fusion
# emitters, which compile slower. Neither changes what an HLO computes (no fast-math is
# turned on). Set before TensorFlow reads XLA_FLAGS; the package itself never sets them.
# To run the suite with the default code generation: XLA_FLAGS= python -m pytest -q
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")

import pytest

from checkpoints import make_checkpoint

import xladecode

if os.environ.get("XLADECODE_TEST_EAGER") == "1":
    # Mutation testing (tools/results/mutation.md): every tf.function runs its Python body
    # eagerly, op by op, so a mutant costs no trace and no XLA compile. Tests that are about
    # compiling (counts, XLA vs no XLA) are deselected in that run.
    import tensorflow as tf
    from hypothesis import Phase, settings

    tf.config.run_functions_eagerly(True)
    # A killed mutant needs one failing example, not the smallest one: no shrinking.
    settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile("mutation")

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
    multi-query model of ``tests/rope_decoder.py``."""
    if request.param == "gpt2":
        return tiny_lm
    from xladecode.lm import LanguageModel
    from rope_decoder import RopeDecoder
    return LanguageModel(RopeDecoder(vocab_size=37, max_positions=64, seed=1))


@pytest.fixture(scope="session")
def law(law_lm):
    """``law_lm`` in the callable form of ``xladecode.testing``: its XLA and
    eager decoders, its no-cache reference forward and its sampling noise."""
    from xladecode import testing

    return SimpleNamespace(lm=law_lm, xla=testing.from_language_model(law_lm),
                           eager=testing.from_language_model(law_lm, jit_compile=False),
                           logits=testing.language_model_logits(law_lm), noise=testing.xladecode_noise)


@pytest.fixture(scope="session")
def text_model(tmp_path_factory):
    """A tiny random model over the real GPT-2 vocabulary, with its tokenizer.json."""
    import shutil
    from pathlib import Path

    folder = tmp_path_factory.mktemp("text-model")
    make_checkpoint(folder, n_layer=1, n_head=2, n_embd=8, vocab_size=50257, n_positions=64,
                    eos_token_id=50256)
    repo = Path(__file__).resolve().parent.parent
    shutil.copy(repo / "models" / "gpt2-shakespeare" / "tokenizer.json", folder)
    return folder


@pytest.fixture(scope="session")
def text_lm(text_model):
    """``text_model`` loaded once: tests with equal shapes share its compiled functions."""
    return xladecode.load(text_model)


# The slowest files first, so that the two pytest-xdist workers (whole files each, see
# pyproject.toml) finish together: a slow file scheduled last would run alone at the end.
# Ordered by measured seconds (tools/results/suite_time.md); every other file follows in
# its usual order. Needs --no-loadscope-reorder (pytest-xdist >= 3.8), which pyproject sets,
# or xdist would reorder files by their number of tests instead.
SLOWEST_FILES_FIRST = (
    "test_speculative.py", "test_beam_search.py", "test_sampling.py", "test_speculative_generate.py",
    "test_generate_samplers.py", "test_default_model.py", "test_batch.py", "test_bucketing.py",
    "test_tour.py", "test_distribute.py", "test_streaming.py", "test_cli.py", "test_export.py",
    "test_streaming_cli.py", "test_new_samplers.py", "test_processors.py", "test_prepare_shakespeare.py",
    "test_hostile_inputs_cli_batch.py", "test_multiworker.py", "test_stop_strings.py",
    "test_greedy_laws.py", "test_parity.py", "test_debug.py", "test_bench.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


def pytest_sessionfinish(session):
    """One garbage collection, then freeze what survives.

    After the session pytest collects garbage five times, to surface exceptions raised in
    ``__del__``. A worker full of TensorFlow graphs needs 1-2 s per pass, and execnet
    sends a worker that is still busy 5 s after being told to stop a SIGINT (seen as a
    ``KeyboardInterrupt`` warning after a green run). One pass here finds the same garbage;
    ``gc.freeze`` then leaves pytest's passes nothing old to walk.
    """
    gc.collect()
    gc.freeze()
