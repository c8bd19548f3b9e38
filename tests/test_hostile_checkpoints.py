"""Checkpoint folders from strangers (issue 13): every malformed or hostile case is
refused with a clear error naming the file (and the tensor or field), nothing
outside the folder is read, and memory stays bounded by the checkpoint's size.

Cases are grouped as in the issue: shard names (security 1), config sizes
against headers (2), safetensors headers (3), config fields and JSON files
(10, 11), tokenizer files, and file kinds (FIFOs, devices, directories).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import xladecode
from checkpoints import make_checkpoint
from xladecode import safetensors_file
from xladecode.checkpoint import read_headers, read_safetensors
from xladecode.gpt2 import GPT2
from xladecode.tokenizer import Tokenizer

VOCAB = 13
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny valid checkpoint (2 layers, n_embd 8, vocab 13) and its logits for [1, 2, 3]."""
    folder = tmp_path_factory.mktemp("base")
    make_checkpoint(folder, n_layer=2, n_head=2, n_embd=8, vocab_size=VOCAB, n_positions=16, seed=1)
    return folder, _logits(GPT2.from_pretrained(folder))


@pytest.fixture
def folder(base, tmp_path):
    """A fresh copy of the base checkpoint to damage."""
    dest = tmp_path / "ckpt"
    shutil.copytree(base[0], dest)
    return dest


def _logits(model):
    return model.forward(np.asarray([[1, 2, 3]], np.int32)).numpy()


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _safetensors(header, data: bytes = b"", raw: bytes | None = None) -> bytes:
    """File bytes: 8-byte length, header (``raw`` verbatim, else ``header`` as JSON), data."""
    raw = json.dumps(header).encode() if raw is None else raw
    return struct.pack("<Q", len(raw)) + raw + data


def _shard(folder: Path, shard_name: str = "model-00001-of-00001.safetensors", names=None) -> dict:
    """Turns ``folder`` into a one-shard checkpoint with an index; returns the weight_map."""
    (folder / "model.safetensors").rename(folder / shard_name)
    names = names if names is not None else list(safetensors_file.read_header(folder / shard_name))
    weight_map = {name: shard_name for name in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


# --------------------------------------------------------------------------
# Security 1: a shard index names plain *.safetensors files in the folder only.

ESCAPING_NAMES = ["../out/s.safetensors", "../../../../etc/passwd", "/etc/passwd", "/abs/s.safetensors",
                  "sub/s.safetensors", "..\\s.safetensors", "..", ".", "", "s.safetensors\x00.txt",
                  "\ud800.safetensors"]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_index_cannot_name_a_file_outside_the_folder(folder, tmp_path, name):
    # A perfectly valid shard waits outside: following the name would "work".
    (tmp_path / "out").mkdir()
    shutil.copy(folder / "model.safetensors", tmp_path / "out" / "s.safetensors")
    weight_map = _shard(folder)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {key: name for key in weight_map}}))
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: shard .*"
                                         r"(plain file name|not a valid file name|not a \.safetensors)"):
        xladecode.load(folder)


@pytest.mark.parametrize("name", ["pytorch_model-00001-of-00002.bin", "model.ckpt", "s.safetensors.bin"])
def test_index_naming_a_non_safetensors_shard_is_refused(folder, name):
    weight_map = _shard(folder)
    (folder / name).write_bytes(b"\x80\x04pickle")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: name for k in weight_map}}))
    with pytest.raises(ValueError, match=rf"shard '{name}' is not a \.safetensors file.*pickle"):
        xladecode.load(folder)


@pytest.mark.parametrize("shard", [5, None, ["a.safetensors"]])
def test_index_shard_name_must_be_a_string(folder, shard):
    weight_map = _shard(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in weight_map}}))
    with pytest.raises(ValueError, match=r"index\.json: shard .* must be a file name \(a string\)"):
        xladecode.load(folder)


