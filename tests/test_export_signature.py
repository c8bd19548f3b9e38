"""The exported signature: exactly the inputs its strategy uses, full static specs,
and bad requests answered with the first failing check's message, every time."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

IDS = np.array([[0, 3, 4], [1, 2, 3]], np.int32)
MASK = np.array([[0, 1, 1], [1, 1, 1]], np.int32)


@pytest.fixture(scope="module")
def exports(tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    greedy = tiny_lm.export(root / "greedy", max_new_tokens_buffer=3, prompt_length=8, chunk_size=2)
    sample = tiny_lm.export(root / "sample", strategy="sample", max_new_tokens_buffer=3, prompt_length=8,
                            chunk_size=2)
    return {name: tf.saved_model.load(str(path)).signatures["serving_default"]
            for name, path in (("greedy", greedy), ("sample", sample))}


def test_greedy_signature_takes_no_sampling_inputs(exports, tiny_lm):
    greedy = exports["greedy"]
    assert set(greedy.structured_input_signature[1]) == {"input_ids", "attention_mask", "max_new_tokens"}
    sample_inputs = set(exports["sample"].structured_input_signature[1])
    assert sample_inputs == {"input_ids", "attention_mask", "max_new_tokens", "temperature", "top_k",
                             "top_p", "seed"}
    specs = exports["sample"].structured_input_signature[1]
    assert specs["seed"].shape.as_list() == [None, 2] and specs["input_ids"].shape.rank == 2
    out = greedy(input_ids=tf.constant(IDS), attention_mask=tf.constant(MASK), max_new_tokens=tf.constant(3))
    want = tiny_lm.generate(IDS, MASK, max_new_tokens=3, do_sample=False).sequences
    np.testing.assert_array_equal(out["sequences"].numpy(), want)


def _sample_call(**changes):
    call = dict(input_ids=IDS, attention_mask=MASK, max_new_tokens=np.int32(3), temperature=np.float32(1.0),
                top_k=np.int32(5), top_p=np.float32(1.0), seed=np.array([[1, 2], [3, 4]], np.int32))
    call.update(changes)
    return {k: tf.constant(v) for k, v in call.items()}


@pytest.mark.parametrize("changes, message", [
    (dict(seed=np.array([[1, 2]], np.int32)), "seed: must have shape \\[batch, 2\\]"),
    (dict(input_ids=np.zeros([2, 0], np.int32), attention_mask=np.zeros([2, 0], np.int32)),
     "input_ids: prompts need at least one token"),
    (dict(temperature=np.float32(np.inf)), "temperature: must be finite"),
    (dict(max_new_tokens=np.int32(4)), "max_new_tokens: must be <= 3"),
    (dict(attention_mask=np.array([[1, 0, 1], [1, 1, 1]], np.int32)), "LEFT"),
])
def test_bad_requests_get_the_first_failing_check_every_time(exports, changes, message):
    for _ in range(4):  # the checks run in order: no race between them
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            exports["sample"](**_sample_call(**changes))


@pytest.mark.parametrize("name, value", [("seed", np.array([1, 2], np.int32)),
                                         ("seed", np.zeros([2, 2, 1], np.int32)),
                                         ("input_ids", np.array([1, 2, 3], np.int32)),
                                         ("max_new_tokens", np.array([3], np.int32))])
def test_wrong_ranks_are_refused_naming_the_input(exports, name, value):
    """TensorFlow's binding of the static spec refuses the input by name (a TypeError);
    the loaded signature then retries without the spec and fails in the graph, so
    the error that surfaces may be that second one, with the binding error as its cause."""
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)) as caught:
        exports["sample"](**_sample_call(**{name: value}))
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any(f"name='{name}'" in message and "Can not cast" in message for message in chain), chain[:1]
