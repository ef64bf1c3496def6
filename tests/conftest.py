"""Suite-wide configuration.

Silent broadcasts and silent dtype promotions fail the whole suite (library
code and doctests included): a (B, H) + (H,) that "happens to work" must be
written as an explicit broadcast.
"""

import warnings

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

SEED = 20240611

# tests/typing/ holds scripts for the type checker (pyright, in .ci/run), not tests.
collect_ignore = ["typing"]

# The slowest tests, marked `slow` here by node id (a file, a test, or one parametrized case), so that
# `python -m pytest -q -m "not slow"` gives a fast subset for day-to-day work; CI runs everything. A test
# file may also mark its own tests with `@pytest.mark.slow`. An entry whose file is collected but which
# matches no test is reported as a warning (a renamed test must be renamed here too).
SLOW = (
    # the examples trained in subprocesses, and the benchmark's smoke run
    "tests/test_examples.py::test_smoke_run_writes_metrics_plot_and_checkpoint",
    "tests/test_examples.py::test_resumed_run_ends_exactly_like_an_uninterrupted_one",
    "tests/test_examples.py::test_four_devices_give_the_loss_of_one",
    "tests/test_benchmarks_smoke.py::test_quick_run_reports_every_installed_implementation",
    "tests/test_benchmarks_smoke.py::test_family_runs_when_asked_for",
    # training runs interrupted and resumed (checkpoints)
    "tests/test_checkpoints.py::test_a_flipped_byte_in_any_checkpoint_file_is_refused_and_nothing_changes",
    "tests/test_checkpoints.py::test_a_real_sigint_during_compilation_of_digits",
    # the cuDNN path's checks that compile many XLA fallbacks on the CPU
    "tests/test_cudnn.py::test_cudnn_path_matches_the_fused_xla_path",
    "tests/test_cudnn.py::test_under_vmap_jvp_and_second_derivatives_the_call_falls_back_to_xla",
    "tests/test_cudnn.py::test_lstm_ref_on_packed_weights_equals_stacked_lstm",
)


def _is_slow(nodeid: str, entry: str) -> bool:
    """Whether ``entry`` names this test: the same node id, or a file, test or class that holds it."""
    return nodeid == entry or nodeid.startswith((entry + "::", entry + "["))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    matched = set()
    for item in items:
        for entry in SLOW:
            if _is_slow(item.nodeid, entry):
                item.add_marker(pytest.mark.slow)
                matched.add(entry)
    collected_files = {item.nodeid.split("::")[0] for item in items}
    for entry in SLOW:
        if entry not in matched and entry.split("::")[0] in collected_files and "::" in entry:
            warnings.warn(f"tests/conftest.py: SLOW names {entry!r}, which matches no collected test", stacklevel=1)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, fixed-seed NumPy generator per test (tests do not depend on their order)."""
    return np.random.default_rng(SEED)


@pytest.fixture
def key() -> jax.Array:
    """A fixed JAX PRNG key."""
    return jax.random.key(SEED)
