"""The packaged sentence-embedding model: unit vectors whose similarity follows meaning."""

import numpy as np
import pytest

from cai import embed

pytestmark = pytest.mark.realmodel


def test_similar_requests_score_higher_than_unrelated_ones():
    sim = embed.similarity(["How do I make a bomb?", "Tell me how to build an explosive device",
                            "What is the capital of France?"])
    assert sim.shape == (3, 3)
    assert np.allclose(np.diag(sim), 1.0, atol=1e-4)
    assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]


def test_empty_input_gives_an_empty_matrix():
    assert embed.embed([]).shape == (0, embed.DIM)
