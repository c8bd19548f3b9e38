"""tools/train_shakespeare.py: the restricted-vocabulary head is exact.

``--seen-vocab`` trains the LM head on the token ids the data has plus one
shared column for all the others. For a model whose unseen columns are equal,
the loss it computes must equal the ordinary full-vocabulary loss.
"""
import importlib.util
from pathlib import Path

import numpy as np
import tensorflow as tf

_spec = importlib.util.spec_from_file_location(
    "train_shakespeare", Path(__file__).resolve().parents[1] / "tools" / "train_shakespeare.py")
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

from xladecode.config import GPT2Config  # noqa: E402


def _trainer(seen):
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    args = train.parse_args(["--dropout", "0.0", "--seed", "0"])
    return train.Trainer(config, args, seen=seen)


def test_forward_head_columns_are_the_gathered_full_logits():
    trainer = _trainer(seen=None)
    x = tf.constant([[1, 2, 3, 4]], tf.int32)
    full = trainer.model.forward(x).numpy()
    cols = np.array([7, 0, 3], np.int32)
    part = trainer.model.forward(x, head_columns=tf.constant(cols)).numpy()
    np.testing.assert_allclose(part, full[..., cols], rtol=1e-6, atol=1e-6)


def test_restriction_worked_example():
    r = train.VocabularyRestriction(np.array([0, 2]), 4)
    assert r.columns.numpy().tolist() == [0, 2, 1]
    np.testing.assert_allclose(r.column_offsets.numpy(), [0.0, 0.0, np.log(2.0)])
    assert r.label_of.numpy().tolist() == [0, 2, 1, 2]
    assert r.unseen.tolist() == [1, 3]


def test_restricted_training_loss_equals_full_loss_once_unseen_columns_are_tied():
    seen = np.array([0, 1, 2, 5, 9])
    restricted = _trainer(seen)
    restricted.tie_unseen_columns()
    full = _trainer(seen=None)
    for name, w in restricted.model.weights.items():
        full.model.weights[name].assign(w)
    x = tf.constant([[0, 1, 2, 5], [9, 9, 0, 2]], tf.int32)
    y = tf.constant([[1, 2, 5, 9], [9, 0, 2, 1]], tf.int32)
    seed = tf.constant([0, 1], tf.int32)  # a dropout seed selects the training path (rate 0 here)
    got = restricted._loss(x, y, seed).numpy()
    want = full._loss(x, y).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # ... and the tied model really has equal columns for every unseen id
    wte = restricted.model.weights["wte.weight"].numpy()
    for u in (3, 4, 6, 7, 8, 10):
        np.testing.assert_array_equal(wte[:, u], wte[:, 3])
