"""SavedModel export: plain TensorFlow, in a process that never imports xladecode,
gets the same tokens as ``lm.generate``; the decoding loop inside is XLA-marked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from xladecode import cli, export

PROMPTS = ["To be", "or not to be", "ROMEO:", "that is the question"]
SAMPLE = dict(max_new_tokens=6, do_sample=True, top_k=20, top_p=1.0, temperature=1.0)

# Runs in a fresh interpreter (cwd outside the repo): only TensorFlow and tokenizers.
_FRESH = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    import tokenizers
    from tensorflow.core.protobuf import saved_model_pb2

    cases = json.load(open(sys.argv[1]))
    results = {"xladecode_imported": "xladecode" in sys.modules, "tf_import_s": time.perf_counter() - t0}

    def xla_loops(path):
        # Functions marked _XlaMustCompile in the saved graph that hold a While loop.
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(open(path + "/saved_model.pb", "rb").read())
        library = {f.signature.name: f for f in proto.meta_graphs[0].graph_def.library.function}
        return sorted(n for n, f in library.items() if f.attr["_XlaMustCompile"].b
                      and any(node.op in ("While", "StatelessWhile") for node in f.node_def))

    for name, case in cases.items():
        start = time.perf_counter()
        serve = tf.saved_model.load(case["path"]).signatures["serving_default"]
        loaded = time.perf_counter()
        outs = []
        for call in case["calls"]:
            t = time.perf_counter()
            out = serve(**{k: tf.constant(v, tf.float32 if k in ("temperature", "top_p") else tf.int32)
                           for k, v in call.items()})
            outs.append({k: v.numpy().tolist() for k, v in out.items()} | {"s": time.perf_counter() - t})
        results[name] = {"load_s": loaded - start, "outputs": outs, "xla_loops": xla_loops(case["path"])}
        try:
            serve(**{k: tf.constant(v, tf.float32 if k in ("temperature", "top_p") else tf.int32)
                     for k, v in dict(case["calls"][0], max_new_tokens=999).items()})
        except tf.errors.InvalidArgumentError as error:
            results[name]["too_many_tokens_error"] = error.message
    tokenizer = tokenizers.Tokenizer.from_file(cases["sample"]["path"] + "/assets/tokenizer.json")
    results["shipped_tokenizer_ids"] = tokenizer.encode("ROMEO:").ids
    results["xladecode_imported"] = results["xladecode_imported"] or "xladecode" in sys.modules
    print(json.dumps(results))
""")


def _call(ids, mask, max_new_tokens, seed=None, temperature=1.0, top_k=20, top_p=1.0):
    """A request; without ``seed`` a greedy/beam one (those signatures take no sampling inputs)."""
    call = dict(input_ids=np.asarray(ids).tolist(), attention_mask=np.asarray(mask).tolist(),
                max_new_tokens=max_new_tokens)
    if seed is not None:  # one seed pair per row: [batch, 2]
        seeds = np.broadcast_to(np.asarray(seed), (len(call["input_ids"]), 2))
        call.update(temperature=temperature, top_k=top_k, top_p=top_p, seed=seeds.tolist())
    return call


