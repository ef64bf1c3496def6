"""jaxlstm.rnn, the engine, for any cell of the protocol: cells the tests write themselves
(a minimal gated unit, an LSTM) and the GRU, fused gradients against autodiff in float64."""

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl
from tests.reference import assert_close, ref_lstm


class MGUParams(NamedTuple):
    w_ih: jax.Array  # (D, 2H)
    w_hh: jax.Array  # (H, 2H)
    b: jax.Array  # (2H,)


@dataclass(frozen=True)
class MGU(jl.Cell):
    """A minimal gated unit, reset-after: f = σ(a_f + u_f), n = tanh(a_n + f·u_n), h' = (1 − f)·h + f·n."""

    num_gates = 2
    input_bias = "b"

    def init_params(self, key, input_size, hidden_size, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return MGUParams(
            jax.random.normal(k1, (input_size, 2 * hidden_size), dtype) / input_size**0.5,
            jax.random.normal(k2, (hidden_size, 2 * hidden_size), dtype) / hidden_size**0.5,
            jnp.zeros((2 * hidden_size,), dtype),
        )

    def init_carry(self, params, batch_shape, dtype):
        return jnp.zeros((*batch_shape, params.w_hh.shape[0]), dtype)

    def hidden(self, carry):
        return carry

    def step(self, params, from_input, from_h, carry):
        (a_f, a_n), (u_f, u_n) = jnp.split(from_input, 2, axis=-1), jnp.split(from_h, 2, axis=-1)
        f = jax.nn.sigmoid(a_f + u_f)
        return (1.0 - f) * carry + f * jnp.tanh(a_n + f * u_n)


class TinyLSTMParams(NamedTuple):
    w_ih: jax.Array
    w_hh: jax.Array
    b: jax.Array


@dataclass(frozen=True)
class TinyLSTM(jl.Cell):
    """The LSTM as a user would write it for the engine: carry (h, c), h·W_hh reads h."""

    num_gates = 4
    input_bias = "b"

    def init_carry(self, params, batch_shape, dtype):
        zeros = jnp.zeros((*batch_shape, params.w_hh.shape[0]), dtype)
        return jl.LSTMCarry(zeros, zeros)

    def hidden(self, carry):
        return carry.h

    def step(self, params, from_input, from_h, carry):
        i, f, g, o = jnp.split(from_input + from_h, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jl.LSTMCarry(jax.nn.sigmoid(o) * jnp.tanh(c), c)


D, H, B, T = 3, 4, 3, 7
CASES = {
    "plain": {},
    "lengths": {"seq_lengths": np.array([7, 3, 0])},
    "lengths, reverse": {"seq_lengths": np.array([7, 3, 0]), "reverse": True},
    "mask, previous": {"mask": np.array([[1, 0, 1, 1, 0, 1, 1]] * 3, bool), "masked_output": "previous"},
    "resets, reverse": {"resets": np.eye(3, 7, 2, dtype=bool) | np.eye(3, 7, 5, dtype=bool), "reverse": True},
    "checkpoint_every": {"checkpoint_every": 3, "seq_lengths": np.array([7, 5, 1])},
}


def _loss(cell, params, xs, carry, gradient, options):
    final, hs = jl.rnn(cell, params, xs, carry, gradient=gradient, **options)
    weights = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
    return jnp.sum(weights * hs) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))


@pytest.mark.parametrize("cell", [MGU(), jl.cells.GRU()], ids=["user MGU", "GRU"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_gradient_equals_autodiff_in_float64(cell, case):
    with jax.enable_x64(True):
        params = cell.init_params(jax.random.key(0), D, H, jnp.float64)
        params = jax.tree.map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), params)
        xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
        carry = 0.5 * jnp.tanh(jax.random.normal(jax.random.key(2), (B, H), jnp.float64))
        # NaN in padding must reach neither values nor gradients
        if "seq_lengths" in CASES[case]:
            lengths = CASES[case]["seq_lengths"]
            xs = jnp.where(jnp.arange(T)[None, :, None] >= lengths[:, None, None], jnp.nan, xs)
        options = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in CASES[case].items()}
        grad = jax.value_and_grad(_loss, argnums=(1, 2, 3))
        value_f, fused = grad(cell, params, xs, carry, "fused", options)
        value_a, autodiff = grad(cell, params, xs, carry, "autodiff", options)
        assert np.isfinite(value_f)
        np.testing.assert_allclose(value_f, value_a, rtol=1e-12)
        for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(autodiff), strict=True):
            assert np.all(np.isfinite(a))
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_an_lstm_written_as_a_cell_equals_jl_lstm_and_the_reference(reverse):
    params = jl.init_params(jax.random.key(0), D, H)
    tiny = TinyLSTMParams(*params)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.asarray([7, 4, 2])
    final, hs = jl.rnn(TinyLSTM(), tiny, xs, seq_lengths=lengths, reverse=reverse)
    ref_final, ref_hs = jl.lstm(params, xs, seq_lengths=lengths, reverse=reverse)
    np_h, np_c, np_hs = ref_lstm(*params, np.asarray(xs), seq_lengths=np.asarray(lengths), reverse=reverse)
    assert_close(hs, np_hs)
    assert_close(final.h, np_h)
    assert_close(final.c, np_c)
    assert_close(hs, ref_hs)
    assert_close(final.h, ref_final.h)


