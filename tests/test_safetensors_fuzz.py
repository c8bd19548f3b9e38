"""Fuzzing the safetensors reader (issue 13, item 3) with hypothesis.

Three sources of files: random bytes, random headers (every field drawn from
valid and invalid JSON values), and valid files with random mutations
(flipped, inserted or deleted bytes, truncation, a rewritten length). For all
of them the reader must:

* raise only ``ValueError``, with a message starting with the file's path;
* allocate a bounded amount: Python/numpy peak (tracemalloc) under
  1 MiB + 64 x the file's size, whatever the header claims;
* when it accepts a file, agree with the reference implementation (the
  ``safetensors`` package) tensor for tensor: we may refuse more, never less
  or differently.

Each file is small and read from disk, so no example can hang on a device or
a pipe (``open_regular`` is tested in test_hostile_checkpoints.py).
"""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, strategies as st
from budget import examples

from xladecode.safetensors_file import DTYPES, UNSUPPORTED_DTYPES, read_file

SETTINGS = examples(150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def path():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "fuzz.safetensors"


def _pack(header_bytes: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def _read_checked(path: Path, content: bytes):
    """Reads ``content`` as a file; checks the error contract and the memory bound."""
    path.write_bytes(content)
    tracemalloc.start()
    try:
        tensors = read_file(path)
    except ValueError as error:
        assert str(error).startswith(str(path)), str(error)
        tensors = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < (1 << 20) + 64 * len(content), (peak, len(content))
    if tensors is not None:
        _agrees_with_reference(path, tensors)
    return tensors


def _agrees_with_reference(path: Path, ours: dict[str, np.ndarray]) -> None:
    import ml_dtypes  # noqa: F401 -- lets the package's numpy loader return BF16
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        theirs = {name: f.get_tensor(name) for name in f.keys()}
        tags = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    assert set(ours) == set(theirs)
    for name, array in ours.items():
        want = theirs[name]
        if tags[name] == "BF16":  # ours are widened to float32: compare the top 16 bits
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array.view(np.uint32) >> 16, want.view(np.uint16))
        else:
            assert array.dtype == want.dtype and array.shape == want.shape, name
            assert array.tobytes() == want.tobytes(), name


# ---------------------------------------------------------------- strategies
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4))
INTS = st.one_of(st.integers(-2, 24), st.sampled_from([2**31, 2**62, 2**64, -(2**63)]), st.booleans(),
                 st.just(1.0))
TAGS = st.one_of(st.sampled_from(sorted(DTYPES) + list(UNSUPPORTED_DTYPES) + ["f32", ""]), JSON_SCALARS)
ENTRIES = st.one_of(
    st.fixed_dictionaries({"dtype": TAGS, "shape": st.one_of(st.lists(INTS, max_size=4), JSON_SCALARS),
                           "data_offsets": st.one_of(st.lists(INTS, max_size=3), JSON_SCALARS)}),
    JSON_SCALARS,
    st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "x"]), JSON_SCALARS, max_size=4),
)
METADATA = st.one_of(st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), JSON_SCALARS),
                                     max_size=2), JSON_SCALARS)


@st.composite
def valid_files(draw) -> bytes:
    """A valid file: random dtypes and small shapes, entries in random header order."""
    names = draw(st.lists(st.text(min_size=1, max_size=4), unique=True, max_size=4))
    header, chunks, offset = {}, [], 0
    for name in names:
        tag = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        nbytes = int(np.prod(shape)) * np.dtype(DTYPES[tag]).itemsize
        chunks.append(draw(st.binary(min_size=nbytes, max_size=nbytes)))
        header[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
    order = draw(st.permutations(list(header)))
    raw = json.dumps({k: header[k] for k in order}).encode() + b" " * draw(st.integers(0, 7))
    return _pack(raw, b"".join(chunks))


@st.composite
def mutated_files(draw) -> bytes:
    content = bytearray(draw(valid_files()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "length"]))
        at = draw(st.integers(0, max(len(content) - 1, 0)))
        if kind == "flip" and content:
            content[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            content[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del content[at:at + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del content[at:]
        elif len(content) >= 8:
            content[:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, 2 * len(content)),
                                                            st.integers(0, 2**64 - 1))))
    return bytes(content)


# -------------------------------------------------------------------- tests
@SETTINGS
@given(st.binary(max_size=96))
def test_random_bytes(path, content):
    _read_checked(path, content)


@SETTINGS
@given(header=st.dictionaries(st.text(max_size=3), ENTRIES, max_size=3), metadata=st.none() | METADATA,
       data=st.binary(max_size=48))
def test_random_headers(path, header, metadata, data):
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    _read_checked(path, _pack(json.dumps(header).encode(), data))


@SETTINGS
@given(mutated_files())
def test_mutated_valid_files(path, content):
    _read_checked(path, content)


@examples(60)
@given(valid_files())
def test_valid_files_are_read_exactly(path, content):
    """The law behind the fuzzing: valid files are accepted and read as the reference reads them."""
    assert _read_checked(path, content) is not None