def _saved_model_cli():
    if shutil.which("saved_model_cli"):
        return ["saved_model_cli"]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def test_exported_models_match_generate_in_a_fresh_process(text_lm, tiny_dir, tiny_lm, tmp_path):
    # 1. Sampling export of a model with the real GPT-2 tokenizer: dynamic
    #    batch (4 rows in chunks of 2), prompts up to 16 tokens.
    sample_dir = text_lm.export(tmp_path / "sample" / "1", strategy="sample", max_new_tokens_buffer=6,
                                prompt_length=16, chunk_size=2)
    ids, mask = text_lm.tokenizer.encode_batch(PROMPTS, pad_token_id=50256, pad_to_multiple_of=16)
    row_seeds = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    expected_sample = [
        text_lm.generate(ids, mask, seed=(1, 2), **SAMPLE).sequences,
        text_lm.generate(ids, mask, seed=row_seeds, **SAMPLE).sequences,
        text_lm.generate(ids, mask, max_new_tokens=6, do_sample=False).sequences,  # temperature 0
    ]
    # max_new_tokens is only the loop bound: 3 tokens are the first 3 of 6.
    expected_sample.append(expected_sample[0][:, :ids.shape[1] + 3])
    # 2. Greedy export of the tiny model through the CLI, over an old export
    #    (--overwrite); 3 rows of width 5 go into bucket 8, in chunks of 2.
    greedy_dir = tmp_path / "greedy"
    greedy_dir.mkdir()
    (greedy_dir / "old.txt").write_text("replaced")
    assert cli.main(["export", str(greedy_dir), "--model", str(tiny_dir), "--max-new-tokens-buffer", "7",
                     "--prompt-length", "8,16", "--chunk-size", "2", "--overwrite"]) == 0
    assert not (greedy_dir / "old.txt").exists()
    tiny_ids = np.array([[0, 0, 3, 4, 7], [1, 2, 3, 4, 6], [0, 0, 0, 9, 9]], np.int32)
    tiny_mask = (tiny_ids > 0).astype(np.int32)
    greedy = tiny_lm.generate(tiny_ids, tiny_mask, max_new_tokens=7, do_sample=False, output_scores=True)

    cases = {
        "sample": {"path": str(sample_dir), "calls": [
            _call(ids, mask, 6, [1, 2]), _call(ids, mask, 6, row_seeds), _call(ids, mask, 6, [1, 2], 0.0),
            _call(ids, mask, 3, [1, 2])]},
        "greedy": {"path": str(greedy_dir), "calls": [_call(tiny_ids, tiny_mask, 7)]},
    }
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    show = subprocess.Popen([*_saved_model_cli(), "show", "--all", "--dir", str(sample_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fresh = subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "cases.json")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = json.loads(fresh.stdout.splitlines()[-1])

    assert got["xladecode_imported"] is False
    for name in ("sample", "greedy"):
        assert got[name]["xla_loops"], f"{name}: no XLA-compiled while loop in the saved graph"
        assert "max_new_tokens" in got[name]["too_many_tokens_error"]
    for out, want in zip(got["sample"]["outputs"], expected_sample):
        np.testing.assert_array_equal(out["sequences"], want)
    np.testing.assert_array_equal(got["greedy"]["outputs"][0]["sequences"], greedy.sequences)
    np.testing.assert_allclose(got["greedy"]["outputs"][0]["scores"], greedy.scores, atol=1e-4)
    assert got["shipped_tokenizer_ids"] == text_lm.tokenizer.encode("ROMEO:")
    sample = got["sample"]
    print(f"\nexported model in a fresh process: TF import {got['tf_import_s']:.1f}s, "
          f"load {sample['load_s']:.2f}s, first call (XLA compile + run) {sample['outputs'][0]['s']:.2f}s, "
          f"second call {sample['outputs'][1]['s'] * 1000:.1f}ms")

    listing, _ = show.communicate(timeout=120)
    assert show.returncode == 0, listing
    for word in ("serving_default", "input_ids", "attention_mask", "max_new_tokens", "temperature",
                 "top_k", "top_p", "seed", "sequences", "scores", "DT_INT32"):
        assert word in listing, word
    assets = {p.name for p in (sample_dir / "assets").iterdir()}
    assert {"tokenizer.json", "config.json", "generation_config.json", export.EXPORT_INFO} <= assets
    assert export.xla_compiled_functions(sample_dir)


def test_beam_export_signature(tiny_lm, tmp_path):
    # Structure only (running it costs another compile; beam parity is the
    # same code path as greedy above): fixed batch, sequences_scores output.
    path = tiny_lm.export(tmp_path / "beam", strategy="beam", num_beams=3, max_new_tokens_buffer=4,
                          prompt_length=8, batch_size=3)
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    signature = proto.meta_graphs[0].signature_def["serving_default"]
    assert set(signature.outputs) == {"sequences", "scores", "sequences_scores"}
    assert [d.size for d in signature.inputs["input_ids"].tensor_shape.dim] == [3, -1]
    info = json.loads((path / "assets" / export.EXPORT_INFO).read_text())
    assert (info["strategy"], info["num_beams"], info["batch_size"]) == ("beam", 3, 3)
    assert export.xla_compiled_functions(path)


def test_existing_path_is_refused_and_nothing_is_written(tiny_lm, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        tiny_lm.export(target, max_new_tokens_buffer=4, prompt_length=8)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp directory left
    assert cli.main(["export", str(target), "--model", "nowhere-such-model"]) == 2


def test_a_failed_export_leaves_no_trace(tiny_lm, tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tiny_lm.export(tmp_path / "model", max_new_tokens_buffer=4, prompt_length=8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="nucleus"), "strategy='nucleus'"),
    (dict(max_new_tokens_buffer=0), "max_new_tokens_buffer=0"),
    (dict(prompt_length=100), "prompt_length=100"),
    (dict(strategy="beam", num_beams=1), "num_beams=1"),
    (dict(temperature=0.5), "temperature=0.5 .* signature inputs"),
    (dict(repetition_penalty=0), "repetition_penalty=0"),
])
def test_bad_export_arguments_name_the_argument(tiny_lm, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_lm.export(tmp_path / "model", **kwargs)
    assert not (tmp_path / "model").exists()
