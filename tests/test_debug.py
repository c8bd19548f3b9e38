"""The eager stepper runs the compiled loop's own step function, so it yields
exactly the tokens ``generate`` returns."""

import numpy as np

from xladecode.debug import step_through
from xladecode.testing import left_pad


def test_step_through_yields_the_generated_tokens(law_lm):
    ids, mask = left_pad([[1, 2, 3], [7, 8]], 4)
    for kw in (dict(), dict(do_sample=True, seed=(4, 2), top_k=0)):
        out = law_lm.generate(ids, mask, max_new_tokens=5, eos_token_id=[], pad_token_id=0,
                              output_scores=True, jit_compile=False, **kw)
        steps = list(step_through(law_lm, ids, mask, max_new_tokens=5, eos_token_id=[], pad_token_id=0,
                                  top=3, **kw))
        assert [s.step for s in steps] == list(range(5))
        np.testing.assert_array_equal(np.stack([s.tokens for s in steps], 1), out.sequences[:, 4:])
        np.testing.assert_allclose(np.stack([s.logprobs for s in steps], 1), out.scores, atol=1e-5)
        if not kw:  # greedy: the chosen token is the best candidate
            np.testing.assert_array_equal(steps[0].top_tokens[:, 0], steps[0].tokens)


def test_step_through_stops_when_all_rows_finish(tiny_lm):
    ids, mask = left_pad([[1, 2, 3]], 3)
    first = next(step_through(tiny_lm, ids, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=0))
    eos = int(first.tokens[0])  # make the first greedy token the EOS
    steps = list(step_through(tiny_lm, ids, mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=0))
    assert len(steps) == 1 and steps[0].finished.all()
