"""The safetensors format, read as hostile input: validate the header, then slice bytes.

The format (huggingface/safetensors, README "Format")::

    8 bytes   N: the header's length, unsigned little-endian 64-bit
    N bytes   the header: UTF-8 JSON, starting with "{", maybe padded with spaces
                {"__metadata__": {"format": "pt"},                      # optional, str -> str
                 "wte.weight": {"dtype": "F16", "shape": [50257, 768],
                                "data_offsets": [0, 77194752]}, ...}
    the rest  the byte buffer; data_offsets are [begin, end) within it

Nothing in such a file can run code, but every number in the header is a
claim to check before it is used to allocate or to seek. :func:`read_header`
checks all of them (the list is in its docstring) and returns
:class:`TensorInfo` records; no tensor byte is read until
:func:`read_tensors` is asked for specific tensors, so a caller can compare
shapes against a config first and read only what it keeps.

Why our own reader and not the ``safetensors`` package (measured with
``tools/bench_safetensors.py``: a random gpt2-small-shaped fp16 file, 249 MB,
148 tensors, page cache warm, median of 7 on 2 busy cores):

* speed: reading every tensor into numpy took 0.43 s here and 0.75 s with
  ``safetensors.numpy.load_file``; the header alone takes ~10 ms;
* strictness: the package accepts a header with a duplicate name (the last
  one wins, even with another shape: the format says duplicates are
  disallowed), a header starting with a space (the format says it starts
  with ``{``), ``"__metadata__": null`` and unknown keys in a tensor entry;
  this reader refuses all of them. Both refuse the rest of the cases tried;
* errors: the package's (``SafetensorError: invalid offset for tensor``) name
  neither the file nor, mostly, the tensor; F8 tags give an
  ``AttributeError``, and BF16 needs ``ml_dtypes`` imported first;
* it would be a new runtime dependency, and its reader reads a whole file,
  where we read only the tensors the model keeps.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Mapping, NamedTuple, TypeVar

import numpy as np

from .files import open_regular, parse_json_object, short_repr, json_type

#: dtype tag -> how its bytes are read (always little-endian). BF16 has no
#: numpy dtype: its raw bits are read as uint16 and widened to float32 (a
#: bfloat16 is the top half of a float32). The 8-bit float and sub-byte tags
#: of newer safetensors versions are known but refused: numpy cannot hold them.
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
UNSUPPORTED_DTYPES = ("F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                      "F6_E2M3", "F6_E3M2", "F4", "C64")

#: The largest header we accept. The format's reference reader allows 100 MB;
#: a real header is ~100 bytes per tensor (gpt2-xl: 60 KB), and a parsed
#: header costs ~10x its text in Python objects, so 16 MiB bounds that memory
#: while leaving two orders of magnitude of room.
MAX_HEADER_BYTES = 16 << 20
MAX_RANK = 32  # numpy's own limit on dimensions (numpy 1.x)
MAX_ARRAY_BYTES = 2**62  # below numpy's limit (the int64 index range)

_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}


class TensorInfo(NamedTuple):
    """One tensor as the header describes it (validated); no data read yet."""

    file: Path
    name: str
    tag: str  # safetensors dtype tag, e.g. "F16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the data in the file
    end: int  # one past the last byte

    @property
    def dtype(self) -> np.dtype:
        """dtype of the array :func:`read_tensors` returns (BF16 -> float32)."""
        return np.dtype(np.float32) if self.tag == "BF16" else np.dtype(DTYPES[self.tag])

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Reads and validates the header of one ``.safetensors`` file.

    Checked, as the format specifies: the file holds at least the 8-byte
    length; the header length is at most the rest of the file (and
    :data:`MAX_HEADER_BYTES`); the header is UTF-8 JSON starting with ``{``,
    an object, with no duplicate keys; ``__metadata__``, if present, maps
    strings to strings; every other entry has exactly ``dtype`` (a known tag),
    ``shape`` (a list of at most :data:`MAX_RANK` non-negative ints) and
    ``data_offsets`` (two ints, ``0 <= begin <= end``) whose length is the
    shape's element count times the dtype's size; sorted by offset, the
    tensors tile the byte buffer exactly: no gap, no overlap, nothing after.

    Returns:
      name -> :class:`TensorInfo`, in header order.

    Raises:
      FileNotFoundError: no such file.
      ValueError: ``"{path}: ..."`` naming the tensor when one is at fault.
    """
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ValueError(f"{path}: {size} bytes is too short for a safetensors file "
                             "(it starts with an 8-byte header length)")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise ValueError(f"{path}: header length {header_len} is larger than the rest of "
                             f"the file ({size - 8} bytes)")
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header length {header_len} is more than the "
                             f"{MAX_HEADER_BYTES} bytes allowed")
        raw = f.read(header_len)
    if len(raw) != header_len:
        raise ValueError(f"{path}: file changed while its header was read")
    if not raw.startswith(b"{"):
        raise ValueError(f"{path}: the header must be a JSON object starting with '{{', "
                         f"got {short_repr(raw[:16])}")
    header = parse_json_object(raw, f"{path} (safetensors header)")
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            _check_metadata(path, entry)
        else:
            tensors[name] = _tensor_info(path, name, entry, base)
    _check_tiling(path, tensors.values(), base, size)
    return tensors


