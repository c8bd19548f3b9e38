"""Speculative decoding (``xladecode/speculative.py``, ``drafters.py``): laws and exact checks.

The laws, on the tiny GPT-2 checkpoint and the rotary model (``law_lm``):

* speculative greedy == plain greedy, token for token (the toolkit's law
  ``xladecode.testing.assert_speculative_equals_plain``, near-tie rule), through
  ``lm.generate``, for both drafters, any batch, left padding, EOS, processors;
* a draft model equal to the target has every draft accepted;
* an always-wrong drafter still gives plain greedy's tokens, accepting none;
* speculative sampling has the target's distribution (chi-square on a tiny
  vocabulary; the accept/resample step exactly, by enumeration);
* a sampled row does not depend on its neighbours' acceptance.

Compiled functions are cached per (model, drafter, shapes) so hypothesis
examples reuse one graph; most laws run with XLA, a few in plain graph mode
(the same graph without the compile) to keep the suite fast.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from budget import examples

from checkpoints import make_checkpoint
from xladecode import drafters, kv_cache, positions as pos, processors, speculative
from xladecode.drafters import Draft, DraftContext, LookupBackoff, ModelDrafter, PromptLookupDrafter
from xladecode.gpt2 import GPT2
from xladecode.lm import LanguageModel
from xladecode.testing import assert_speculative_equals_plain, left_pad
from rope_decoder import RopeDecoder

VOCAB, WIDTH, NEW = 37, 8, 10
SETTINGS = examples(8)

unit = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=4)
# Prompts that repeat a chunk give prompt lookup something to find.
prompt = st.builds(lambda u, r: (u * r)[:WIDTH], unit, st.integers(1, 3))
batch = st.lists(prompt, min_size=1, max_size=3)
eos_choice = st.sampled_from([[], [5], [1, 2]])

_COMPILED: dict = {}


def speculate(lm, drafter, ids, mask, *, do_sample=False, jit=True, **options):
    """Runs ``speculative_loop`` on a call prepared like ``lm.generate``; returns numpy
    ``(new tokens [rows, max_new], scores [rows, max_new], stats)`` for the caller's rows."""
    call = lm.prepare(ids, mask, do_sample=do_sample, **options)
    key = (id(lm.model), drafter.compile_key(), do_sample, call.compile_key, jit)
    if key not in _COMPILED:
        speculative.prepare(lm.model)  # eagerly: made inside the trace, its variable would make TF trace twice
        def run(i, m, o, buffer=call.plan.buffer):
            return speculative.speculative_loop(lm.model, i, m, o, buffer, do_sample, drafter)
        _COMPILED[key] = tf.function(run, jit_compile=jit, autograph=False)
    seq, scores, stats = _COMPILED[key](tf.constant(call.input_ids), tf.constant(call.attention_mask),
                                        call.options)
    start = call.input_ids.shape[1]
    rows = call.plan.batch * call.strategy.rows_per_prompt
    stats = speculative.SpeculationStats(int(stats.iterations), stats.proposed.numpy()[:rows],
                                         stats.accepted.numpy()[:rows])
    return (seq.numpy()[:rows, start:start + call.plan.max_new_tokens],
            scores.numpy()[:rows, :call.plan.max_new_tokens], stats)


def _pad_batch(rows):
    full = rows + [rows[0]] * (3 - len(rows))
    return left_pad(full, WIDTH, pad_id=0)


def noisy_copy(model, scale: float, seed: int = 0):
    """The same architecture with every weight perturbed by ``scale`` x its tensor's std:
    a draft model that agrees with the target often, but not always."""
    if isinstance(model, RopeDecoder):
        copy = RopeDecoder(vocab_size=model.vocab_size, max_positions=model.max_positions, seed=1)
    else:
        copy = GPT2(model.config, weights=model.hf_weights())
    rng = np.random.default_rng(seed)
    for source, target in zip(model.trainable_variables, copy.trainable_variables):
        value = source.numpy()
        target.assign(value + scale * value.std() * rng.normal(size=value.shape).astype(np.float32))
    return copy