def _hf_cache(base_folder: Path, cache: Path, sharded: bool) -> Path:
    """The Hugging Face cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    repo = cache / "models--org--tiny"
    source = cache / "source"
    shutil.copytree(base_folder, source)
    if sharded:
        _shard(source, "model-00001-of-00001.safetensors")
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(source.iterdir())):
        blob = f"{i:040x}"
        shutil.move(path, repo / "blobs" / blob)
        os.symlink(f"../../blobs/{blob}", snapshot / path.name)
    source.rmdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    return snapshot


@pytest.mark.parametrize("sharded", [False, True])
def test_hf_cache_layout_of_symlinks_into_blobs_loads(base, tmp_path, monkeypatch, sharded):
    snapshot = _hf_cache(base[0], tmp_path / "hub", sharded)
    assert all(p.is_symlink() for p in snapshot.iterdir())
    assert (snapshot / "model.safetensors.index.json").exists() == sharded
    np.testing.assert_array_equal(_logits(GPT2.from_pretrained(snapshot)), base[1])
    # ... and by name, through huggingface_hub's cache lookup.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    np.testing.assert_array_equal(_logits(xladecode.load("org/tiny").model), base[1])


def test_model_safetensors_may_be_a_symlink_to_outside_the_folder(folder, tmp_path):
    """The folder's own files may link anywhere (that is what the HF cache does)."""
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", folder / "model.safetensors")
    GPT2.from_pretrained(folder)


# --------------------------------------------------------------------------
# File kinds: FIFOs and devices would hang or never end; directories and
# dangling links must say what they are.

@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "generation_config.json",
                                  "tokenizer.json"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero", "dangling"])
def test_special_files_in_the_folder_are_refused_without_hanging(folder, tmp_path, name, kind):
    target = folder / name
    target.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(target)  # opening it for reading would block forever
    elif kind == "directory":
        target.mkdir()
    elif kind == "dangling":
        os.symlink(tmp_path / "gone", target)
    else:
        os.symlink(kind, target)
    expected = {"fifo": "is a FIFO", "directory": "is a directory", "/dev/zero": "is a character device",
                "dangling": "symlink to a missing file"}[kind]
    # A missing tokenizer is allowed (load gives a model without one), so a
    # broken link to one must not pass for "absent": it is a ValueError.
    error = FileNotFoundError if kind == "dangling" and name != "tokenizer.json" else ValueError
    with pytest.raises(error, match=f"{name}.*{expected}"):
        xladecode.load(folder)


def test_index_shard_that_is_a_fifo_is_refused(folder):
    weight_map = _shard(folder)
    fifo_name = "fifo.safetensors"
    os.mkfifo(folder / fifo_name)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {**weight_map, "extra": fifo_name}}))
    with pytest.raises(ValueError, match="fifo.safetensors is a FIFO"):
        xladecode.load(folder)


# --------------------------------------------------------------------------
# Security 2: config sizes are checked against the headers before any allocation.

def _peak_bytes(fn) -> int:
    """Peak of Python/numpy allocations (tracemalloc) while ``fn()`` runs or raises."""
    tracemalloc.start()
    try:
        fn()
    except ValueError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("field, value, message", [
    ("n_layer", 1_000_000_000, r"n_layer=1000000000, but the checkpoint has tensors for 2 layers"),
    ("n_layer", 3, r"n_layer=3, but the checkpoint has tensors for 2 layers"),
    ("vocab_size", 1_000_000_000, r"'wte.weight' has shape \(13, 8\), expected \(1000000000, 8\)"),
    ("n_embd", 2**30, r"'wte.weight' has shape \(13, 8\), expected \(13, 1073741824\)"),
    ("n_positions", 2**31 - 1, r"'wpe.weight' has shape \(16, 8\), expected \(2147483647, 8\)"),
    ("n_inner", 2**31 - 1, r"'h.0.mlp.c_fc.weight' has shape \(8, 32\), expected \(8, 2147483647\)"),
    ("n_layer", 2**31, r"config.json: n_layer=2147483648 is invalid: must be an integer in \[1, 2147483647\]"),
    ("vocab_size", 10**30, r"config.json: vocab_size=10{30} is invalid"),
])
def test_config_sizes_are_checked_against_headers_before_allocating(folder, field, value, message):
    _edit_json(folder / "config.json", **{field: value})
    with pytest.raises(ValueError, match=message):
        xladecode.load(folder)
    # Nothing near the claimed size was allocated: the checkpoint is ~10 KB.
    assert _peak_bytes(lambda: GPT2.from_pretrained(folder)) < 2 << 20


