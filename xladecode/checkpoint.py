"""Reading Hugging Face checkpoints offline, without executing anything.

A checkpoint is a folder with ``config.json`` and weights in the safetensors
format: one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. safetensors is a JSON header followed by raw
little-endian arrays, so reading it is plain byte slicing
(``safetensors_file.py``, which validates every header); nothing in the file
can run code.

``pytorch_model.bin`` files are Python pickles: unpickling one can execute
arbitrary code, so we refuse them and say how to convert.

The folder is untrusted, and nothing it says can make us read outside it: a
shard index may only name plain ``*.safetensors`` file names in the folder
itself (no ``/``, no ``..``). Files in the folder may be symlinks (the Hugging
Face cache's snapshot folders are symlinks into ``blobs/``): following a link
the folder's owner made is fine, a path an index smuggles in is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from . import safetensors_file
from .files import json_type, read_json_object, short_repr
from .safetensors_file import TensorInfo

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "flax_model.msgpack")

_CONVERT_HINT = (
    "Convert it once, in an environment you trust, with transformers: "
    "`GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder)` "
    "(transformers writes model.safetensors by default)."
)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads every tensor of one ``.safetensors`` file (header validated first).

    Returns:
      name -> numpy array in the stored shape. F16 stays float16, BF16 is
      widened to float32, everything else keeps its dtype.

    Raises:
      ValueError: a malformed file, naming the file and the tensor.
    """
    return safetensors_file.read_file(path)


def check_shard_name(index: Path, name) -> str:
    """A shard name from an index: a plain ``*.safetensors`` file name, nothing else.

    Raises:
      ValueError: naming the index and the shard, for a path (``/``, ``\\``,
        ``..``, absolute), a non-string, or another extension (``.bin`` shards
        are pickles).
    """
    where = f"{index}: shard {short_repr(name)}"
    if not isinstance(name, str):
        raise ValueError(f"{where} must be a file name (a string), got {json_type(name)}")
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or os.path.isabs(name):
        raise ValueError(f"{where} must be a plain file name in the checkpoint folder "
                         "(no path separators, no '..', not absolute)")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file has that name
        raise ValueError(f"{where} is not a valid file name") from None
    if not name.endswith(".safetensors"):
        raise ValueError(f"{where} is not a .safetensors file; only safetensors shards are "
                         f"read (other formats may be pickles). {_CONVERT_HINT}")
    return name


def _read_index(index: Path) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard file name), validated."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must be an object mapping tensor names to "
                         f"shard files, got {json_type(weight_map)}")
    if not weight_map:
        raise ValueError(f"{index}: 'weight_map' lists no tensors")
    for name, shard in weight_map.items():
        check_shard_name(index, shard)
    return weight_map


def _read_sharded(folder: Path, index: Path) -> dict[str, TensorInfo]:
    """Headers of every shard the index names; the index must match them exactly."""
    weight_map = _read_index(index)
    shards = {shard: safetensors_file.read_header(folder / shard)
              for shard in sorted(set(weight_map.values()))}
    tensors: dict[str, TensorInfo] = {}
    for header in shards.values():
        for name, info in header.items():
            if name in tensors:
                raise ValueError(f"tensor {short_repr(name)} is in two shards: "
                                 f"{tensors[name].file} and {info.file}")
            tensors[name] = info
    for name, info in tensors.items():
        listed = weight_map.get(name)
        if listed != info.file.name:
            raise ValueError(f"{index}: tensor {short_repr(name)} is in shard {info.file.name!r}, but "
                             f"the index {'lists it in ' + repr(listed) if listed else 'does not list it'}")
    missing = [name for name in weight_map if name not in tensors]
    if missing:
        raise ValueError(f"{index}: tensor {short_repr(missing[0])} is listed in shard "
                         f"{weight_map[missing[0]]!r}, which does not hold it")
    return tensors