@pytest.fixture(scope="module")
def other_model(law_lm):
    """A draft model with the target's vocabulary that agrees with it part of the time."""
    return noisy_copy(law_lm.model, 0.2)


def _drafter(kind, law_lm, other_model):
    return PromptLookupDrafter(3) if kind == "lookup" else ModelDrafter(other_model, 2)


# ------------------------------------------------------------------- greedy
def _speculation(kind, other_model) -> dict:
    """The ``generate`` options that switch speculation on, for each drafter."""
    if kind == "lookup":
        return dict(prompt_lookup_num_tokens=3)
    return dict(assistant_model=other_model, num_assistant_tokens=2)


@pytest.mark.parametrize("kind", ["lookup", "model"])
@SETTINGS
@given(rows=batch, eos=eos_choice)
def test_speculative_greedy_equals_plain_greedy(law, other_model, kind, rows, eos):
    ids, mask = _pad_batch(rows)
    speculation = _speculation(kind, other_model)
    assert_speculative_equals_plain(law.xla, lambda i, m, **o: law.xla(i, m, **o, **speculation), ids, mask,
                                    logits=law.logits, score_atol=1e-4, max_new_tokens=NEW, eos_token_id=eos,
                                    pad_token_id=0)


bad_word = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=2)


@SETTINGS
@given(rows=batch, penalty=st.sampled_from([1.0, 1.5]), ngram=st.sampled_from([0, 2]),
       min_new=st.integers(0, 4), words=st.lists(bad_word, min_size=1, max_size=3),
       suppress=st.lists(st.integers(0, VOCAB - 1), max_size=2), forced=st.sampled_from([None, 7]))
def test_processors_apply_at_every_verified_position(tiny_lm, rows, penalty, ngram, min_new, words,
                                                    suppress, forced):
    ids, mask = _pad_batch(rows)
    opts = dict(max_new_tokens=NEW, eos_token_id=[5], pad_token_id=0, repetition_penalty=penalty,
                no_repeat_ngram_size=ngram, min_new_tokens=min_new, bad_words_ids=words,
                suppress_tokens=suppress or None, forced_eos_token_id=forced)
    got, _, _ = speculate(tiny_lm, PromptLookupDrafter(3), ids, mask, **opts)
    want = tiny_lm.generate(ids, mask, **opts).sequences[:, WIDTH:]
    for i in range(len(rows)):
        np.testing.assert_array_equal(got[i], want[i], err_msg=f"row {i} with processors {opts}")


def test_drafts_are_accepted_in_the_law_tests(law_lm, other_model):
    """Guards the greedy law against vacuity: both drafters do get tokens accepted (and rejected)."""
    ids, mask = _pad_batch([[1, 2, 3, 1, 2, 3, 1, 2], [4, 4, 4], [9, 8, 7]])
    for kind in ("lookup", "model"):
        _, _, stats = speculate(law_lm, _drafter(kind, law_lm, other_model), ids, mask,
                                max_new_tokens=NEW, eos_token_id=[5], pad_token_id=0)
        assert stats.accepted.sum() > 0, kind
        assert (stats.accepted < stats.proposed).any(), kind


class AlwaysWrong:
    """Test drafter: the target's own greedy draft, every token shifted by one id."""

    def __init__(self, model, k):
        self.inner, self.k = ModelDrafter(model, k), k

    def compile_key(self):
        return ("always_wrong",) + self.inner.compile_key()

    def check(self, model):
        self.inner.check(model)

    def start(self, input_ids, attention_mask, key_mask):
        return self.inner.start(input_ids, attention_mask, key_mask)

    def propose(self, context, state):
        draft, state = self.inner.propose(context, state)
        return draft._replace(tokens=(draft.tokens + 1) % VOCAB), state


@pytest.mark.parametrize("k", [1, 3])
def test_draft_equal_to_target_accepts_every_token(law_lm, k):
    new = 2 * (k + 1)  # two full iterations
    ids, mask = _pad_batch([[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]])
    opts = dict(max_new_tokens=new, eos_token_id=[], pad_token_id=0)
    got, _, stats = speculate(law_lm, ModelDrafter(law_lm.model, k), ids, mask, jit=False, **opts)
    want = law_lm.generate(ids, mask, **opts).sequences[:, WIDTH:]
    np.testing.assert_array_equal(got, want)
    assert stats.iterations == 2
    np.testing.assert_array_equal(stats.accepted, stats.proposed)
    assert (stats.proposed == 2 * k).all()


