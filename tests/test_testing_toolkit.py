"""The law toolkit itself (``xladecode.testing``): isolation, the tie rule, the
reference algorithms, and the documented example catching buggy decoders."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from budget import examples

from xladecode import processors
from xladecode.testing import (Decoded, assert_same_beams, assert_same_output, assert_same_tokens,
                               check_pad_after_eos, left_pad, prompts_of)
from xladecode.testing.reference import chi_square, chi_square_critical, warp

REPO = Path(__file__).resolve().parent.parent


def test_import_xladecode_loads_no_test_dependency():
    code = ("import sys, xladecode; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('hypothesis', 'pytest', 'transformers', 'torch') or m.startswith('xladecode.testing')]; "
            "assert not heavy, heavy; import xladecode.testing; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('hypothesis', 'pytest', 'transformers', 'torch')]; "
            "assert not heavy, heavy; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def scripted(rows: dict):
    """A reference ``prefix -> logits`` that returns scripted rows keyed by the prefix."""
    return lambda prefix: np.asarray(rows[tuple(prefix)], np.float64)


def test_same_tokens_accepts_equal_rows_and_near_ties_only():
    assert_same_tokens([1, 2, 3], [1, 2, 3], None)
    near = scripted({(1,): [0.0, 0.0, 5.0, 5.0 - 5e-5]})  # step 1: token 2 vs 3, gap 5e-5
    assert_same_tokens([1, 3, 0], [1, 2, 2], near, tie_margin=1e-4)
    far = scripted({(1,): [0.0, 0.0, 5.0, 4.5]})
    with pytest.raises(AssertionError) as failure:
        assert_same_tokens([1, 3, 0], [1, 2, 2], far, tie_margin=1e-4, what="demo")
    message = str(failure.value)
    assert "demo: first differ at step 1: token 3 vs reference token 2" in message
    assert "top-2 gap 0.5" in message and "logit[2] - logit[3] = 0.5" in message
    with pytest.raises(AssertionError, match="no reference logits"):
        assert_same_tokens([1, 3], [1, 2], None)


def test_same_beams_accepts_only_score_ties():
    assert_same_beams([[1, 2]], [-1.0], [[1, 2]], [-1.00005])  # same hypothesis, within SCORE_ATOL
    assert_same_beams([[1, 2]], [-1.0], [[2, 1]], [-1.000005])  # different, a tie
    with pytest.raises(AssertionError, match="score gap"):
        assert_same_beams([[1, 2]], [-1.0], [[2, 1]], [-1.001])
    with pytest.raises(AssertionError, match="scores"):
        assert_same_beams([[1, 2]], [-1.0], [[1, 2]], [-1.01])


def test_sampled_rows_without_noise_must_agree_exactly():
    """A sampler that does not expose its noise gets no tie excuse."""
    got, want = Decoded(np.array([[1, 2]])), Decoded(np.array([[1, 3]]))
    logits = lambda ids, mask: np.zeros(ids.shape + (4,))  # every step a perfect tie  # noqa: E731
    assert_same_output(got, want, [[0]], {"do_sample": False}, logits=logits)  # greedy: a tie excuses it
    with pytest.raises(AssertionError, match="no tie can excuse"):
        assert_same_output(got, want, [[0]], {"do_sample": True, "seed": (1, 2)}, logits=logits)


def test_pad_after_eos_check():
    check_pad_after_eos([[4, 5, 0, 0], [1, 2, 3, 4]], eos=[5], pad=0)
    with pytest.raises(AssertionError, match=r"row 1: EOS 5 at step 0 is followed by \[2, 0, 0\], not only pad 0"):
        check_pad_after_eos([[4, 5, 0, 0], [5, 2, 0, 0]], eos=[5], pad=0)


def test_left_pad_and_prompts_round_trip():
    ids, mask = left_pad([[1, 2, 3], [4]], 5, pad_id=9)
    assert ids.tolist() == [[9, 9, 1, 2, 3], [9, 9, 9, 9, 4]] and mask.sum(1).tolist() == [3, 1]
    assert prompts_of(ids, mask) == [[1, 2, 3], [4]]
    with pytest.raises(ValueError, match="width=2"):
        left_pad([[1, 2, 3]], 2)


@examples(40)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([0, 1, 3, 20]), p=st.sampled_from([1.0, 0.9, 0.3, 0.0]),
       t=st.sampled_from([1.0, 0.5, 2.0]), ties=st.booleans())
def test_reference_warp_keeps_the_tokens_of_our_processors(seed, k, p, t, ties):
    """The numpy reference of the chi-square law filters like processors.py (ties kept whole)."""
    logits = np.random.default_rng(seed).normal(0, 2, (1, 12)).astype(np.float32)
    if ties:
        logits = np.round(logits)
    ours = processors.top_p(processors.top_k(processors.temperature(tf.constant(logits), tf.constant(t)),
                                             tf.constant(k)), tf.constant(p)).numpy()[0]
    ref = warp(logits[0], t, k, p)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))


def test_chi_square_critical_values():
    # Table values of the chi-square 0.999 and 0.99 quantiles.
    for df, alpha, table in [(1, 1e-3, 10.828), (2, 1e-3, 13.816), (5, 1e-3, 20.515), (10, 1e-3, 29.588),
                             (30, 1e-3, 59.703), (100, 1e-3, 149.449), (4, 1e-2, 13.277)]:
        assert abs(chi_square_critical(df, alpha) - table) < 1e-3
    stat, df = chi_square([50, 50, 0], [0.5, 0.5, 0.0])
    assert (stat, df) == (0.0, 1)
    stat, df = chi_square([90, 6, 4], [0.9, 0.06, 0.04])  # expected 6 and 4: the 4 pools with nothing else
    assert df == 2


def _example():
    spec = importlib.util.spec_from_file_location("buggy_decoder", REPO / "examples" / "buggy_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_documented_example_catches_both_bugs_and_passes_the_correct_decoder():
    results = _example().main(verbose=False)
    assert results["correct"] == {"padding invariance": "pass", "only pad after EOS": "pass"}
    mask_bug = results["ignores the attention mask"]
    assert mask_bug["padding invariance"].startswith("FAIL: left padding") and "not a near-tie" in \
        mask_bug["padding invariance"] and "Falsifying example" in mask_bug["padding invariance"]
    assert mask_bug["only pad after EOS"] == "pass"
    eos_bug = results["extends finished rows"]
    assert eos_bug["only pad after EOS"].startswith("FAIL: row 0: EOS 3 at step") and "not only pad 0" in \
        eos_bug["only pad after EOS"]
    assert eos_bug["padding invariance"] == "pass"


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_example_runs_and_prints_what_the_readme_shows(capsys):
    """The README's "Testing your own decoder" example, executed: the correct decoder
    passes, the buggy one is caught, and the output is the one the README quotes."""
    section = _readme_section("Testing your own decoder with xladecode.testing")
    blocks = dict(re.findall(r"^```(\w*)\n(.*?)^```", section, re.S | re.M))  # {language: its block}
    code, shown = blocks["python"], blocks[""]
    exec(compile(code, "README example", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out.splitlines()
    missing = [line for line in shown.splitlines() if line not in printed]
    assert not missing, f"the README shows lines the example did not print: {missing}; it printed {printed}"
    assert printed[0] == "correct decoder: padding invariance holds" and "not a near-tie" in printed[2]
