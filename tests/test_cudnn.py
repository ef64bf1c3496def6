"""cuDNN through ``jax.experimental.rnn``, tested on CPU (docs/gpu.md).

* Packing: ``StackParams`` ↔ cuDNN's flat weight vector, bit-exact round trips, and the layout
  checked against ``jax.experimental.rnn``'s own ``unpack_lstm_weights`` and ``lstm_ref``.
* The dispatch, end to end: ``tests/cudnn_cpu.py`` gives the binding's primitives CPU lowerings
  built from ``lstm_ref`` and makes the dispatch see a CUDA GPU, so ``backend="cudnn"`` runs here
  through the same packing, primitives and fix-ups as on a GPU; values and gradients are checked
  against jaxlstm's fused XLA path.
"""

from __future__ import annotations

import cudnn_cpu
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import jaxlstm as jl
from jaxlstm import cudnn

# ----------------------------------------------------------------------------- packing

LAYOUTS = [(1, False), (2, True), (3, False)]  # (num_layers, bidirectional)


def _bits(tree):
    return [np.asarray(leaf).view(np.uint32) for leaf in jax.tree.leaves(tree)]


def _random_stack(rng, input_size, hidden_size, num_layers, bidirectional):
    directions = 2 if bidirectional else 1
    widths = [input_size] + [directions * hidden_size] * (num_layers - 1)
    return tuple(
        tuple(
            jl.LSTMParams(*(rng.standard_normal(shape).astype(np.float32) for shape in shapes))
            for _ in range(directions)
        )
        for shapes in [
            ((width, 4 * hidden_size), (hidden_size, 4 * hidden_size), (4 * hidden_size,)) for width in widths
        ]
    )


@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS)
def test_round_trip_from_jaxlstm_is_bit_exact(rng, num_layers, bidirectional):
    stack = _random_stack(rng, 3, 2, num_layers, bidirectional)
    stack[0][0].b[:3] = [-0.0, np.nan, np.inf]  # b_hh = −0.0 gives each of these back from b_ih + b_hh

    weights, back = jax.jit(lambda s: (w := cudnn.to_cudnn(s), cudnn.from_cudnn(w, 3, 2, num_layers, bidirectional)))(
        stack
    )

    assert weights.shape == (rnn.get_num_params_in_lstm(3, 2, num_layers, bidirectional),)
    assert weights.shape == (cudnn.num_weights(3, 2, num_layers, bidirectional),)
    assert jax.tree.structure(back) == jax.tree.structure(stack)
    for got, want in zip(_bits(back), _bits(stack), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS)
def test_layout_is_jax_experimental_rnns(num_layers, bidirectional):
    """cuDNN → jaxlstm against jax's own unpacking: w_ih = W_ihᵀ, w_hh = W_hhᵀ, b = b_ih + b_hh; and
    back to cuDNN, W_ih and W_hh are exact and b_ih + b_hh is kept."""
    weights = np.random.default_rng(num_layers).uniform(-1, 1, cudnn.num_weights(3, 2, num_layers, bidirectional))
    weights = weights.astype(np.float32)  # NumPy throughout: jax's unpacking slices it without compiling anything
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, 3, 2, num_layers, bidirectional)

    stack = cudnn.from_cudnn(weights, 3, 2, num_layers, bidirectional)
    repacked = rnn.unpack_lstm_weights(np.asarray(cudnn.to_cudnn(stack)), 3, 2, num_layers, bidirectional)

    cells = [params for directions in stack for params in directions]
    assert len(cells) == num_layers * (2 if bidirectional else 1)
    for cell, params in enumerate(cells):
        np.testing.assert_array_equal(params.w_ih, w_ih[cell].T)
        np.testing.assert_array_equal(params.w_hh, w_hh[cell].T)
        np.testing.assert_array_equal(params.b, b_ih[cell] + b_hh[cell])
        np.testing.assert_array_equal(repacked[0][cell], w_ih[cell])
        np.testing.assert_array_equal(repacked[1][cell], w_hh[cell])
        np.testing.assert_array_equal(repacked[2][cell] + repacked[3][cell], b_ih[cell] + b_hh[cell])


def test_carries_round_trip_and_layout():
    carries = tuple(
        tuple(jl.LSTMCarry(jnp.full((2, 3), 10.0 * layer + d), jnp.full((2, 3), -10.0 * layer - d)) for d in range(2))
        for layer in range(2)
    )
    h0, c0 = cudnn.carries_to_cudnn(carries)
    assert h0.shape == c0.shape == (4, 2, 3)  # (layers·directions, batch, H): forward 0, backward 0, forward 1, ...
    np.testing.assert_array_equal(h0[:, 0, 0], [0.0, 1.0, 10.0, 11.0])
    back = cudnn.carries_from_cudnn(h0, c0, bidirectional=True)
    for got, want in zip(_bits(back), _bits(carries), strict=True):
        np.testing.assert_array_equal(got, want)


def test_from_cudnn_refuses_a_vector_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"shape \(144,\) for input_size=3, hidden_size=4.*got \(143,\)"):
        cudnn.from_cudnn(jnp.zeros(143), 3, 4)


def test_lstm_ref_on_packed_weights_equals_stacked_lstm(rng):
    """JAX's reference of the cuDNN LSTM on ``to_cudnn``'s vector computes what ``jl.stacked_lstm`` does:
    2 bidirectional layers, ragged lengths (lstm_ref needs >= 1), random initial carries."""
    num_layers, directions, bidirectional = 2, 2, True
    stack = _random_stack(rng, 3, 4, num_layers, bidirectional)
    xs = jnp.asarray(rng.standard_normal((3, 6, 3)), jnp.float32)
    h0, c0 = (jnp.asarray(rng.standard_normal((num_layers * directions, 3, 4)), jnp.float32) for _ in range(2))
    lengths = jnp.array([6, 2, 4], jnp.int32)

    static = dict(input_size=3, hidden_size=4, num_layers=num_layers, dropout=0.0, bidirectional=bidirectional)
    y, h_n, c_n = jax.jit(lambda *a: cudnn_cpu._reference(*a, **static))(xs, h0, c0, cudnn.to_cudnn(stack), lengths)
    finals, hs = jax.jit(jl.stacked_lstm)(
        stack, xs, cudnn.carries_from_cudnn(h0, c0, bidirectional), seq_lengths=lengths
    )

    np.testing.assert_allclose(hs, y, rtol=0, atol=1e-6)
    h_ours, c_ours = cudnn.carries_to_cudnn(finals)
    np.testing.assert_allclose(h_ours, h_n, rtol=0, atol=1e-6)
    np.testing.assert_allclose(c_ours, c_n, rtol=0, atol=1e-6)