def test_always_wrong_draft_still_gives_plain_greedy(law_lm):
    ids, mask = _pad_batch([[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]])
    opts = dict(max_new_tokens=NEW, eos_token_id=[], pad_token_id=0)
    got, _, stats = speculate(law_lm, AlwaysWrong(law_lm.model, 3), ids, mask, jit=False, **opts)
    want = law_lm.generate(ids, mask, **opts).sequences[:, WIDTH:]
    np.testing.assert_array_equal(got, want)
    assert stats.iterations == NEW and (stats.accepted == 0).all()


# ----------------------------------------------------------------- sampling
def test_accept_resample_step_has_target_distribution_exactly():
    """Enumeration over every draft token d ~ q: accept with alpha(d), else draw from the
    residual; the output distribution must be p. Includes zeros in p and q, q == p, one-hot q."""
    rng = np.random.default_rng(0)
    v = 5
    cases = []
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v))
        cases.append((p, q))
    p = rng.dirichlet(np.ones(v))
    cases += [(p, p), (p, np.eye(v)[2]), (np.eye(v)[1], p), (np.array([0.5, 0.5, 0, 0, 0]), np.array([0, 0.2, 0.8, 0, 0]))]
    for p, q in cases:
        p32, q32 = tf.constant([p] * v, tf.float32), tf.constant([q] * v, tf.float32)
        drafts = tf.range(v)[:, None]
        alpha = speculative.acceptance_probabilities(p32[:, None], tf.gather(q32, drafts, batch_dims=1),
                                                     drafts, tf.ones([v, 1], tf.bool)).numpy()[:, 0]
        residual = speculative.residual_distribution(p32, q32).numpy()  # same for every d
        out = sum(q[d] * (alpha[d] * np.eye(v)[d] + (1 - alpha[d]) * residual[d]) for d in range(v))
        np.testing.assert_allclose(out, p, atol=1e-6)


SAMPLE_VOCAB = 6


def _chi_square_ok(counts, probs):
    """Pearson chi-square at the 99.9th percentile (Wilson-Hilferty), tiny cells pooled."""
    expected = probs * counts.sum()
    assert counts[expected == 0].sum() == 0, "a sequence of probability 0 was sampled"
    small = expected < 5
    obs = np.append(counts[~small & (expected > 0)], counts[small].sum())
    exp = np.append(expected[~small & (expected > 0)], expected[small].sum())
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * np.sqrt(2 / (9 * df))) ** 3
    assert stat < critical, f"chi2={stat:.1f} >= {critical:.1f} (df={df})"


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spec-small")
    make_checkpoint(folder, n_layer=1, n_head=2, n_embd=8, vocab_size=SAMPLE_VOCAB, n_positions=64,
                    seed=3, eos_token_id=SAMPLE_VOCAB - 1, std=0.6)
    target = LanguageModel(GPT2.from_pretrained(folder))
    draft = RopeDecoder(vocab_size=SAMPLE_VOCAB, n_layer=1, dim=8, max_positions=64, seed=5, std=0.8)
    return target, draft


def _exact_probs(lm, prompt, steps, temperature, top_k):
    """Target probability of every continuation of ``steps`` tokens, by enumeration."""
    conts = np.asarray(list(itertools.product(range(SAMPLE_VOCAB), repeat=steps)), np.int32)
    full = np.concatenate([np.repeat(np.asarray([prompt], np.int32), len(conts), 0), conts], 1)
    logits = tf.constant(lm.logits(full, jit_compile=False)[:, len(prompt) - 1:-1])  # [n, steps, V]
    warped = processors.temperature(tf.reshape(logits, [-1, SAMPLE_VOCAB]), tf.constant(temperature))
    warped = processors.top_k(warped, tf.constant(top_k))
    logp = tf.reshape(tf.nn.log_softmax(warped), [len(conts), steps, SAMPLE_VOCAB]).numpy()
    return np.exp(np.take_along_axis(logp, conts[:, :, None], 2)[:, :, 0].sum(1))


