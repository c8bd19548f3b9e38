"""Checkpoint loading: formats, sharding, dtypes, and every way a folder can be wrong."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

import xladecode
from checkpoints import make_checkpoint
from xladecode.checkpoint import read_safetensors
from xladecode.gpt2 import GPT2, param_shapes
from xladecode.config import GPT2Config

GPT2_SIZES = {  # (n_layer, n_head, n_embd) of the real GPT-2 family
    "distilgpt2": (6, 12, 768), "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    ref = make_checkpoint(folder, n_layer=2, n_head=2, n_embd=16, vocab_size=29, seed=3)
    return folder, ref


def _copy(folder, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(folder, dest)
    return dest


def _logits(lm, ids):
    return lm.logits(np.asarray([ids], np.int32), jit_compile=False)[0]


def test_sharded_checkpoint_loads_the_same(tmp_path):
    torch.manual_seed(0)
    ref = make_checkpoint(tmp_path / "one", n_layer=2, n_head=2, n_embd=16, vocab_size=29, seed=3)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a = _logits(xladecode.load(tmp_path / "one"), [1, 2, 3])
    b = _logits(xladecode.load(tmp_path / "sharded"), [1, 2, 3])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_are_read_exactly(tmp_path, dtype):
    make_checkpoint(tmp_path, n_layer=1, n_head=2, n_embd=8, vocab_size=13, dtype=dtype)
    ours = read_safetensors(tmp_path / "model.safetensors")
    from safetensors.torch import load_file
    theirs = load_file(tmp_path / "model.safetensors")
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        np.testing.assert_array_equal(ours[name].astype(np.float32), t.to(torch.float32).numpy())


def test_untied_lm_head_is_used(tmp_path):
    make_checkpoint(tmp_path, n_layer=1, n_head=2, n_embd=8, vocab_size=13, tie_word_embeddings=False)
    ref = __import__("transformers").GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = np.asarray([[1, 2, 3, 4]], np.int32)
    with torch.no_grad():
        want = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(xladecode.load(tmp_path).logits(ids), want, atol=1e-4)


def test_pickle_checkpoints_are_refused_with_a_conversion_hint(ckpt, tmp_path):
    folder = _copy(ckpt[0], tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(FileNotFoundError, match=r"pickle.*arbitrary code.*save_pretrained"):
        xladecode.load(folder)


def test_missing_config_and_missing_weights(ckpt, tmp_path):
    folder = _copy(ckpt[0], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        xladecode.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        xladecode.load(folder)


def test_unknown_activation_is_refused(ckpt, tmp_path):
    folder = _copy(ckpt[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["activation_function"] = "mish_v2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"activation_function='mish_v2'.*allowed: gelu_new"):
        xladecode.load(folder)


def _rewrite(folder, edit):
    """Re-saves model.safetensors after ``edit(tensors)`` (a dict of torch tensors)."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_extra_and_misshaped_tensors_are_named(ckpt, tmp_path):
    folder = _copy(ckpt[0], tmp_path)
    _rewrite(folder, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing tensor 'h.1.mlp.c_fc.bias': expected shape \(64,\)"):
        xladecode.load(folder)

    folder = _copy(ckpt[0], tmp_path / "b")
    _rewrite(folder, lambda t: t.update({"transformer.h.0.attn.extra": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'transformer.h.0.attn.extra'"):
        xladecode.load(folder)

    folder = _copy(ckpt[0], tmp_path / "c")
    _rewrite(folder, lambda t: t.update({"transformer.wpe.weight": torch.zeros(10, 16)}))
    with pytest.raises(ValueError, match=r"'wpe.weight' has shape \(10, 16\), expected \(64, 16\)"):
        xladecode.load(folder)


def test_old_checkpoints_without_prefix_and_with_mask_buffers_load(ckpt, tmp_path):
    """Original GPT-2 files name tensors without 'transformer.' and carry attn.bias buffers."""
    folder = _copy(ckpt[0], tmp_path)

    def old_style(t):
        for name in list(t):
            t[name.removeprefix("transformer.")] = t.pop(name)
        t["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
        t["lm_head.weight"] = t["wte.weight"].clone()

    _rewrite(folder, old_style)
    ids = [3, 1, 4, 1, 5]
    np.testing.assert_array_equal(_logits(xladecode.load(folder), ids),
                                  _logits(xladecode.load(ckpt[0]), ids))


def test_safetensors_reader_handles_handmade_file(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw
                                             + np.asarray([1.5, -2], np.float32).tobytes())
    np.testing.assert_array_equal(read_safetensors(tmp_path / "x.safetensors")["a"], [1.5, -2])


def test_name_that_is_not_a_folder_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"not a folder.*never downloads"):
        xladecode.load("someone/some-model-that-is-not-cached")


def test_name_resolves_through_local_hf_cache(ckpt, tmp_path, monkeypatch):
    """A model name is found in the local HF cache layout (models--org--name/snapshots/rev)."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(ckpt[0], snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    lm = xladecode.load("org/tiny")
    np.testing.assert_array_equal(_logits(lm, [1, 2]), _logits(xladecode.load(ckpt[0]), [1, 2]))


@pytest.mark.parametrize("name", sorted(GPT2_SIZES))
def test_every_gpt2_size_builds_from_config_alone(name):
    """Shapes only (no weights materialised): every size's parameter table is consistent."""
    n_layer, n_head, n_embd = GPT2_SIZES[name]
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    shapes = param_shapes(config)
    count = sum(int(np.prod(s)) for s in shapes.values())
    expected = {"distilgpt2": 81.9e6, "gpt2": 124.4e6, "gpt2-medium": 354.8e6,
                "gpt2-large": 774.0e6, "gpt2-xl": 1557.6e6}[name]
    assert abs(count - expected) / expected < 0.01
    assert config.head_dim * n_head == n_embd


def test_small_model_of_a_real_size_runs(tmp_path):
    """A distilgpt2-shaped model (random init) runs a forward pass end to end."""
    n_layer, n_head, n_embd = GPT2_SIZES["distilgpt2"]
    model = GPT2(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=1000))
    logits = model.forward(np.asarray([[1, 2, 3]], np.int32))
    assert logits.shape == (1, 3, 1000) and np.isfinite(logits.numpy()).all()


def test_hf_weights_give_the_checkpoint_back_although_wte_is_stored_transposed(ckpt):
    """GPT2 keeps wte as [n_embd, vocab] (STORED_TRANSPOSED); hf_weights() undoes it exactly."""
    from xladecode.checkpoint import read_weights
    from xladecode.gpt2 import STORED_TRANSPOSED, map_hf_weights

    folder, _ = ckpt
    model = GPT2.from_pretrained(folder)
    want = map_hf_weights(model.config, read_weights(folder))
    got = model.hf_weights()
    assert set(got) == set(want)
    for name, array in want.items():
        np.testing.assert_array_equal(got[name], np.asarray(array, np.float32), err_msg=name)
    assert model.weights["wte.weight"].shape == (model.config.n_embd, model.config.vocab_size)
    assert "wte.weight" in STORED_TRANSPOSED
