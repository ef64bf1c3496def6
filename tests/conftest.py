"""Suite-wide configuration.

Silent broadcasts and silent dtype promotions fail the whole suite (library
code and doctests included): a (B, H) + (H,) that "happens to work" must be
written as an explicit broadcast.
"""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

SEED = 20240611

# tests/typing/ holds scripts for the type checker (pyright, in .ci/run), not tests.
collect_ignore = ["typing"]


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, fixed-seed NumPy generator per test (tests do not depend on their order)."""
    return np.random.default_rng(SEED)


@pytest.fixture
def key() -> jax.Array:
    """A fixed JAX PRNG key."""
    return jax.random.key(SEED)