@pytest.mark.parametrize("kind", ["model", "lookup"])
def test_speculative_sampling_has_the_target_distribution(small_vocab, kind):
    target, draft_model = small_vocab
    drafter = ModelDrafter(draft_model, 2) if kind == "model" else PromptLookupDrafter(2, ngram=1)
    prompt, steps, n = [1, 2, 3, 1, 2], 4, 16384
    ids = np.asarray([prompt] * n, np.int32)
    seeds = np.stack([np.arange(n), np.full(n, 7)], 1)
    for temperature, top_k in ((1.0, 0), (0.8, 3)):
        got, _, stats = speculate(target, drafter, ids, None, do_sample=True, jit=False, seed=seeds,
                                  max_new_tokens=steps, eos_token_id=[], pad_token_id=0,
                                  temperature=temperature, top_k=top_k)
        assert 0 < stats.accepted.sum() < stats.proposed.sum(), "no acceptance or no rejection: vacuous"
        index = (got * SAMPLE_VOCAB ** np.arange(steps)[::-1]).sum(1)
        counts = np.bincount(index, minlength=SAMPLE_VOCAB ** steps)
        _chi_square_ok(counts, _exact_probs(target, prompt, steps, temperature, top_k))


seed = st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))


@pytest.fixture(scope="module")
def rope_draft():
    return RopeDecoder(vocab_size=VOCAB, max_positions=64, seed=3)


@SETTINGS
@given(target=prompt, others=st.lists(prompt, min_size=2, max_size=2), s=seed)
def test_sampled_row_does_not_depend_on_neighbours(tiny_lm, rope_draft, target, others, s):
    """Neighbours accept different numbers of tokens; the target row's tokens stay the same."""
    drafter = ModelDrafter(rope_draft, 2)
    seeds = np.asarray([s, (1, 2), (3, 4)])
    opts = dict(max_new_tokens=NEW, do_sample=True, top_k=0, eos_token_id=[5], pad_token_id=0, seed=seeds)
    ids, mask = left_pad([target, [7, 7, 7, 7], [1]], WIDTH)
    alone, _, _ = speculate(tiny_lm, drafter, ids, mask, **opts)
    ids, mask = left_pad([target] + others, WIDTH)
    mixed, _, _ = speculate(tiny_lm, drafter, ids, mask, **opts)
    np.testing.assert_array_equal(mixed[0], alone[0])


# ---------------------------------------------------------- exact, scripted
class Counter:
    """Stub target: the next token is always (token + 1) % 11, with logit 10 vs 0. Its cache
    records the ids written to each slot, so per-row writes are visible."""

    vocab_size, max_positions = 11, 64

    def init_cache(self, batch_size, max_length):
        return tf.zeros([batch_size, 1, max_length, 1])

    def _logits(self, ids):
        return 10.0 * tf.one_hot((ids + 1) % self.vocab_size, self.vocab_size)

    def step(self, input_ids, positions, cache, cache_index, key_mask):
        cache = kv_cache.write(cache, tf.cast(input_ids, tf.float32)[:, None, :, None], cache_index)
        return self._logits(input_ids[:, -1]), cache

    def step_all(self, input_ids, positions, cache, cache_index, key_mask):
        cache = kv_cache.write(cache, tf.cast(input_ids, tf.float32)[:, None, :, None], cache_index)
        return self._logits(input_ids), cache


class Scripted:
    """Test drafter: the counting chain, with row 1's second draft token always wrong."""

    k = 2

    def compile_key(self):
        return ("scripted",)

    def check(self, model):
        pass

    def start(self, input_ids, attention_mask, key_mask):
        return ()

    def propose(self, c: DraftContext, state):
        last = tf.gather(c.sequences, (c.prompt_mask.shape[1] + c.generated - 1)[:, None], batch_dims=1)
        tokens = (last + tf.range(1, 3)) % 11
        tokens = tf.tensor_scatter_nd_update(tokens, [[1, 1]], [3])  # row 1: position 1 wrong
        return Draft(tokens, tf.ones([2, 2], tf.bool), None), state