def read_headers(folder: str | Path) -> dict[str, TensorInfo]:
    """The validated headers of a checkpoint folder's weights; no tensor data is read.

    With an index, every shard it names is read and the index must match
    the shards exactly: each tensor in the shard the index says, no tensor in
    two shards, none unlisted.

    Returns:
      tensor name -> :class:`safetensors_file.TensorInfo` (shape, dtype, file).

    Raises:
      FileNotFoundError: no safetensors weights (pickle checkpoints are named,
        with why we refuse them and how to convert), or a listed shard missing.
      ValueError: a malformed index or file, naming the file and the tensor.
    """
    folder = Path(folder)
    index, single = folder / INDEX_NAME, folder / SINGLE_NAME
    if os.path.lexists(index):
        return _read_sharded(folder, index)
    if os.path.lexists(single):
        return safetensors_file.read_header(single)
    pickles = [name for name in _PICKLE_FILES if (folder / name).exists()]
    if pickles:
        raise FileNotFoundError(
            f"{folder} has weights only in {', '.join(pickles)}: these are pickle files, and "
            f"loading a pickle can execute arbitrary code, so xladecode refuses them. {_CONVERT_HINT}"
        )
    raise FileNotFoundError(
        f"no weights in {folder}: expected {SINGLE_NAME} or {INDEX_NAME}"
    )


def read_weights(folder: str | Path) -> dict[str, np.ndarray]:
    """Reads all weights of a checkpoint folder (single file or shards).

    Raises:
      FileNotFoundError, ValueError: see :func:`read_headers`.
    """
    return safetensors_file.read_tensors(read_headers(folder))


def check_finite(headers: Mapping[str, TensorInfo], weights: Mapping[str, np.ndarray]) -> None:
    """Refuses float weights holding NaN or infinity, naming the file and the tensor.

    The format allows such values, but in a weight they make every logit
    NaN: generation would run and return garbage. An IEEE float is NaN or
    infinite exactly when its exponent bits are all ones; testing the bits
    (in chunks, so the temporary mask stays small) is 8x faster than
    ``np.isfinite`` on float16: 0.11 s for gpt2-small's 124 M fp16 weights.
    """
    for key, array in weights.items():
        unsigned, exponent = _EXPONENT_BITS[array.dtype.itemsize]
        bits = array.reshape(-1).view(unsigned)
        for start in range(0, bits.size, _CHUNK):
            if ((bits[start:start + _CHUNK] & exponent) == exponent).any():
                info = headers[key]
                raise ValueError(f"{info.file}: tensor {short_repr(info.name)} holds NaN or "
                                 "infinite values")


# float16 / float32 / float64: the unsigned type of the same width, exponent mask.
_EXPONENT_BITS = {2: (np.uint16, 0x7C00), 4: (np.uint32, 0x7F80_0000), 8: (np.uint64, 0x7FF0_0000_0000_0000)}
_CHUNK = 1 << 16  # elements: temporaries of at most 512 KB


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """Turns a folder path or a Hugging Face model name into a local folder.

    A name that is not a folder is looked up in the local Hugging Face cache
    (never downloaded) when ``huggingface_hub`` is importable.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"model path {str(path)!r} is a file; pass the checkpoint folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} is not a folder, and huggingface_hub is not installed to "
            "look it up in the local Hugging Face cache; pass the path of a checkpoint folder"
        ) from None
    try:
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception as error:  # the hub raises several types for "not cached"
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} is not a folder and is not in the local Hugging Face "
            f"cache ({type(error).__name__}); xladecode never downloads: pass a checkpoint folder"
        ) from None


def read_generation_config(folder: str | Path) -> dict:
    """``generation_config.json`` as a dict, or ``{}`` when the file is absent.

    Only the file's form is checked here (a regular file holding one JSON
    object); what its values mean is the generation options' business.

    Raises:
      ValueError: naming the file, if it is not a JSON object (a list, null,
        invalid JSON, duplicate keys, ...) or not a regular file.
    """
    path = Path(folder) / "generation_config.json"
    return read_json_object(path) if os.path.lexists(path) else {}
