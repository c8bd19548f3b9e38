"""The suite's one knob for hypothesis: how many examples each property test draws.

Every ``@given`` test takes its settings from :func:`examples`, which scales the
count written next to the test by ``XLADECODE_TEST_EXAMPLES`` (default 1). The
counts in the files are what CI runs. Most of a law test's time is tracing and
compiling its few shapes, not its examples (halving every count saved nothing
measurable on tests/test_greedy_laws.py), so a thorough run that draws more of
the same derandomized examples costs less than the factor suggests::

    XLADECODE_TEST_EXAMPLES=4 python -m pytest -q tests/test_beam_search.py
"""

from __future__ import annotations

import os

from hypothesis import settings


def scale() -> float:
    """``XLADECODE_TEST_EXAMPLES`` as a positive float (1 when unset)."""
    text = os.environ.get("XLADECODE_TEST_EXAMPLES", "1")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"XLADECODE_TEST_EXAMPLES={text!r}: expected a number > 0")
    return value


def examples(count: int, **kwargs) -> settings:
    """Hypothesis settings: ``count`` x :func:`scale` examples (at least 1), derandomized
    (CI sees the same examples every run), no deadline (XLA compiles are slow)."""
    return settings(max_examples=max(1, round(count * scale())), deadline=None, derandomize=True, **kwargs)
