"""Flax's own test files, vendored; tests/test_flax_dropin.py runs them with jaxlstm's cells, not pytest directly."""

collect_ignore = ["linen_recurrent_test.py", "nnx_recurrent_test.py"]