def test_scripted_iterations_match_the_worked_example():
    """The docstring's example, exactly: per-row acceptance, per-row write slots, EOS cut."""
    lm = LanguageModel(Counter(), bucket_shapes=False)
    ids, mask = np.asarray([[0, 5, 6], [4, 5, 6]], np.int32), np.asarray([[0, 1, 1], [1, 1, 1]], np.int32)
    got, scores, stats = speculate(lm, Scripted(), ids, mask, jit=False, max_new_tokens=7, eos_token_id=[],
                                   pad_token_id=0)
    # Row 0 emits 7 8 9 | 10 0 1 | 2 (max_new_tokens), row 1 7 8 | 9 10 | 0 1 | 2.
    np.testing.assert_array_equal(got, [[7, 8, 9, 10, 0, 1, 2], [7, 8, 9, 10, 0, 1, 2]])
    assert stats.iterations == 4
    np.testing.assert_array_equal(stats.accepted, [5, 4])
    np.testing.assert_array_equal(stats.proposed, [6, 8])
    np.testing.assert_allclose(scores, -np.log1p(10 * np.exp(-10.0)), atol=1e-6)
    got, _, stats = speculate(lm, Scripted(), ids, mask, jit=False, max_new_tokens=7, eos_token_id=[0],
                              pad_token_id=4)
    np.testing.assert_array_equal(got, [[7, 8, 9, 10, 0, 4, 4], [7, 8, 9, 10, 0, 4, 4]])


# ----------------------------------------------------------- building blocks
def test_write_spans():
    """(The per-row cache write and masks have exact examples in ``tests/test_decoder_core.py``.)"""
    buf = drafters.write_spans(tf.zeros([2, 5], tf.int32), tf.constant([[7, 8], [5, 6]]),
                               tf.constant([1, 4]), tf.constant([1, 2]))
    np.testing.assert_array_equal(buf, [[0, 7, 0, 0, 0], [0, 0, 0, 0, 5]])


def test_step_all_equals_forward_at_per_row_slots(law_lm):
    """Per-row slots and all-position logits agree with a full forward; rewriting a slot
    (as after a rejection) replaces what was there."""
    model = law_lm.model
    rng = np.random.default_rng(2)
    full = rng.integers(0, VOCAB, (2, 10)).astype(np.int32)
    mask = np.ones_like(full)
    mask[0, :2] = 0
    want = law_lm.logits(full, mask, jit_compile=False)
    key_mask = tf.constant(np.concatenate([mask, np.ones([2, 2], np.int32)], 1))
    prompt_mask = tf.constant(mask[:, :5])
    cache = model.init_cache(2, 12)
    _, cache = model.step(tf.constant(full[:, :5]), pos.positions_from_mask(prompt_mask), cache, 0, key_mask)
    junk = tf.constant(rng.integers(0, VOCAB, (2, 3)).astype(np.int32))  # "drafts", later rejected
    first = tf.constant([5, 5])
    _, cache = model.step_all(junk, pos.slot_positions(prompt_mask, first[:, None] + tf.range(3)), cache, first,
                              key_mask)
    # Both rows accept two real tokens (slots 5, 6), then continue from their own slots:
    # row 0 from 7, row 1 from 6 (rewriting a real slot), both over junk at 7.
    _, cache = model.step_all(tf.constant(full[:, 5:7]), pos.slot_positions(prompt_mask, first[:, None] + tf.range(2)),
                              cache, first, key_mask)
    first = tf.constant([7, 6])
    ids = tf.constant(np.stack([full[0, 7:10], full[1, 6:9]]))
    got, _ = model.step_all(ids, pos.slot_positions(prompt_mask, first[:, None] + tf.range(3)), cache, first, key_mask)
    np.testing.assert_allclose(got.numpy()[0], want[0, 7:10], atol=1e-4)
    np.testing.assert_allclose(got.numpy()[1], want[1, 6:9], atol=1e-4)


