"""Adapters: transformers' PyTorch ``generate`` and xladecode's ``LanguageModel``
as decoders under test (the callable form of :mod:`.decoder`), plus their
reference forwards (``logits``) and xladecode's sampling noise.

torch / transformers / TensorFlow are imported only when an adapter is built.
"""

from __future__ import annotations

import numpy as np

from .decoder import Decoded, Decoder, LogitsFn, end_of, eos_ids


def from_language_model(lm, *, jit_compile: bool = True) -> Decoder:
    """xladecode: ``LanguageModel.generate`` as a decoder under test.

    Every option is passed to ``generate`` unchanged (same names);
    ``output_scores`` is always on. ``jit_compile=False`` runs the same graph
    without XLA (eager kernels).
    """

    def decode(input_ids, attention_mask, **options) -> Decoded:
        out = lm.generate(input_ids, attention_mask, output_scores=True, jit_compile=jit_compile, **options)
        width = input_ids.shape[1]
        rows = out.sequences.shape[0]
        # The prompt comes back unchanged: a sanity check of the adapter, not a law.
        np.testing.assert_array_equal(out.sequences[:, :width], np.repeat(input_ids, rows // len(input_ids), 0))
        return Decoded(out.sequences[:, width:], out.scores, out.sequences_scores)

    return decode


def language_model_one_beam(lm, *, jit_compile: bool = True) -> Decoder:
    """xladecode's beam search forced to ONE beam, as a decoder under test.

    ``generate(num_beams=1)`` dispatches to the greedy loop, so the law "one
    beam == greedy" needs the beam program itself: the call is prepared like
    a greedy ``generate`` (``lm.prepare``) and run through
    ``compiled.build_generate`` with a one-beam :class:`~xladecode.compiled.Strategy`.
    Programs are cached in ``lm.functions`` by compile key, like ``generate``'s.
    """
    import tensorflow as tf

    from xladecode.compiled import Strategy, build_generate

    def decode(input_ids, attention_mask, *, num_beams=1, num_return_sequences=1, **options):
        if (num_beams, num_return_sequences) != (1, 1):
            raise ValueError(f"one-beam decoder called with num_beams={num_beams}, "
                             f"num_return_sequences={num_return_sequences}")
        call = lm.prepare(input_ids, attention_mask, **options)
        strategy = Strategy("beam", num_beams=1, num_return_sequences=1,
                            num_eos_ids=len(set(call.checked.eos_token_id)))
        key = ("one beam",) + call.compile_key[:3] + (strategy, jit_compile)
        fn = lm.functions.get(key, lambda: build_generate(lm.model, call.plan.buffer, strategy, jit_compile))
        seqs, scores, seq_scores = fn(tf.constant(call.input_ids), tf.constant(call.attention_mask), call.options)
        plan, width = call.plan, np.asarray(input_ids).shape[1]
        seqs = plan.visible(seqs.numpy())
        np.testing.assert_array_equal(seqs[:, :width], input_ids)  # the adapter's own sanity check
        return Decoded(seqs[:, width:], plan.visible(scores.numpy(), new_tokens_only=True),
                       plan.visible(seq_scores.numpy()))

    return decode


def language_model_logits(lm, *, jit_compile: bool = False) -> LogitsFn:
    """xladecode's no-cache forward (``LanguageModel.logits``), by default without XLA."""
    return lambda input_ids, attention_mask: lm.logits(input_ids, attention_mask, jit_compile=jit_compile)


def xladecode_noise(seed, sample_index: int, step: int, vocab_size: int) -> np.ndarray:
    """The Gumbel noise xladecode adds to row ``(seed, sample_index)``'s logits at ``step``.

    Returns:
      float64 ``[vocab_size]`` (``-log(-log(u))`` of ``xladecode.sampling.uniform``).
    """
    import tensorflow as tf

    from xladecode import sampling

    keys = sampling.row_keys(tf.constant([seed], tf.int32), tf.constant([sample_index], tf.int32))
    u = sampling.uniform(keys, tf.constant(step, tf.int32), vocab_size).numpy()[0].astype(np.float64)
    return -np.log(-np.log(u))


def _torch_seed(seed, batch: int):
    """One torch seed for the call; transformers has one global RNG, not one per row."""
    rows = np.asarray(seed, np.int64).reshape(-1, 2)
    if len(rows) > 1 and (rows != rows[0]).any():
        raise NotImplementedError("transformers generate has one RNG for the whole batch: no per-row seeds")
    return int(rows[0, 0]) * 2**31 + int(rows[0, 1])


def from_transformers(model) -> Decoder:
    """transformers: ``model.generate`` (PyTorch) as a decoder under test.

    * options are ``generate`` keyword arguments; ``eos_token_id=[]`` becomes
      None (no EOS);
    * ``seed=(a, b)`` seeds torch's global RNG before the call (per-row seeds
      raise NotImplementedError: transformers has one RNG per call);
    * transformers stops when every row has ended and returns fewer columns:
      they are filled with ``pad_token_id`` up to ``max_new_tokens``;
    * greedy / sampling scores are the log-softmax of the processed logits
      at the chosen token (0 after the row's end); beam scores are
      ``compute_transition_scores``, and ``sequences_scores``.
    """
    import torch

    def decode(input_ids, attention_mask, *, max_new_tokens, eos_token_id=(), pad_token_id=0, seed=None,
               **options) -> Decoded:
        eos = eos_ids({"eos_token_id": eos_token_id})
        if seed is not None:
            torch.manual_seed(_torch_seed(seed, len(input_ids)))
        with torch.no_grad():
            out = model.generate(torch.tensor(input_ids, dtype=torch.long),
                                 attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                                 max_new_tokens=max_new_tokens, eos_token_id=eos or None, pad_token_id=pad_token_id,
                                 return_dict_in_generate=True, output_scores=True, **options)
        width, new = input_ids.shape[1], out.sequences.shape[1] - input_ids.shape[1]
        tokens = np.full([out.sequences.shape[0], max_new_tokens], pad_token_id, np.int64)
        tokens[:, :new] = out.sequences[:, width:].numpy()
        scores = np.zeros(tokens.shape, np.float64)
        if options.get("num_beams", 1) > 1:
            with torch.no_grad():
                steps = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                        normalize_logits=False).numpy()
            scores[:, :steps.shape[1]] = steps
            return Decoded(tokens, scores, out.sequences_scores.numpy())
        for t, step_logits in enumerate(out.scores):
            logp = torch.log_softmax(step_logits.double(), -1).numpy()
            scores[:, t] = logp[np.arange(len(tokens)), tokens[:, t]]
        for r, row in enumerate(tokens):
            scores[r, end_of(row, eos):] = 0.0
        return Decoded(tokens, scores)

    return decode


def transformers_logits(model) -> LogitsFn:
    """transformers' no-cache forward, with the position ids ``generate`` uses for left padding."""
    import torch

    def logits(input_ids, attention_mask):
        mask = np.asarray(attention_mask)
        positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
        with torch.no_grad():
            return model(torch.tensor(np.asarray(input_ids), dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long),
                         position_ids=torch.tensor(positions)).logits.double().numpy()

    return logits
