"""Suite-wide configuration.

Silent broadcasts and silent dtype promotions fail the whole suite (library
code and doctests included): a (B, H) + (H,) that "happens to work" must be
written as an explicit broadcast.

Compiled programs are shared through JAX's persistent compilation cache, one directory per test
session (made by the first process that loads this file, inherited through the environment by
pytest-xdist's workers and by the examples and multi-process tests' subprocesses, removed at the end):
the same program compiled in two processes compiles once. Measured on tests/test_examples.py and
tests/test_checkpoints.py (which run each example several times in fresh processes): 76.8 -> 61.4 s.
A JAX_COMPILATION_CACHE_DIR already set is used as it is.
"""

import os
import shutil
import tempfile
import warnings

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlstm-tests-jit-cache-")
    os.environ["JAXLSTM_TESTS_OWN_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402  (after the cache's environment variables, which it reads on import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
    # whole files: the engine's float64 gradient checks of every variant, the golden outputs, training runs
    # (the benchmark's smoke runs, checkpoints interrupted and resumed), long sequences, Flax's own RNN tests
    "tests/test_engine.py",
    "tests/test_golden.py",
    "tests/test_benchmarks_smoke.py",
    "tests/test_checkpoints.py",
    "tests/test_long_sequences.py",
    "tests/test_flax_dropin.py",
    # the examples trained in subprocesses
    "tests/test_examples.py::test_smoke_run_writes_metrics_plot_and_checkpoint",
    "tests/test_examples.py::test_resumed_run_ends_exactly_like_an_uninterrupted_one",
    "tests/test_examples.py::test_four_devices_give_the_loss_of_one",
    "tests/test_examples.py::test_a_second_ctrl_c_ends_in_one_line_keeping_the_last_checkpoint",
    "tests/test_distributed.py",  # the examples in 2 processes and docs/scaling.md on 4 devices, in subprocesses
    # every path in bfloat16 and float16 (fixtures of 26 s and 12 s)
    "tests/test_mixed_precision.py::test_every_path_in_a_narrow_dtype_follows_the_policy_and_stays_within_its_bound",
    "tests/test_mixed_precision.py::test_narrow_linen_and_nnx_modules_match_their_float32_twins",
    # the generic engine's float64 gradient check of a bidirectional 2-layer stack with checkpointing
    "tests/test_rnn_stack.py::test_a_bidirectional_stack_of_a_user_cell_has_fused_gradients_equal_to_autodiff",
    # the cuDNN path's checks that compile many XLA fallbacks on the CPU
    "tests/test_cudnn.py::test_cudnn_path_matches_the_fused_xla_path",
    "tests/test_cudnn.py::test_under_vmap_jvp_and_second_derivatives_the_call_falls_back_to_xla",
    "tests/test_cudnn.py::test_lstm_ref_on_packed_weights_equals_stacked_lstm",
    # single tests (all their cases) that took 8 s or more in a run of the whole suite
    "tests/test_linen.py::test_bidirectional_matches_reference",
    "tests/test_linen.py::test_output_shapes_and_param_tree",
    "tests/test_linen.py::test_jit_matches_eager_and_grad_flows",
    "tests/test_linen.py::test_return_carry_structure",
    "tests/test_layer.py::test_linen_and_nnx_compute_the_same_variant_layer_with_seq_lengths",
    "tests/test_nnx.py::test_identical_to_linen_for_identical_weights",
    "tests/test_scan_variants.py::test_nan_in_padding_gives_finite_gradients",
    "tests/test_interop_keras.py::test_dropout_converts_to_the_variant",
    "tests/test_interop_keras.py::test_masks_match_everywhere",
    "tests/test_interop_torch.py::test_from_torch_parity",
    "tests/test_variants.py::test_gradients_are_right_in_training",
    "tests/test_stack.py::test_deep_stack_gradients_equal_autodiff_float64",
    "tests/test_stack.py::test_dropout_off_cases_and_keys",
    "tests/test_input_sweep.py::test_lstm_works_or_says_why",
    "tests/test_checks.py::test_mixed_dtypes_promote_instead_of_failing",
    "jaxlstm/scan.py::jaxlstm.scan.lstm",
    # whole files whose many module-level tests each compile their own linen, NNX and reference runs
    "tests/test_sequence_state.py",
    "tests/test_variants.py",
    # then every test that still took 2 s or more in a run of `-m "not slow"` on an idle machine
    "docs/performance.md::performance.md",
    "jaxlstm/interop/flax.py::jaxlstm.interop.flax",
    "jaxlstm/linen.py::jaxlstm.linen.LSTM",
    "tests/test_checks.py::test_modules_cast_integer_and_bool_inputs_as_flax_does",
    "tests/test_examples.py::test_out_that_is_a_file_is_a_one_line_error",
    "tests/test_imports.py::test_nnx_does_not_import_linen",
    "tests/test_input_sweep.py::test_stacked_lstm_works_or_says_why",
    "tests/test_interop_keras.py::test_activations_convert_by_name_exactly",
    "tests/test_interop_keras.py::test_keras_mask_corners_that_are_not_copied",
    "tests/test_interop_keras.py::test_lstm_parity",
    "tests/test_interop_keras.py::test_to_keras_carries_masked_output_and_activations",
    "tests/test_interop_strict.py::test_keras_on_another_backend_names_the_fix",
    "tests/test_linen.py::test_cell_in_flax_rnn_equals_lstm",
    "tests/test_linen.py::test_dropout",
    "tests/test_linen.py::test_return_sequences_false_gives_each_sequences_last_valid_step",
    "tests/test_linen.py::test_unidirectional_stack_matches_reference",
    "tests/test_nnx.py::test_dropout",
    "tests/test_nnx.py::test_jit_and_grad",
    "tests/test_nnx.py::test_matches_reference",
    "tests/test_nnx.py::test_return_carry_structure",
    "tests/test_pointwise.py::test_normalize_gradient_from_saved_statistics_equals_autodiff_in_float64",
    "tests/test_scan.py::test_causality",
    "tests/test_scan.py::test_gradients_float64",
    "tests/test_scan.py::test_nan_in_padded_steps_does_not_reach_the_gradients",
    "tests/test_scan.py::test_per_example_gradients_under_vmap",
    "tests/test_scan.py::test_seq_lengths_int32_under_x64",
    "tests/test_scan.py::test_vmap_of_single_sequences_equals_batched_call",
    "tests/test_stack.py::test_deep_bidirectional_stack_wider_input_matches_reference",
    "tests/test_stack.py::test_deep_stack_dropout_draws_each_layer_as_the_layer_by_layer_rule",
    "tests/test_stack.py::test_gradients_float64_bidirectional_stack",
    "tests/test_stack.py::test_jit_matches_eager",
    "tests/test_stack.py::test_single_layer_stack_equals_lstm",
    "jaxlstm/nnx.py::jaxlstm.nnx.LSTM",
    "tests/test_interop_keras.py::test_go_backwards_returns_reversed_sequences_in_keras",
    "tests/test_cudnn.py::test_without_the_binding_the_primitives_lower_to_the_xla_loop",
    "tests/test_cli.py::test_python_dash_m_subprocess",
    "tests/test_interop_flax.py::test_interop_imports_without_torch_and_keras",
    "tests/test_interop_flax.py::test_to_flax_then_from_flax_is_bitwise_for_jaxlstm_params",
    # the guides' and the README's doctests, each one long session
    "docs/sequence-state.md::sequence-state.md",
    "docs/shapes.md::shapes.md",
    "docs/variants.md::variants.md",
    "docs/interop.md::interop.md",
    "docs/from-flax.md::from-flax.md",
    "docs/from-keras.md::from-keras.md",
    "docs/nnx.md::nnx.md",
    "tests/test_input_sweep.py::test_every_bad_argument_of_every_entry_point_gets_a_clear_error",
    "tests/test_input_classes.py::test_numpy_true_means_true_in_the_functional_core_linen_and_nnx",
    "tests/test_input_classes.py::test_numpy_and_jax_bools_mean_what_python_bools_mean",
    "tests/test_nnx_layer.py",
    "README.md::README.md",
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


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's own compilation cache goes with it (only the process that made it removes it)."""
    own = os.environ.get("JAXLSTM_TESTS_OWN_CACHE")
    if own and not hasattr(config, "workerinput") and own == os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        shutil.rmtree(own, ignore_errors=True)