def test_verify_head_gives_the_same_logits_and_is_not_a_parameter(tmp_path):
    """GPT-2's ``[vocab, C]`` head copy (``prepare_verification``): the same logits for
    many-row ``step_all`` calls, the usual head for one row, outside the variables and
    checkpoints, refreshed on request, and made by ``build_generate`` for a drafter."""
    from xladecode.compiled import Strategy, build_generate
    from xladecode.config import GPT2Config

    model = GPT2(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=8, n_layer=1, n_head=2), seed=3)
    key_mask = tf.ones([2, 6], tf.int32)

    def logits(batch, t):
        ids = tf.constant(np.arange(batch * t, dtype=np.int32).reshape(batch, t) % VOCAB)
        cache = model.init_cache(batch, 6)
        return model.step_all(ids, tf.tile(tf.range(t)[None], [batch, 1]), cache, tf.zeros([batch], tf.int32),
                              key_mask[:batch])[0].numpy()

    before = {shape: logits(*shape) for shape in [(2, 3), (1, 3), (1, 1), (2, 1)]}
    parameters = [v.name for v in model.variables]
    drafter = PromptLookupDrafter(2)
    build_generate(model, 4, Strategy(drafter_key=drafter.compile_key(), drafter=drafter), jit_compile=False)
    head = model.derived.verify_head
    assert head.shape == (VOCAB, 8)
    np.testing.assert_array_equal(head.numpy(), model.weights["wte.weight"].numpy().T)
    for shape, want in before.items():
        np.testing.assert_allclose(logits(*shape), want, rtol=1e-5, atol=1e-6, err_msg=str(shape))
    for few in [(1, 1), (2, 1)]:  # fewer than VERIFY_HEAD_MIN_ROWS rows: the [C, vocab] head, bit for bit
        np.testing.assert_array_equal(logits(*few), before[few])
    model.prepare_verification()  # idempotent: the same variable
    assert model.derived.verify_head is head
    assert [v.name for v in model.variables] == parameters
    saved = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    assert not [name for name, _ in tf.train.list_variables(saved) if "verify" in name or "derived" in name]
    model.weights["wte.weight"].assign(model.weights["wte.weight"] * 2.0)  # the copy does not follow ...
    assert not np.array_equal(head.numpy(), model.weights["wte.weight"].numpy().T)
    model.prepare_verification(refresh=True)  # ... until refreshed
    np.testing.assert_array_equal(head.numpy(), model.weights["wte.weight"].numpy().T)


@examples(20)
@given(rows=st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=14), min_size=1, max_size=1),
       k=st.integers(1, 4), ngram=st.integers(1, 3))
def test_prompt_lookup_proposes_what_transformers_proposes(rows, k, ngram):
    import torch
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    context = rows[0]
    reference = PromptLookupCandidateGenerator(num_output_tokens=k, max_matching_ngram_size=ngram,
                                               max_length=1000)
    out, _ = reference.get_candidates(torch.tensor([context]))
    want = out[0, len(context):].tolist()
    width = len(context) + 3
    seq = tf.constant([context[:-1] + [context[-1]] + [0] * (width - len(context))], tf.int32)
    options = type("O", (), {"pad_token_id": tf.constant(0)})()
    c = DraftContext(seq, tf.constant([1]), tf.ones([1, len(context) - 1], tf.int32), None, options, None, False)
    drafter = PromptLookupDrafter(k, ngram, latest=False)  # backoff on: it cannot matter before the first draft
    draft, _ = drafter.propose(c, drafter.start(seq, None, None))
    got = draft.tokens.numpy()[0][draft.valid.numpy()[0]].tolist()
    assert got == want, f"context {context}: got {got}, transformers {want}"