def test_the_lstm_cell_with_a_projection_runs_through_jl_rnn_as_jl_lstm():
    """w_hh is (P, 4H) under a projection: jl.rnn takes it (R = P, the row weight's output), equal to
    jl.lstm bit for bit in value and gradient, and names a misshaped W_hr or w_hh."""
    variant = jl.LSTMVariant(proj_size=2, peepholes=True)
    params = jl.init_variant_params(jax.random.key(0), D, H, variant)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.asarray([7, 4, 2])

    def loss(run, params):
        final, hs = run(params)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(final.c**2)

    by_rnn = jax.value_and_grad(loss, argnums=1)(
        lambda p: jl.rnn(jl.cells.LSTM(variant), p, xs, seq_lengths=lengths), params
    )
    by_lstm = jax.value_and_grad(loss, argnums=1)(
        lambda p: jl.lstm(p, xs, seq_lengths=lengths, variant=variant), params
    )
    assert jax.tree.leaves(by_rnn[1])[0].shape == (D, 4 * H)
    for a, b in zip(jax.tree.leaves(by_rnn), jax.tree.leaves(by_lstm), strict=True):
        np.testing.assert_array_equal(a, b)
    cell = jl.cells.LSTM(variant)
    with pytest.raises(ValueError, match=r"params.w_hr must have shape \(H, P\) = \(4, 2\)"):
        jl.rnn(cell, params._replace(w_hr=jnp.ones((H, 3))), xs)
    with pytest.raises(ValueError, match=r"params.w_hh must have shape \(R, 4H\) = \(2, 16\)"):
        jl.rnn(cell, params._replace(w_hh=jnp.ones((H, 4 * H))), xs)
    with pytest.raises(ValueError, match=r"variant.proj_size needs params.w_hr"):
        jl.rnn(cell, params._replace(w_hr=None), xs)


def test_cells_see_none_in_the_engines_fields_and_batch_dims_flatten():
    seen = []

    @dataclass(frozen=True)
    class Spy(MGU):
        def step(self, params, from_input, from_h, carry):
            seen.append((params.w_ih, params.w_hh, params.b, from_input.shape, carry.shape))
            return super().step(params, from_input, from_h, carry)

    cell = Spy()
    params = cell.init_params(jax.random.key(0), D, H)
    final, hs = jl.rnn(cell, params, jnp.ones((2, 3, T, D)), gradient="autodiff")
    assert (final.shape, hs.shape) == ((2, 3, H), (2, 3, T, H))
    assert seen[0] == (None, None, None, (6, 2 * H), (6, H))


def test_the_engine_names_what_is_wrong():
    cell = MGU()
    params = cell.init_params(jax.random.key(0), D, H)
    xs = jnp.ones((B, T, D))
    with pytest.raises(TypeError, match="cell must be a jaxlstm.Cell"):
        jl.rnn(object(), params, xs)
    with pytest.raises(ValueError, match=r"params.w_ih must have shape \(input_size, 2 \* hidden_size\)"):
        jl.rnn(cell, params._replace(w_ih=jnp.ones((D, 3 * H))), xs)
    with pytest.raises(ValueError, match="gradient must be one of 'fused', 'autodiff', got 'manual'"):
        jl.rnn(cell, params, xs, gradient="manual")
    with pytest.raises(TypeError, match="reverse must be"):
        jl.rnn(cell, params, xs, reverse="no")
    with pytest.raises(TypeError, match="unexpected keyword argument 'seq_length'"):
        jl.rnn(cell, params, xs, seq_length=jnp.ones((B,), jnp.int32))
    with pytest.raises(ValueError, match=r"seq_lengths must be in \[0, time\] = \[0, 7\]"):
        jl.rnn(cell, params, xs, seq_lengths=jnp.asarray([8, 1, 1]))