def test_peak_memory_of_load_is_bounded_by_the_checkpoint_size(tmp_path):
    """numpy/Python allocations (tracemalloc) while loading a 1.6 MB fp16 checkpoint.

    What is allowed: the arrays read (the file's size) plus, for one tensor at
    a time, GPT2's float32 copy and the contiguous copy of a stored-transposed
    tensor (2 x 2 x its fp16 bytes), plus 1 MB of change: at most 5x the file.
    TensorFlow's own buffers are not traced; they hold the model, whose size
    the headers bounded before anything was allocated.
    """
    import torch
    make_checkpoint(tmp_path, n_layer=2, n_head=4, n_embd=128, vocab_size=3000, n_positions=64,
                    dtype=torch.float16)
    size = (tmp_path / "model.safetensors").stat().st_size
    largest = max(info.nbytes for info in safetensors_file.read_header(tmp_path / "model.safetensors").values())
    assert size > 1_500_000 and largest > 0.45 * size  # wte, half of the file
    peak = _peak_bytes(lambda: GPT2.from_pretrained(tmp_path))
    assert size < peak < size + 4 * largest + (1 << 20), (peak, size, largest)


# --------------------------------------------------------------------------
# Security 3: safetensors headers are validated as the format specifies.

F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
EIGHT = bytes(8)

