"""Reading Hugging Face checkpoints offline, without executing anything.

A checkpoint is a folder with ``config.json`` and weights in the safetensors
format: one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. safetensors is a JSON header followed by raw
little-endian arrays, so reading it is plain byte slicing (see
:func:`read_safetensors`); nothing in the file can run code.

``pytorch_model.bin`` files are Python pickles: unpickling one can execute
arbitrary code, so we refuse them and say how to convert.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# safetensors dtype tag -> numpy dtype. bfloat16 has no numpy dtype: we read
# its raw uint16 bits and widen them to float32 (bf16 is the top half of fp32).
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "flax_model.msgpack")

_CONVERT_HINT = (
    "Convert it once, in an environment you trust, with transformers: "
    "`GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder)` "
    "(transformers writes model.safetensors by default)."
)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads every tensor of one ``.safetensors`` file.

    Returns:
      name -> numpy array in the stored shape. F16 stays float16, BF16 is
      widened to float32, everything else keeps its dtype.
    """
    path = Path(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tag = info["dtype"]
        if tag not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {tag}")
        start, end = info["data_offsets"]
        array = data[start:end].view(_DTYPES[tag]).reshape(info["shape"])
        if tag == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array
    return tensors


def read_weights(folder: str | Path) -> dict[str, np.ndarray]:
    """Reads all weights of a checkpoint folder (single file or shards).

    Raises:
      FileNotFoundError: no safetensors weights; the message lists what was
        found and, for pickle checkpoints, why we refuse them and how to convert.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shard_names:
            tensors.update(read_safetensors(folder / shard))
        return tensors
    if single.is_file():
        return read_safetensors(single)
    pickles = [name for name in _PICKLE_FILES if (folder / name).exists()]
    if pickles:
        raise FileNotFoundError(
            f"{folder} has weights only in {', '.join(pickles)}: these are pickle files, and "
            f"loading a pickle can execute arbitrary code, so xladecode refuses them. {_CONVERT_HINT}"
        )
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors or model.safetensors.index.json"
    )


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
    """``generation_config.json`` as a dict, or ``{}`` when the file is absent."""
    path = Path(folder) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