def _check_metadata(path: Path, metadata) -> None:
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: __metadata__ must map strings to strings, got {json_type(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ValueError(f"{path}: __metadata__[{short_repr(key)}] must be a string, "
                             f"got {json_type(value)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(path: Path, name: str, entry, base: int) -> TensorInfo:
    where = f"{path}: tensor {short_repr(name)}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # JSON "\ud800" escapes decode to a lone surrogate
        raise ValueError(f"{where}: the name holds a lone surrogate, not a character") from None
    if not isinstance(entry, dict) or set(entry) != _TENSOR_KEYS:
        got = sorted(entry) if isinstance(entry, dict) else json_type(entry)
        raise ValueError(f"{where}: expected an object with keys dtype, shape, data_offsets; "
                         f"got {short_repr(got)}")
    tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if tag in UNSUPPORTED_DTYPES:
        raise ValueError(f"{where}: dtype {tag} is not supported (numpy cannot hold it)")
    if not isinstance(tag, str) or tag not in DTYPES:
        raise ValueError(f"{where}: unknown dtype {short_repr(tag)}; known: {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(_is_int(d) and d >= 0 for d in shape)):
        raise ValueError(f"{where}: shape must be a list of at most {MAX_RANK} non-negative "
                         f"integers, got {short_repr(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))
            or not 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"{where}: data_offsets must be two integers 0 <= begin <= end, "
                         f"got {short_repr(offsets)}")
    itemsize = np.dtype(DTYPES[tag]).itemsize
    # numpy refuses shapes whose non-zero dims multiply past its index range,
    # even for an empty tensor such as [0, 2**62]. (Python ints do not overflow.)
    if math.prod(d for d in shape if d) * itemsize > MAX_ARRAY_BYTES:
        raise ValueError(f"{where}: shape {short_repr(shape)} is too large for an array")
    expected = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != expected:
        raise ValueError(f"{where}: shape {shape} of {tag} needs {expected} bytes, but "
                         f"data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return TensorInfo(path, name, tag, tuple(shape), base + offsets[0], base + offsets[1])


def _check_tiling(path: Path, tensors, base: int, size: int) -> None:
    """Sorted by offset, the tensors must cover the byte buffer ``[base, size)`` exactly:
    a gap or trailing bytes could hide a second payload (a polyglot file)."""
    position = base
    for info in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if info.begin != position:
            problem = ("overlaps the tensor before it" if info.begin < position
                       else f"leaves {info.begin - position} bytes before it that no tensor owns")
            raise ValueError(f"{path}: tensor {short_repr(info.name)} at data_offsets "
                             f"[{info.begin - base}, {info.end - base}] {problem}")
        position = info.end
        if position > size:
            raise ValueError(f"{path}: tensor {short_repr(info.name)} ends at data offset "
                             f"{info.end - base}, past the {size - base} bytes of data in the file")
    if position != size:
        raise ValueError(f"{path}: the last {size - position} bytes of the file belong to no "
                         "tensor (the byte buffer must be indexed exactly)")


K = TypeVar("K")


def read_tensors(infos: Mapping[K, TensorInfo]) -> dict[K, np.ndarray]:
    """Reads the data of the given tensors, each file opened once.

    Memory: one array per tensor, of exactly its byte length (BF16 tensors are
    then widened to float32); tensors not asked for are never read.

    Returns:
      key -> numpy array of ``info.shape`` and ``info.dtype``.

    Raises:
      ValueError: a file is shorter than its header said (changed since).
    """
    by_file: dict[Path, list] = {}
    for key, info in infos.items():
        by_file.setdefault(info.file, []).append((key, info))
    out = {}
    for path, items in by_file.items():
        with open_regular(path) as f:
            for key, info in sorted(items, key=lambda item: item[1].begin):
                out[key] = _read_one(f, info)
    return out


def _read_one(f, info: TensorInfo) -> np.ndarray:
    array = np.empty(info.shape, DTYPES[info.tag])
    f.seek(info.begin)
    if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != info.nbytes:
        raise ValueError(f"{info.file}: tensor {short_repr(info.name)}: the file ends before its "
                         "data (it changed since its header was read)")
    if info.tag == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file: ``read_tensors(read_header(path))``."""
    return read_tensors(read_header(path))
