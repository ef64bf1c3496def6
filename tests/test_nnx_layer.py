"""The NNX layer's kept carry: present only when stateful, allocated by ``reset_carry(batch_shape)``,
restarted per row, read with ``[...]``; and ``nnx.tabulate`` on the layer.

The streaming itself is compared with one whole-sequence call (the same numbers, chunk by chunk);
docs/nnx.md runs the same under ``nnx.scan`` and through an orbax checkpoint.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlstm as jl

B, T, D, H = 2, 6, 3, 4
X = jax.random.normal(jax.random.key(1), (B, T, D))


def _stream(**options):
    return jl.nnx.LSTM(D, H, stateful=True, rngs=nnx.Rngs(0), **options)


def test_a_layer_that_is_not_stateful_keeps_no_carry():
    model = jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))
    paths = [path for path, _ in nnx.to_flat_state(nnx.state(model))]
    assert paths == [("layer_0", "b"), ("layer_0", "w_hh"), ("layer_0", "w_ih")]
    with pytest.raises(ValueError, match=r"reset_carry is for a stateful=True layer"):
        model.reset_carry((B,))


@pytest.mark.parametrize("learn_initial_carry", [False, True])
def test_reset_carry_with_a_batch_shape_puts_the_initial_carry_in_place(learn_initial_carry):
    model = _stream(learn_initial_carry=learn_initial_carry, num_layers=2)
    if learn_initial_carry:
        model.layer_1.h0[...] = jnp.arange(H, dtype=jnp.float32)
    assert model.carry[...] is None
    model.reset_carry(B)  # one int, as (B,)
    kept = model.carry[...]
    assert jax.tree.all(jax.tree.map(np.array_equal, kept, model.carry.get_value()))
    expected_h1 = np.broadcast_to(np.arange(H) if learn_initial_carry else np.zeros(H), (B, H))
    np.testing.assert_array_equal(kept[1][0].h, expected_h1)
    np.testing.assert_array_equal(kept[0][0].c, np.zeros((B, H)))
    # starting from it is starting afresh: the same outputs as a call without a kept carry
    fresh = model(X)
    model.reset_carry()
    np.testing.assert_allclose(fresh, model(X), rtol=1e-6, atol=1e-6)


def test_chunks_after_reset_carry_compute_the_whole_sequence():
    model = _stream()
    model.reset_carry((B,))
    step = nnx.jit(lambda model, chunk: model(chunk))
    chunked = jnp.concatenate([step(model, X[:, :3]), step(model, X[:, 3:])], axis=1)
    whole = jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))(X)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_reset_carry_of_some_rows_restarts_those_rows_only():
    model = _stream()
    model(X[:, :3])
    model.reset_carry(rows=jnp.array([True, False]))
    restarted = model(X[:, 3:])
    from_scratch = jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))(X[:, 3:])
    going_on = jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0))(X)[:, 3:]
    np.testing.assert_allclose(restarted[0], from_scratch[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(restarted[1], going_on[1], rtol=1e-6, atol=1e-6)


def test_reset_carry_arguments_are_checked():
    model = _stream()
    with pytest.raises(ValueError, match=r"reset_carry\(rows=...\) with no carry kept yet needs batch_shape"):
        model.reset_carry(rows=jnp.array([True, False]))
    with pytest.raises(TypeError, match=r"rows must have dtype bool, got int32"):
        model.reset_carry((B,), rows=jnp.array([1, 0]))
    with pytest.raises(ValueError, match=r"rows must have shape \(\*batch,\) = \(2,\), one flag per sequence, got \(3,\)"):
        model.reset_carry((B,), rows=jnp.array([True, False, True]))
    with pytest.raises(TypeError, match=r"batch_shape must be a tuple of ints >= 0 \(or one int\), got float 2.0"):
        model.reset_carry(2.0)  # type: ignore[arg-type]


def test_nnx_tabulate_works_on_the_layer():
    """It failed inside Flax on the NamedTuple that ``stack_params`` returns, which it recorded."""
    table = nnx.tabulate(jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0)), X)
    assert "LSTM Summary" in table and "Total Parameters: 128" in table  # 3*16 + 4*16 + 16
