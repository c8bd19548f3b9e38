"""Exact, eager examples of the decoder's building blocks: ``positions.py``,
``kv_cache.py``, ``sampling.py`` and decoding's verbs (``warp_logits``,
``choose_tokens``, ``process_logits``, ``end_on_stop_strings``, the loop).

Every expected value is worked out by hand (positions, cache slots, logits) or by an
independent numpy transcription of the documented hash (``sampling``), never
by the code under test. These run in well under a second, which is what the
mutation run (``tools/results/mutation.md``) needs from a test selection.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from scripted import TableModel
from xladecode import decoding, kv_cache, positions as pos, processors, sampling, stop_strings
from xladecode.sequence_bias import pack_sequence_bias

# ------------------------------------------------------------------ positions


def test_positions_start_at_each_rows_first_real_token():
    mask = tf.constant([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(pos.positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4],
                                                                  [0, 0, 0, 0, 0]])
    # Generated token `step` of a row sits at (real prompt length + step).
    np.testing.assert_array_equal(pos.next_positions(mask, tf.constant(0)), [[3], [5], [1]])
    np.testing.assert_array_equal(pos.next_positions(mask, tf.constant(4)), [[7], [9], [5]])


def test_attention_matrix_is_causal_and_hides_padding():
    got = pos.attention_matrix(tf.constant([3]), tf.constant([[0, 1, 1, 1, 1]]))
    assert got.dtype == tf.bool and got.shape == (1, 1, 1, 5)
    np.testing.assert_array_equal(got.numpy()[0, 0], [[False, True, True, True, False]])
    got = pos.attention_matrix_for_slots(tf.constant(1), 3, tf.constant([[1, 1, 1, 1], [0, 0, 1, 1]]))
    assert got.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(got.numpy()[:, 0].astype(int), [
        [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],  # queries at slots 1, 2, 3
        [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]])  # same, pads at slots 0, 1


def test_full_sequence_inputs():
    ids, positions, mask = pos.full_sequence([[0, 4, 5]], [[0, 1, 1]])
    assert ids.dtype == tf.int32
    np.testing.assert_array_equal(ids, [[0, 4, 5]])
    np.testing.assert_array_equal(positions, [[0, 0, 1]])
    np.testing.assert_array_equal(mask.numpy()[0, 0].astype(int), [[0, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert pos.full_sequence(np.array([[4, 5]], np.int64))[0].dtype == tf.int32  # ids always int32
    _, positions, mask = pos.full_sequence([[4, 5]])  # no mask: nothing is padding
    np.testing.assert_array_equal(positions, [[0, 1]])
    np.testing.assert_array_equal(mask.numpy()[0, 0].astype(int), [[1, 0], [1, 1]])


def test_per_row_slots_and_masks():
    # Row 0 has 2 real tokens in a width-3 prompt: slot 3 holds position 2.
    np.testing.assert_array_equal(pos.slot_positions(tf.constant([[0, 1, 1], [1, 1, 1]]),
                                                     tf.constant([[3, 5], [3, 4]])), [[2, 4], [3, 4]])
    got = pos.attention_matrix_per_row(tf.constant([[1, 2], [3, 0]]), tf.constant([[1, 1, 1, 1], [0, 1, 1, 1]]))
    assert got.dtype == tf.bool and got.shape == (2, 1, 2, 4)
    np.testing.assert_array_equal(got.numpy()[:, 0].astype(int), [[[1, 1, 0, 0], [1, 1, 1, 0]],
                                                                  [[0, 1, 1, 1], [0, 0, 0, 0]]])


# ------------------------------------------------------------------- kv_cache


def test_allocate_zero_cache_of_fixed_shape():
    cache = kv_cache.allocate(3, 2, 4, 7, 5, tf.float16)
    assert len(cache.keys) == len(cache.values) == 3
    for t in cache.keys + cache.values:
        assert t.shape == (2, 4, 7, 5) and t.dtype == tf.float16 and not t.numpy().any()
    assert kv_cache.allocate(1, 1, 1, 2, 1).keys[0].dtype == tf.float32  # the default


def test_write_puts_new_slots_at_the_cache_index_for_every_row():
    cache = tf.zeros([2, 2, 5, 1])
    new = tf.reshape(tf.range(1, 9, dtype=tf.float32), [2, 2, 2, 1])  # rows 1..4 and 5..8, 2 heads x 2 slots
    out = kv_cache.write(cache, new, tf.constant(2)).numpy()[..., 0]
    np.testing.assert_array_equal(out, [[[0, 0, 1, 2, 0], [0, 0, 3, 4, 0]], [[0, 0, 5, 6, 0], [0, 0, 7, 8, 0]]])
    same = kv_cache.write(cache, new, np.int64(2)).numpy()[..., 0]  # any integer index is taken as int32
    np.testing.assert_array_equal(same, out)
    out = kv_cache.write(tf.ones([1, 1, 3, 2], tf.bfloat16), tf.constant([[[[7.0, 9.0]]]]), 0)
    assert out.dtype == tf.bfloat16  # new is cast to the cache's dtype
    np.testing.assert_array_equal(out.numpy().astype(np.float32), [[[[7, 9], [1, 1], [1, 1]]]])


def test_write_rows_gives_each_row_its_own_slots():
    cache = tf.fill([2, 2, 4, 1], -1.0)
    new = tf.reshape(tf.range(1, 9, dtype=tf.float32), [2, 2, 2, 1])
    for out in (kv_cache.write_rows(cache, new, tf.constant([0, 2])), kv_cache.write(cache, new, tf.constant([0, 2]))):
        np.testing.assert_array_equal(out.numpy()[..., 0], [[[1, 2, -1, -1], [3, 4, -1, -1]],
                                                            [[-1, -1, 5, 6], [-1, -1, 7, 8]]])
    # batch 3, heads 2, one slot each: three different sizes, so no axis can stand in for another.
    new = tf.reshape(tf.range(1, 7, dtype=tf.float32), [3, 2, 1, 1])
    out = kv_cache.write_rows(tf.zeros([3, 2, 3, 1]), new, tf.constant([2, 0, 1])).numpy()[..., 0]
    np.testing.assert_array_equal(out, [[[0, 0, 1], [0, 0, 2]], [[3, 0, 0], [4, 0, 0]], [[0, 5, 0], [0, 6, 0]]])


# ------------------------------------------------------------------- sampling
# An independent numpy transcription of the documented generator: lowbias32
# (x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16),
# keys from (seed0 + golden, ^ seed1, ^ sample * golden), uniforms from the top
# 24 bits, Gumbel-max.

M32, GOLDEN = 0xFFFFFFFF, 0x9E3779B9


def mix_ref(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def key_ref(seed0: int, seed1: int, sample: int) -> int:
    k = mix_ref((seed0 + GOLDEN) & M32)
    k = mix_ref(k ^ (seed1 & M32))
    return mix_ref(k ^ ((sample * GOLDEN) & M32))


def uniform_ref(key: int, step: int, vocab: int) -> np.ndarray:
    step_key = mix_ref(key ^ ((step * GOLDEN) & M32))
    bits = [mix_ref(step_key ^ mix_ref((t * 0x85EBCA6B) & M32)) for t in range(vocab)]
    return np.array([((b >> 8) + 0.5) / 2**24 for b in bits], np.float64)


def test_mix_is_lowbias32():
    for x in (0, 1, 2, 0x12345678, 0xDEADBEEF, M32):
        assert int(sampling._mix(tf.constant([x], tf.uint32)).numpy()[0]) == mix_ref(x)


def test_row_keys_and_uniforms_follow_the_documented_hash():
    seeds = np.array([[0, 0], [1, 2], [-5, 7], [2**31 - 1, -(2**31)]], np.int32)
    samples = np.array([0, 3, 1, 2], np.int32)
    keys = sampling.row_keys(tf.constant(seeds), tf.constant(samples)).numpy()
    want = [key_ref(int(a) & M32, int(b) & M32, int(s)) for (a, b), s in zip(seeds, samples)]
    assert keys.tolist() == want
    for step in (0, 1, 17):
        u = sampling.uniform(tf.constant(keys), tf.constant(step), 6).numpy()
        assert u.dtype == np.float32
        np.testing.assert_array_equal(u, np.stack([uniform_ref(k, step, 6) for k in want]).astype(np.float32))


def test_gumbel_sample_is_the_argmax_of_logits_plus_gumbel_noise():
    keys = np.array([key_ref(3, 4, 0), key_ref(9, 9, 1)], np.uint32)
    logits = np.array([[0.0, 1.0, -np.inf, 0.5, 2.0], [3.0, -1.0, 0.0, 0.0, -np.inf]], np.float32)
    for step in range(6):
        got = sampling.gumbel_sample(tf.constant(logits), tf.constant(keys), tf.constant(step)).numpy()
        noise = np.stack([-np.log(-np.log(uniform_ref(int(k), step, 5).astype(np.float32))) for k in keys])
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, np.argmax(logits + noise, -1))


def test_options_off_process_nothing():
    # Every option at its off value: the processors leave the logits as they are, and the
    # token masks are bool (the processors' tf.reduce_any needs bool).
    options = decoding.DecodeOptions.off(4)
    assert options.suppress_mask.dtype == tf.bool and options.eos_mask.dtype == tf.bool
    logits = tf.constant([[0.5, -1.0, 2.0, 0.0]])
    tokens, mask = tf.constant([[1, 2]]), tf.constant([[True, True]])
    out = decoding.process_logits(logits, tokens, mask, tf.constant(2), tf.constant(0), options)
    np.testing.assert_array_equal(out.numpy(), logits.numpy())
    # With an EOS id set on top, still nothing: min_new_tokens is off too, so EOS is not banned.
    with_eos = decoding.DecodeOptions.off(4, eos_mask=tf.constant([False, False, True, False]))
    out = decoding.process_logits(logits, tokens, mask, tf.constant(2), tf.constant(0), with_eos)
    np.testing.assert_array_equal(out.numpy(), logits.numpy())


# ------------------------------------------------------------------ decoding's verbs
# (warp_logits, choose_tokens and the loop, on hand-written logits; these kill
# survivors of mutation run 2, see tools/results/mutation.md)

NEG_INF = -np.inf


def test_warp_logits_divides_by_the_temperature_and_treats_zero_as_one():
    logits = tf.constant([[2.0, 0.0, -2.0]])
    halved = decoding.warp_logits(logits, decoding.DecodeOptions.off(3, temperature=tf.constant(0.5)))
    np.testing.assert_array_equal(halved.numpy(), [[4.0, 0.0, -4.0]])
    # 0 means greedy, which the caller handles; warp_logits must not divide by it.
    zero = decoding.warp_logits(logits, decoding.DecodeOptions.off(3, temperature=tf.constant(0.0)))
    np.testing.assert_array_equal(zero.numpy(), logits.numpy())


def test_warp_logits_passes_its_floor_to_the_truncation_warpers():
    # probs ~ [.64, .24, .09, .03]; min_p = 0.9 keeps only token 0 (0.24 < 0.9 * 0.64) ...
    logits = tf.constant([[0.0, -1.0, -2.0, -3.0]])
    options = decoding.DecodeOptions.off(4, min_p=tf.constant(0.9))
    np.testing.assert_array_equal(decoding.warp_logits(logits, options).numpy(),
                                  [[0.0, NEG_INF, NEG_INF, NEG_INF]])
    # ... unless the floor says 3 (beam sampling passes number of EOS ids + 1).
    np.testing.assert_array_equal(decoding.warp_logits(logits, options, min_tokens_to_keep=3).numpy(),
                                  [[0.0, -1.0, -2.0, NEG_INF]])


def test_top_k_fast_path_runs_exactly_for_k_from_1_to_256():
    # The one documented difference of the fast path (warp_logits' docstring): when the
    # k-th best score ties with scores outside the 256-candidate pool, only the tied tokens
    # inside the pool survive, where the full-vocabulary filters keep the whole tie group.
    # 300 equal logits make the path visible: 256 survivors = pool, 300 = full vocabulary.
    logits = tf.zeros([1, 300])

    def survivors(**values):
        warped = decoding.warp_logits(logits, decoding.DecodeOptions.off(300, **values)).numpy()
        return int(np.isfinite(warped).sum())

    assert survivors(top_k=tf.constant(1)) == 256
    assert survivors(top_k=tf.constant(256)) == 256
    assert survivors(top_k=tf.constant(257)) == 300
    assert survivors(top_k=tf.constant(0), top_p=tf.constant(0.5)) == 300  # top-p alone: full vocabulary
    assert survivors() == 300  # both off
    # (This pins a documented limitation: if the fast path ever keeps whole tie groups,
    # these counts change and this test should find another way to see the path.)


def test_top_k_floor_above_the_fast_path_pool_uses_the_full_vocabulary():
    # top_k = 5 raised to a floor of 260 (> the 256-candidate pool): 260 distinct logits kept.
    logits = tf.constant(-np.arange(300, dtype=np.float32)[np.newaxis])
    options = decoding.DecodeOptions.off(300, top_k=tf.constant(5))
    warped = decoding.warp_logits(logits, options, min_tokens_to_keep=260).numpy()
    np.testing.assert_array_equal(np.isfinite(warped[0]), np.arange(300) < 260)


def test_temperature_zero_samples_greedily():
    # do_sample with temperature 0 is greedy: the argmax, scored under the unwarped logits.
    # 64 rows of near-uniform logits: a sampler at temperature 1 would pick token 1 in only
    # about a third of them.
    processed = tf.tile(tf.constant([[0.0, 0.01, 0.0]]), [64, 1])
    keys = tf.cast(tf.range(64), tf.uint32)
    options = decoding.DecodeOptions.off(3, temperature=tf.constant(0.0))
    tokens, logprobs = decoding.choose_tokens(processed, options, keys, tf.constant(0), do_sample=True)
    np.testing.assert_array_equal(tokens.numpy(), np.ones(64))
    want = 0.01 - np.log(2 + np.exp(0.01))
    np.testing.assert_allclose(logprobs.numpy(), np.full(64, want), rtol=1e-6)


def test_the_loop_runs_the_processors_on_the_tokens_written_so_far():
    # no_repeat_ngram_size = 1 bans every token already in the row (a padded slot is not
    # in it). Greedy picks the best token not yet seen, by [0, 3, 2, 1]:
    #   row 0, prompt [2]:        bans {2}     -> 1; {2, 1} -> 3; {2, 1, 3} -> 0
    #   row 1, prompt [3, 1]:     bans {3, 1}  -> 2; {3, 1, 2} -> 0; all banned -> argmax of
    #                             four -inf = 0 (a real decode would stop on EOS before this)
    ids = tf.constant([[0, 2], [3, 1]])
    mask = tf.constant([[0, 1], [1, 1]])
    options = decoding.DecodeOptions.off(4, max_new_tokens=tf.constant(3), no_repeat_ngram_size=tf.constant(1),
                                         seeds=tf.zeros([2, 2], tf.int32), sample_index=tf.zeros([2], tf.int32))
    constant = TableModel(np.tile([[0.0, 3.0, 2.0, 1.0]], [4, 1]))  # the same logits after every token
    sequences, _ = decoding.sample_loop(constant, ids, mask, options, 3, do_sample=False)
    np.testing.assert_array_equal(sequences.numpy(), [[0, 2, 1, 3, 0], [3, 1, 2, 0, 0]])


def test_process_logits_runs_each_processor_at_its_value():
    # One row, tokens written so far [1, 2] (cur_len 2), vocabulary of 5, each option alone.
    logits = tf.constant([[0.5, -1.0, 2.0, 0.0, 1.0]])
    tokens, mask = tf.constant([[1, 2]]), tf.constant([[True, True]])

    def run(step=0, **values):
        options = decoding.DecodeOptions.off(5, **values)
        return decoding.process_logits(logits, tokens, mask, tf.constant(2), tf.constant(step), options).numpy()

    def ids(*marked):
        return tf.constant([i in marked for i in range(5)])

    # Repetition penalty 2 on the seen tokens 1 and 2: negative x 2, positive / 2.
    np.testing.assert_array_equal(run(repetition_penalty=tf.constant(2.0)), [[0.5, -2.0, 1.0, 0.0, 1.0]])
    # no_repeat_ngram 1: every seen token is banned.
    np.testing.assert_array_equal(run(no_repeat_ngram_size=tf.constant(1)),
                                  [[0.5, NEG_INF, NEG_INF, 0.0, 1.0]])
    # Bad words [4] (always) and [2, 3] (3 after a 2: the row ends in 2).
    words, lengths = processors.pack_bad_words([[4], [2, 3]], 5)
    np.testing.assert_array_equal(run(bad_words_ids=tf.constant(words), bad_words_lengths=tf.constant(lengths)),
                                  [[0.5, -1.0, 2.0, NEG_INF, NEG_INF]])
    words, lengths = processors.pack_bad_words([[2, 3]], 5)  # a table of exactly one word
    np.testing.assert_array_equal(run(bad_words_ids=tf.constant(words), bad_words_lengths=tf.constant(lengths)),
                                  [[0.5, -1.0, 2.0, NEG_INF, 1.0]])
    # min_new_tokens 2 bans EOS (4) at steps 0 and 1, not at step 2.
    eos = dict(eos_mask=ids(4), min_new_tokens=tf.constant(2))
    np.testing.assert_array_equal(run(step=1, **eos), [[0.5, -1.0, 2.0, 0.0, NEG_INF]])
    np.testing.assert_array_equal(run(step=2, **eos), logits.numpy())
    # suppress_tokens [0].
    np.testing.assert_array_equal(run(suppress_mask=ids(0)), [[NEG_INF, -1.0, 2.0, 0.0, 1.0]])
    # Forced EOS (3) on the last of 3 steps only.
    forced = dict(forced_eos_mask=ids(3), max_new_tokens=tf.constant(3))
    np.testing.assert_array_equal(run(step=2, **forced), [[NEG_INF, NEG_INF, NEG_INF, 0.0, NEG_INF]])
    np.testing.assert_array_equal(run(step=1, **forced), logits.numpy())
    # Sequence bias: one sequence (2, 0) adds 1.5 to token 0 after a 2; a second, (4,), adds -2.5 always.
    one = decoding.sequence_bias_fields(pack_sequence_bias({(2, 0): 1.5}, 5))
    np.testing.assert_array_equal(run(**one), [[2.0, -1.0, 2.0, 0.0, 1.0]])
    two = decoding.sequence_bias_fields(pack_sequence_bias({(2, 0): 1.5, (4,): -2.5}, 5))
    np.testing.assert_array_equal(run(**two), [[2.0, -1.0, 2.0, 0.0, -1.5]])


def test_end_on_stop_strings_reads_the_tables_it_is_given():
    # Tokens 0..3 are the bytes "st", "op", "x", "a"; the stop string is "stop".
    tables = stop_strings.tables_from_vocab([b"st", b"op", b"x", b"a"], ["stop"])
    options = decoding.DecodeOptions.off(4, **decoding.stop_string_fields(tables))
    tokens = tf.constant([[0, 1], [1, 0], [2, 2]])  # "stop", "opst", "xx"
    mask = tf.ones([3, 2], tf.bool)
    finished = tf.constant([False, False, True])
    ended = decoding.end_on_stop_strings(finished, tokens, mask, tf.constant(2), options)
    np.testing.assert_array_equal(ended.numpy(), [True, False, True])  # a finished row stays finished
    # With only the first token written, no row has completed "stop".
    ended = decoding.end_on_stop_strings(tf.zeros([3], tf.bool), tokens, mask, tf.constant(1), options)
    np.testing.assert_array_equal(ended.numpy(), [False, False, False])
    # No stop strings: ``finished`` comes back as it is.
    off = decoding.DecodeOptions.off(4)
    np.testing.assert_array_equal(decoding.end_on_stop_strings(finished, tokens, mask, tf.constant(2), off).numpy(),
                                  [False, False, True])