@pytest.mark.parametrize("context, ngram, latest, tokens, valid", [
    ([5, 6, 7, 8, 5, 6, 9, 5, 6], 2, True, [9, 5], [True, True]),  # the docstring's example
    ([5, 6, 7, 8, 5, 6, 9, 5, 6], 2, False, [7, 8], [True, True]),
    ([1, 1, 1], 1, True, [1, 0], [True, False]),  # the latest [1] is right before the tail: one token follows
    ([1, 1, 1], 1, False, [1, 1], [True, True]),
    ([1, 1, 1], 2, True, [1, 0], [True, False]),  # [1, 1] first: its only earlier occurrence is columns 0-1
    ([3, 4, 5], 2, True, [0, 0], [False, False]),  # no earlier occurrence: nothing to propose
])
def test_prompt_lookup_copies_after_the_latest_or_the_leftmost_match(context, ngram, latest, tokens, valid):
    seq = tf.constant([context + [0] * 3], tf.int32)
    options = type("O", (), {"pad_token_id": tf.constant(0)})()
    c = DraftContext(seq, tf.constant([1]), tf.ones([1, len(context) - 1], tf.int32), None, options, None, False)
    drafter = PromptLookupDrafter(2, ngram=ngram, max_backoff=0, latest=latest)
    draft, _ = drafter.propose(c, drafter.start(seq, None, None))
    assert draft.tokens.numpy()[0].tolist() == tokens
    assert draft.valid.numpy()[0].tolist() == valid


def _lookup_rounds(drafter, first_tokens, rounds, accept):
    """(The schedules below are worked for leftmost matches, ``latest=False``.) Runs ``drafter.propose`` for ``rounds`` iterations on one row over the alphabet {1, 2}
    (with ngram 1 a match always exists). An iteration that drafts emits the first
    ``accept(i)`` draft tokens, then the other letter than the next draft token (a
    rejection); one that does not draft emits one token. Returns the iterations that drafted."""
    context = list(first_tokens)
    width = len(context) + rounds * (drafter.k + 1) + 1
    options = type("O", (), {"pad_token_id": tf.constant(0)})()
    prompt = tf.ones([1, len(context)], tf.int32)
    state = drafter.start(tf.zeros([1, len(context)], tf.int32), None, None)
    drafted = []
    for i in range(rounds):
        seq = tf.constant([context + [0] * (width - len(context))], tf.int32)
        c = DraftContext(seq, tf.constant([len(context) - len(first_tokens)]), prompt, None, options, None, False)
        draft, state = drafter.propose(c, state)
        tokens, valid = draft.tokens.numpy()[0].tolist(), draft.valid.numpy()[0]
        if valid[0]:
            drafted.append(i)
            n = accept(i)
            context += tokens[:n] + ([3 - tokens[n]] if n < drafter.k and valid[n] else [1])
        else:
            context.append(1 + i % 2)
    return drafted


def test_prompt_lookup_backs_off_after_drafts_that_do_not_pay():
    # No draft ever pays: skips of 1, 2, 4, then 4 (the cap): drafts at 0, 2, 5, 10, 15, 20.
    assert _lookup_rounds(PromptLookupDrafter(2, ngram=1, max_backoff=4, latest=False), [1, 2, 1], 22,
                          accept=lambda i: 0) == [0, 2, 5, 10, 15, 20]
    # A draft that pays (k = 2: one token accepted) resets the backoff: lost at 0 (skip 1),
    # paid at 2, lost at 3 (skip 1 again, not 2), lost at 5 (skip 2).
    assert _lookup_rounds(PromptLookupDrafter(2, ngram=1, max_backoff=4, latest=False), [1, 2, 1], 9,
                          accept=lambda i: 1 if i == 2 else 0) == [0, 2, 3, 5, 8]
    # k = 4 needs 2 accepted tokens to pay: one accepted token is still a loss.
    assert _lookup_rounds(PromptLookupDrafter(4, ngram=1, max_backoff=4, latest=False), [1, 2, 1], 6,
                          accept=lambda i: 1) == [0, 2, 5]
    assert _lookup_rounds(PromptLookupDrafter(4, ngram=1, max_backoff=4, latest=False), [1, 2, 1], 4,
                          accept=lambda i: 2) == [0, 1, 2, 3]
    # max_backoff = 0 is transformers' rule: draft whenever there is a match.
    assert _lookup_rounds(PromptLookupDrafter(2, ngram=1, max_backoff=0, latest=False), [1, 2, 1], 6,
                          accept=lambda i: 0) == [0, 1, 2, 3, 4, 5]


