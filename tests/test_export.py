"""jaxlstm/_export.py: the public NamedTuples serialize inside jax.export's Exported."""

import jax
import jax.numpy as jnp

import jaxlstm as jl
from tests.reference import assert_close


def test_an_exported_lstm_whose_inputs_and_outputs_are_namedtuples_serializes():
    params = jl.init_params(jax.random.key(0), 3, 4)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    exported = jax.export.export(jax.jit(lambda p, x: jl.lstm(p, x)))(params, xs)
    restored = jax.export.deserialize(exported.serialize())
    final, hs = restored.call(params, xs)
    expected_final, expected_hs = jl.lstm(params, xs)
    assert isinstance(final, jl.LSTMCarry)
    assert_close(hs, expected_hs)
    assert_close(final.c, expected_final.c)