HEADER_CASES = {  # case -> (file bytes, expected message)
    "empty file": (b"", r"0 bytes is too short"),
    "5 bytes": (b"\x01" * 5, r"5 bytes is too short"),
    "0-byte header": (struct.pack("<Q", 0), r"header must be a JSON object starting with"),
    "header longer than file": (struct.pack("<Q", 100) + b"{}", r"header length 100 is larger than the rest"),
    "header length 2**64-1": (struct.pack("<Q", 2**64 - 1) + b"{}", r"header length 18446744073709551615"),
    "top level list": (_safetensors(None, raw=b"[]"), r"must be a JSON object starting with"),
    "leading space": (_safetensors(None, EIGHT, raw=b' {"a": ' + json.dumps(F32x2).encode() + b"}"),
                      r"starting with"),
    "invalid JSON": (_safetensors(None, raw=b"{'a': 1}"), r"not valid JSON"),
    "invalid UTF-8": (_safetensors(None, raw=b'{"\xff": 1}'), r"not valid JSON.*utf-8"),
    "NaN constant": (_safetensors(None, raw=b'{"a": NaN}'), r"NaN is not valid JSON"),
    "deep nesting": (_safetensors(None, raw=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                     r"nested too deeply"),
    "duplicate names": (_safetensors(None, EIGHT, raw=b'{"a": %s, "a": %s}' % ((json.dumps(F32x2).encode(),) * 2)),
                        r"duplicate key 'a'"),
    "metadata not an object": (_safetensors({"__metadata__": ["x"], "a": F32x2}, EIGHT),
                               r"__metadata__ must map strings to strings, got a list"),
    "metadata null": (_safetensors({"__metadata__": None, "a": F32x2}, EIGHT), r"__metadata__ must map"),
    "metadata value not str": (_safetensors({"__metadata__": {"n": 1}, "a": F32x2}, EIGHT),
                               r"__metadata__\['n'\] must be a string"),
    "entry not an object": (_safetensors({"a": [1, 2]}), r"tensor 'a': expected an object with keys"),
    "entry missing a key": (_safetensors({"a": {"dtype": "F32", "shape": [2]}}, EIGHT), r"tensor 'a': expected"),
    "entry with an extra key": (_safetensors({"a": {**F32x2, "crc": 1}}, EIGHT), r"tensor 'a': expected"),
    "unknown dtype": (_safetensors({"a": {**F32x2, "dtype": "F31"}}, EIGHT), r"tensor 'a': unknown dtype 'F31'"),
    "dtype not a string": (_safetensors({"a": {**F32x2, "dtype": 4}}, EIGHT), r"tensor 'a': unknown dtype 4"),
    "dtype unhashable": (_safetensors({"a": {**F32x2, "dtype": ["F32"]}}, EIGHT), r"tensor 'a': unknown dtype"),
    "F8 dtype": (_safetensors({"a": {**F32x2, "dtype": "F8_E4M3", "shape": [8]}}, EIGHT),
                 r"tensor 'a': dtype F8_E4M3 is not supported"),
    "shape not a list": (_safetensors({"a": {**F32x2, "shape": 2}}, EIGHT), r"tensor 'a': shape must be a list"),
    "negative dim": (_safetensors({"a": {**F32x2, "shape": [-2]}}, EIGHT), r"tensor 'a': shape must be"),
    "bool dim": (_safetensors({"a": {**F32x2, "shape": [True, 2]}}, EIGHT), r"tensor 'a': shape must be"),
    "float dim": (_safetensors({"a": {**F32x2, "shape": [2.0]}}, EIGHT), r"tensor 'a': shape must be"),
    "rank 33": (_safetensors({"a": {**F32x2, "shape": [1] * 32 + [2]}}, EIGHT), r"tensor 'a': shape must be"),
    "huge dims": (_safetensors({"a": {**F32x2, "shape": [2**40, 2**40]}}, EIGHT), r"too large for an array"),
    "empty but huge dims": (_safetensors({"a": {**F32x2, "shape": [0, 2**62]}, "b": F32x2}, EIGHT),
                            r"tensor 'a': shape \[0, 4611686018427387904\] is too large"),
    "shape/bytes mismatch": (_safetensors({"a": {**F32x2, "shape": [3]}}, EIGHT),
                             r"tensor 'a': shape \[3\] of F32 needs 12 bytes, but data_offsets \[0, 8\] span 8"),
    "offsets not two": (_safetensors({"a": {**F32x2, "data_offsets": [0, 4, 8]}}, EIGHT), r"data_offsets must be"),
    "negative offset": (_safetensors({"a": {**F32x2, "data_offsets": [-8, 0]}}, EIGHT), r"data_offsets must be"),
    "begin after end": (_safetensors({"a": {**F32x2, "data_offsets": [8, 0]}}, EIGHT), r"data_offsets must be"),
    "offset past the end": (_safetensors({"a": {**F32x2, "data_offsets": [8, 16]}}, EIGHT),
                            r"tensor 'a' at data_offsets \[8, 16\] leaves 8 bytes before it"),
    "data shorter than offsets": (_safetensors({"a": F32x2}, b"\0" * 4), r"tensor 'a' ends at data offset 8, past"),
    "overlap": (_safetensors({"a": F32x2, "b": F32x2}, EIGHT), r"tensor '[ab]' at data_offsets \[0, 8\] overlaps"),
    "gap": (_safetensors({"a": F32x2, "b": {**F32x2, "data_offsets": [12, 20]}}, bytes(20)),
            r"tensor 'b' at data_offsets \[12, 20\] leaves 4 bytes before it that no tensor owns"),
    "trailing bytes": (_safetensors({"a": F32x2}, bytes(9)), r"the last 1 bytes of the file belong to no tensor"),
    "data but no tensors": (_safetensors({}, bytes(4)), r"the last 4 bytes"),
    "huge name": (_safetensors({"x" * 1_000_000: {**F32x2, "shape": [3]}}, EIGHT), r"tensor 'xxxxx.*\.\.\.: shape"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))  # ids are the case names
def test_malformed_safetensors_headers_are_refused_naming_file_and_tensor(tmp_path, case):
    content, message = HEADER_CASES[case]
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_safetensors(path)
    assert str(error.value).startswith(str(path))
    assert len(str(error.value)) < 400  # a megabyte-long name is cut, not echoed


def test_header_longer_than_the_cap_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:  # a sparse 17 MiB file whose header would be 16 MiB + 1
        f.write(struct.pack("<Q", (16 << 20) + 1) + b"{")
        f.truncate(17 << 20)
    assert _peak_bytes(lambda: read_safetensors(path)) < 1 << 20
    with pytest.raises(ValueError, match=r"header length 16777217 is more than the 16777216 bytes allowed"):
        read_safetensors(path)


@pytest.mark.parametrize("header, data, expected", [
    ({}, b"", {}),  # no tensors at all
    ({"s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, struct.pack("<q", -7), {"s": np.int64(-7)}),
    ({"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}, "a": F32x2}, struct.pack("<2f", 1, 2),
     {"e": np.zeros((0, 3), np.float32), "a": np.asarray([1, 2], np.float32)}),
    ({"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, struct.pack("<2H", 0x3F80, 0xC040),
     {"b": np.asarray([1.0, -3.0], np.float32)}),
    ({"__metadata__": {"format": "pt"}, "u": {"dtype": "U16", "shape": [1], "data_offsets": [0, 2]}},
     struct.pack("<H", 65535), {"u": np.asarray([65535], np.uint16)}),
])
def test_valid_edge_cases_are_read(tmp_path, header, data, expected):
    path = tmp_path / "x.safetensors"
    raw = json.dumps(header).encode() + b"   "  # the format allows padding the header with spaces
    path.write_bytes(_safetensors(None, data, raw=raw))
    got = read_safetensors(path)
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].dtype == np.asarray(want).dtype and got[name].shape == np.shape(want)
        np.testing.assert_array_equal(got[name], want)


def _rewrite_tensors(folder: Path, edit):
    """Re-saves model.safetensors after ``edit(tensors)`` (a dict of numpy arrays)."""
    from safetensors.numpy import save_file
    tensors = read_safetensors(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_same_tensor_with_and_without_prefix_is_an_error(folder):
    _rewrite_tensors(folder, lambda t: t.update({"wte.weight": t["transformer.wte.weight"].copy()}))
    with pytest.raises(ValueError, match=r"tensor 'wte.weight' appears twice.*'transformer.' prefix"):
        xladecode.load(folder)


def test_weights_must_be_floats(folder):
    _rewrite_tensors(folder, lambda t: t.update({"transformer.wpe.weight": np.zeros((16, 8), np.int32)}))
    with pytest.raises(ValueError, match=r"tensor 'transformer.wpe.weight' has dtype int32; weights must be floats"):
        xladecode.load(folder)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_weights_with_nan_or_inf_are_refused(folder, value, dtype):
    def poison(t):
        w = t["transformer.h.1.mlp.c_fc.weight"].astype(dtype)
        w[3, 5] = value
        t["transformer.h.1.mlp.c_fc.weight"] = w
    _rewrite_tensors(folder, poison)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'transformer.h.1.mlp.c_fc.weight' "
                                         r"holds NaN or infinite values"):
        xladecode.load(folder)


def test_ignored_buffers_are_never_read(folder, monkeypatch):
    """Old checkpoints' attn.bias mask buffers (48 MB in gpt2) are skipped, not read."""
    _rewrite_tensors(folder, lambda t: t.update({"h.0.attn.bias": np.ones((1, 1, 16, 16), np.float32)}))
    read = []
    original = safetensors_file.read_tensors
    monkeypatch.setattr(safetensors_file, "read_tensors",
                        lambda infos: read.extend(i.name for i in infos.values()) or original(infos))
    GPT2.from_pretrained(folder)
    assert read and "h.0.attn.bias" not in read


# --------------------------------------------------------------------------
# The shard index itself.

def test_index_must_be_an_object_with_a_weight_map(folder):
    _shard(folder)
    index = folder / "model.safetensors.index.json"
    for content, message in [("[]", r"expected a JSON object \{...\}, got a list"), ("null", "got null"),
                             ("{", "not valid JSON"), ("{}", "'weight_map' must be an object.*got null"),
                             ('{"weight_map": ["a"]}', "'weight_map' must be an object.*got a list"),
                             ('{"weight_map": {}}', "'weight_map' lists no tensors")]:
        index.write_text(content)
        with pytest.raises(ValueError, match=message):
            xladecode.load(folder)


def test_index_must_match_the_shards_exactly(folder):
    weight_map = _shard(folder, "a.safetensors")
    index = folder / "model.safetensors.index.json"
    names = sorted(weight_map)

    index.write_text(json.dumps({"weight_map": {**weight_map, names[0]: "b.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"b.safetensors: no such file"):
        read_headers(folder)  # a listed shard is missing

    shutil.copy(folder / "a.safetensors", folder / "b.safetensors")
    with pytest.raises(ValueError, match=r"is in two shards: .*a.safetensors and .*b.safetensors"):
        read_headers(folder)

    (folder / "b.safetensors").write_bytes(_safetensors({}))
    with pytest.raises(ValueError, match=rf"tensor '{names[0]}' is in shard 'a.safetensors', but the index "
                                         r"lists it in 'b.safetensors'"):
        read_headers(folder)

    index.write_text(json.dumps({"weight_map": {k: v for k, v in weight_map.items() if k != names[0]}}))
    with pytest.raises(ValueError, match=rf"tensor '{names[0]}' is in shard 'a.safetensors', but the index "
                                         r"does not list it"):
        read_headers(folder)

    index.write_text(json.dumps({"weight_map": {**weight_map, "ghost": "a.safetensors"}}))
    with pytest.raises(ValueError, match=r"tensor 'ghost' is listed in shard 'a.safetensors', which does not hold it"):
        read_headers(folder)


# --------------------------------------------------------------------------
# Items 10 and 11: config fields, JSON files, ids, dtype.

@pytest.mark.parametrize("field, value, message", [
    ("scale_attn_weights", "no", r"scale_attn_weights='no' is invalid: must be true or false"),
    ("scale_attn_weights", 1, r"scale_attn_weights=1 is invalid: must be true or false"),
    ("scale_attn_weights", None, r"scale_attn_weights=None is invalid"),
    ("tie_word_embeddings", "false", r"tie_word_embeddings='false' is invalid"),
    ("reorder_and_upcast_attn", 0, r"reorder_and_upcast_attn=0 is invalid"),
    ("scale_attn_by_inverse_layer_idx", [], r"scale_attn_by_inverse_layer_idx=\[\] is invalid"),
    ("add_cross_attention", "no", r"add_cross_attention='no' is invalid: is not supported"),
    ("pad_token_id", [1, 2], r"pad_token_id=\[1, 2\] is invalid: must be null or one int in \[0, 12\]"),
    ("bos_token_id", "5", r"bos_token_id='5' is invalid"),
    ("bos_token_id", True, r"bos_token_id=True is invalid"),
    ("eos_token_id", VOCAB, r"eos_token_id=13 is invalid: must be null or an int or a list of ints in \[0, 12\] "
                            r"\(vocab_size=13\)"),
    ("eos_token_id", [1, 99], r"eos_token_id=\[1, 99\] is invalid"),
    ("eos_token_id", -1, r"eos_token_id=-1 is invalid"),
    ("eos_token_id", 1.0, r"eos_token_id=1.0 is invalid"),
    ("pad_token_id", 50256, r"pad_token_id=50256 is invalid"),
    ("n_layer", "2", r"n_layer='2' is invalid: must be an integer"),
    ("n_layer", 2.0, r"n_layer=2.0 is invalid: must be an integer"),
    ("n_head", True, r"n_head=True is invalid: must be an integer"),
    ("n_head", 0, r"n_head=0 is invalid"),
    ("n_embd", 9, r"n_embd=9 is invalid: must be divisible by n_head=2"),
    ("layer_norm_epsilon", "1e-5", r"layer_norm_epsilon='1e-5' is invalid: must be a finite number > 0"),
    ("layer_norm_epsilon", 1e400, r"layer_norm_epsilon=inf is invalid"),  # JSON 1e400 parses as inf
    ("layer_norm_epsilon", False, r"layer_norm_epsilon=False is invalid"),
    ("activation_function", ["gelu"], r"activation_function=\['gelu'\] is invalid: is not supported"),
    ("model_type", "llama", r"model_type='llama' is invalid: is not supported; allowed: 'gpt2'"),
])
def test_config_fields_of_the_wrong_type_or_range_are_named(folder, field, value, message):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data).replace("Infinity", "1e400"))
    with pytest.raises(ValueError, match="config.json: " + message):
        xladecode.load(folder)


JSON_FILE_CASES = {  # content -> expected message after the file name
    "[]": r"expected a JSON object \{...\}, got a list",
    "null": r"got null",
    "5": r"got a number",
    '"x"': r"got a string",
    "": r"not valid JSON",
    "{'a': 1}": r"not valid JSON",
    '{"a": 1,}': r"not valid JSON",
    '{"a": NaN}': r"NaN is not valid JSON",
    '{"a": 1, "a": 2}': r"duplicate key 'a'",
    '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}": r"nested too deeply",
    "\ufeff{}": r"not valid JSON",  # a byte order mark
}


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
@pytest.mark.parametrize("content", sorted(JSON_FILE_CASES), ids=lambda c: repr(c[:12]))
def test_json_files_that_are_not_one_object_name_the_file(folder, name, content):
    (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{name}: .*{JSON_FILE_CASES[content]}"):
        xladecode.load(folder)


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "model.safetensors.index.json"])
def test_huge_and_binary_json_files_are_refused(folder, name):
    if name.endswith("index.json"):
        _shard(folder)
    path = folder / name
    path.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(ValueError, match=rf"{name}: not valid JSON.*utf-8"):
        xladecode.load(folder)
    with open(path, "wb") as f:
        f.truncate((16 << 20) + 1)  # sparse: 16 MiB + 1 of zeros, refused before reading
    with pytest.raises(ValueError, match=rf"{name} is 16777217 bytes, more than the 16777216 bytes allowed"):
        xladecode.load(folder)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float32, "float16", "fp32", None, np.float32])
def test_load_dtype_must_be_the_string_float32_or_bfloat16(folder, dtype):
    with pytest.raises(ValueError, match=r"dtype=.* is invalid: must be the string \"float32\" or \"bfloat16\""):
        xladecode.load(folder, dtype=dtype)


def test_load_dtype_strings_work(folder, base):
    assert xladecode.load(folder, dtype="bfloat16").model.dtype == tf.bfloat16
    np.testing.assert_array_equal(_logits(xladecode.load(folder, dtype="float32").model), base[1])


# --------------------------------------------------------------------------
# Tokenizer files.

TOKENIZER_JSON = REPO / "models" / "gpt2-shakespeare" / "tokenizer.json"
RAW_TOKENIZER = REPO / "tests" / "data" / "gpt2-tokenizer"


@pytest.mark.parametrize("content, message", [
    (b"{not json", r"not a valid tokenizer.json: key must be a string"),
    (b"[]", r"not a valid tokenizer.json: invalid type: sequence"),
    (b"null", r"not a valid tokenizer.json"),
    (b'{"version": "1.0"}', r"not a valid tokenizer.json: Model missing"),
    (b"", r"not a valid tokenizer.json"),
    (b'{"\xff": 1}', r"not valid UTF-8 \(invalid start byte at byte 2\)"),
])
def test_corrupt_tokenizer_json_is_a_value_error_naming_the_file(folder, content, message):
    (folder / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"tokenizer.json: " + message):
        xladecode.load(folder)


def test_truncated_tokenizer_json_is_a_value_error(tmp_path):
    data = TOKENIZER_JSON.read_bytes()
    cut = next(i for i in range(100_000, 0, -1) if data[i] < 128)  # not inside a UTF-8 sequence
    (tmp_path / "tokenizer.json").write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"tokenizer.json: not a valid tokenizer.json: EOF while parsing"):
        Tokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("merges, message", [
    ("#version: 0.2\nĠ t x\n", r"merges.txt: line 2 must be two tokens separated by one space, got 'Ġ t x'"),
    ("#version: 0.2\nzzzq qqqz\n", r"merges.txt: not valid BPE merges for .*vocab.json: .*`zzzq` out of vocab"),
    ("#version: 0.2\nĠ t\n\nĠ a\n", r"merges.txt: line 3 must be two tokens .*got ''"),
    ("Ġt\n", r"merges.txt: line 1 must be two tokens"),
])
def test_corrupt_merges_txt_is_a_value_error_naming_the_file(tmp_path, merges, message):
    shutil.copy(RAW_TOKENIZER / "vocab.json", tmp_path)
    (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe t\n")
    with pytest.raises(ValueError, match=r"merges.txt: not valid UTF-8"):
        Tokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("vocab, message", [
    ("[1, 2]", r"vocab.json: expected a JSON object \{...\}, got a list"),
    ('{"a": "x"}', r"vocab.json: the id of token 'a' must be an int in \[0, 2\*\*31\), got 'x'"),
    ('{"a": -1}', r"vocab.json: the id of token 'a' must be an int"),
    ('{"a": true}', r"vocab.json: the id of token 'a' must be an int"),
    ("{", r"vocab.json: not valid JSON"),
])
def test_corrupt_vocab_json_is_a_value_error_naming_the_file(tmp_path, vocab, message):
    (tmp_path / "vocab.json").write_text(vocab)
    shutil.copy(RAW_TOKENIZER / "merges.txt", tmp_path)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_folder(tmp_path)


# --------------------------------------------------------------------------
# Cases found while fixing the above.

def test_symlink_loop_and_overlong_shard_name_are_value_errors(folder):
    os.symlink("generation_config.json", folder / "loop")
    (folder / "generation_config.json").unlink(missing_ok=True)
    os.symlink("loop", folder / "generation_config.json")
    with pytest.raises(ValueError, match=r"generation_config.json: cannot be opened \(Too many levels"):
        xladecode.load(folder)
    (folder / "generation_config.json").unlink()
    weight_map = _shard(folder)
    long_name = "x" * 300 + ".safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: long_name for k in weight_map}}))
    with pytest.raises(ValueError, match=r"x{300}\.safetensors: cannot be opened \(File name too long\)"):
        xladecode.load(folder)


def test_file_truncated_between_header_and_data_is_a_value_error(folder):
    path = folder / "model.safetensors"
    headers = safetensors_file.read_header(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor '.*': the file ends before its data"):
        safetensors_file.read_tensors(headers)


def test_megabyte_strings_in_config_are_not_echoed(folder):
    _edit_json(folder / "config.json", activation_function="g" * 1_000_000)
    with pytest.raises(ValueError, match=r"activation_function='ggg.*\.\.\. is invalid") as error:
        xladecode.load(folder)
    assert len(str(error.value)) < 400


def test_both_single_file_and_index_present_reads_the_index(folder):
    """Like a folder mid-conversion: the index is the source of truth; the stray
    single file is never opened (here it is garbage, and loading still works)."""
    _shard(folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    GPT2.from_pretrained(folder)