def test_per_row_processors_equal_one_row_at_a_time():
    rng = np.random.default_rng(4)
    tokens = tf.constant(rng.integers(0, 4, (3, 9)).astype(np.int32))
    cur_len = tf.constant([3, 9, 6])
    mask = tf.range(9)[None, :] < cur_len[:, None]
    logits = tf.constant(rng.normal(size=(3, 4)).astype(np.float32))
    words, lengths = processors.pack_bad_words([[1, 2], [3, 0, 1], [2]], 4)
    per_row = [
        lambda l, t, m, n: processors.no_repeat_ngram(l, t, m, n, tf.constant(2)),
        lambda l, t, m, n: processors.bad_words(l, t, m, n, words, lengths),
        lambda l, t, m, n: processors.min_new_tokens(l, n - 5, tf.constant(2), tf.constant([True, False, False, True])),
        lambda l, t, m, n: processors.forced_eos(l, n, tf.constant(7), tf.constant([False, True, False, False])),
    ]
    for f in per_row:
        together = f(logits, tokens, mask, cur_len).numpy()
        for b in range(3):
            alone = f(logits[b:b + 1], tokens[b:b + 1], mask[b:b + 1], cur_len[b]).numpy()
            np.testing.assert_array_equal(together[b:b + 1], alone)


def test_bad_arguments_are_refused_before_tracing(tiny_lm):
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        PromptLookupDrafter(0)
    with pytest.raises(ValueError, match="max_matching_ngram_size"):
        PromptLookupDrafter(3, ngram=0)
    with pytest.raises(ValueError, match="prompt_lookup_max_backoff"):
        PromptLookupDrafter(3, max_backoff=drafters.MAX_BACKOFF + 1)
    with pytest.raises(ValueError, match="num_assistant_tokens"):
        ModelDrafter(tiny_lm.model, drafters.MAX_DRAFT_TOKENS + 1)
    with pytest.raises(ValueError, match="assistant_model.*vocab_size"):
        speculative.check(tiny_lm.model, ModelDrafter(RopeDecoder(vocab_size=VOCAB + 1), 2))
    with pytest.raises(ValueError, match="num_beams"):
        speculative.check(tiny_lm.model, PromptLookupDrafter(2), num_beams=4)
    with pytest.raises(ValueError, match="model.*step_all"):
        speculative.check(object(), PromptLookupDrafter(2))


def _backoff_pair(do_sample, finished):
    """Two rows with a match ([5, 6] recurs): row 0 may draft (skip 0), row 1 is in its
    backoff (skip 2). Returns ``(draft.valid[:, 0], skip)`` of one greedy or sampled iteration."""
    context = [5, 6, 7, 8, 5, 6]
    seq = tf.constant([context + [0] * 3] * 2, tf.int32)
    options = type("O", (), {"pad_token_id": tf.constant(0)})()
    c = DraftContext(seq, tf.constant([1, 1]), tf.ones([2, len(context) - 1], tf.int32), None, options, None,
                     do_sample, None if finished is None else tf.constant(finished))
    drafter = PromptLookupDrafter(2, ngram=2, max_backoff=4)
    none = tf.zeros([2, 2], tf.int32)
    state = LookupBackoff(tf.zeros([2], tf.int32), none, tf.cast(none, tf.bool), tf.constant([1, 3]),
                          tf.constant([0, 2]))  # _backoff counts skip down by one: 0 and 2 this iteration
    draft, state = drafter.propose(c, state)
    return draft.valid.numpy()[:, 0].tolist(), state.skip.numpy().tolist()


def test_greedy_lets_every_row_with_a_match_draft_once_one_row_drafts():
    assert _backoff_pair(do_sample=False, finished=[False, False]) == ([True, True], [0, 2])
    # Only a finished row drafts: nobody else is woken (the verify stays one position wide).
    assert _backoff_pair(do_sample=False, finished=[True, False]) == ([True, False], [0, 2])
    # Sampling keeps the per-row rule; so does a drafter that is not told which rows are done.
    assert _backoff_pair(do_sample=True, finished=[False, False]) == ([True, False], [0, 2])
    assert _backoff_pair(do_sample=False, finished=None) == ([True, False], [0, 2])
