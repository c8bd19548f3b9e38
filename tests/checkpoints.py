"""Tiny random GPT-2 checkpoints: see :mod:`xladecode.testing.checkpoints`."""

from xladecode.testing.checkpoints import make_checkpoint  # noqa: F401