@pytest.mark.parametrize("gradient", ["fused", "autodiff"])
def test_exports_with_symbolic_batch_and_time_and_serializes(gradient):
    cell = jl.cells.GRU()  # its GRUParams is registered for serialization (jaxlstm/_export.py)
    params = cell.init_params(jax.random.key(0), D, H)

    def grads(params, xs):
        return jax.grad(lambda p: jnp.sum(jl.rnn(cell, p, xs, gradient=gradient)[1] ** 2))(params)

    batch, time = jax.export.symbolic_shape("b, t")
    exported = jax.export.export(jax.jit(grads))(params, jax.ShapeDtypeStruct((batch, time, D), jnp.float32))
    restored = jax.export.deserialize(exported.serialize())
    for shape in ((2, 5, D), (3, 8, D)):
        xs = jax.random.normal(jax.random.key(1), shape)
        for a, b in zip(jax.tree.leaves(restored.call(params, xs)), jax.tree.leaves(grads(params, xs)), strict=True):
            assert_close(a, b)


def test_checkpoint_every_with_a_symbolic_time_is_refused_clearly():
    cell = MGU()
    params = cell.init_params(jax.random.key(0), D, H)
    (time,) = jax.export.symbolic_shape("t")
    with pytest.raises(ValueError, match="checkpoint_every needs a concrete number of time steps"):
        jax.export.export(jax.jit(lambda p, x: jl.rnn(cell, p, x, checkpoint_every=2)[1]))(
            params, jax.ShapeDtypeStruct((2, time, D), jnp.float32)
        )


def test_every_transformation_works_on_the_fused_path_and_matches_autodiff():
    """Forward mode (jvp, jacfwd, linearize), hessian, vmap over inputs and params, jit: each equals the
    autodiff path's, in float64."""
    cell = jl.cells.GRU()
    with jax.enable_x64(True):
        params = cell.init_params(jax.random.key(0), D, H, jnp.float64)
        xs = jax.random.normal(jax.random.key(1), (2, 4, D), jnp.float64)
        lengths = jnp.asarray([4, 2])

        def last(gradient):
            return lambda p, x: jl.rnn(cell, p, x, seq_lengths=lengths, gradient=gradient)[0]

        fused, autodiff = last("fused"), last("autodiff")
        tangent = jax.tree.map(jnp.ones_like, params)
        checks = {
            "jvp": lambda f: jax.jvp(lambda p: f(p, xs), (params,), (tangent,)),
            "jacfwd": lambda f: jax.jacfwd(f, argnums=1)(params, xs),
            "linearize": lambda f: jax.linearize(lambda x: f(params, x), xs)[1](xs),
            "hessian": lambda f: jax.hessian(lambda x: jnp.sum(f(params, x) ** 2))(xs),
            "vmap of grad, inputs": lambda f: jax.vmap(jax.grad(lambda x: jnp.sum(f(params, x))))(jnp.stack([xs, -xs])),
            "vmap over params": lambda f: jax.vmap(f, in_axes=(0, None))(
                jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params), xs
            ),
            "jit of grad": lambda f: jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(f(p, xs)))))(params),
        }
        for name, check in checks.items():
            for a, b in zip(jax.tree.leaves(check(fused)), jax.tree.leaves(check(autodiff)), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


def test_reverse_mode_runs_the_cells_backward_and_forward_mode_does_not():
    calls = []

    @dataclass(frozen=True)
    class Counted(jl.cells.GRU):
        def backward(self, params, saved, d_carry):
            calls.append("backward")
            return super().backward(params, saved, d_carry)

    cell = Counted()
    params = cell.init_params(jax.random.key(0), D, H)
    xs = jnp.ones((2, 4, D))

    def loss(p):
        return jnp.sum(jl.rnn(cell, p, xs)[1])

    jax.jvp(loss, (params,), (params,))
    assert calls == []
    jax.grad(loss)(params)
    assert calls and set(calls) == {"backward"}


@pytest.mark.parametrize("masked_output", ["zeros", "previous"])
def test_a_loss_on_the_final_carry_alone_reads_no_output_cotangent_and_stays_exact(masked_output):
    """hs's cotangent is a symbolic zero then; the backward loop skips it (it used to read an (N, T, H)
    buffer of zeros, superlinearly slower in T), and the gradients still equal autodiff's."""
    cell = jl.cells.GRU()
    with jax.enable_x64(True):
        params = cell.init_params(jax.random.key(0), D, H, jnp.float64)
        xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
        options = dict(seq_lengths=jnp.asarray([7, 3, 0]), masked_output=masked_output)

        def loss(p, gradient):
            return jnp.sum(jnp.sin(jl.rnn(cell, p, xs, gradient=gradient, **options)[0]))

        for a, b in zip(jax.grad(loss)(params, "fused"), jax.grad(loss)(params, "autodiff"), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
