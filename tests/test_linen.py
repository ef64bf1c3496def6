"""jaxlstm.linen: jl.LSTM and jl.LSTMCell, against the NumPy reference."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import assert_close, ref_cell, ref_last_output, ref_lstm, ref_stack

import jaxlstm as jl

B, T, D, H = 3, 5, 3, 4
LENGTHS = np.array([T, 0, 3], np.int32)


def _xs(rng, batch_shape=(B,)):
    return rng.standard_normal((*batch_shape, T, D)).astype(np.float32)


def _randomize(variables, rng, scale=0.6):
    """Replaces every param with N(0, scale²) draws (the init leaves the bias mostly zero)."""
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), variables)


def stack_weights(params, num_layers, bidirectional):
    """``[layer][direction] -> (w_ih, w_hh, b)`` read from the module's own param tree."""
    names = [[f"layer_{layer}"] + ([f"layer_{layer}_reverse"] if bidirectional else []) for layer in range(num_layers)]
    return tuple(
        tuple(tuple(np.asarray(params[name][k]) for k in ("w_ih", "w_hh", "b")) for name in layer) for layer in names
    )


def _random_carries(rng, num_layers, num_directions, batch_shape=(B,)):
    return tuple(
        tuple(
            tuple(rng.standard_normal((*batch_shape, H)).astype(np.float32) for _ in range(2))
            for _ in range(num_directions)
        )
        for _ in range(num_layers)
    )


def _as_lstm_carries(carries):
    return tuple(tuple(jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c)) for h, c in layer) for layer in carries)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    "num_layers, bidirectional, merge, return_sequences, expected",
    [
        (1, False, "concat", True, (B, T, H)),
        (2, False, "concat", False, (B, H)),
        (2, True, "concat", True, (B, T, 2 * H)),
        (2, True, "concat", False, (B, 2 * H)),
        (1, True, "sum", True, (B, T, H)),
        (1, True, "mul", False, (B, H)),
        (2, True, "ave", True, (B, T, H)),
    ],
)
def test_output_shapes_and_param_tree(key, num_layers, bidirectional, merge, return_sequences, expected):
    module = jl.LSTM(
        H, num_layers=num_layers, bidirectional=bidirectional, merge=merge, return_sequences=return_sequences
    )
    x = jnp.ones((B, T, D))
    variables = module.init(key, x)
    assert module.apply(variables, x).shape == expected
    width = 2 * H if (bidirectional and merge == "concat") else H
    expected_names = {
        f"layer_{layer}{suffix}"
        for layer in range(num_layers)
        for suffix in ([""] + (["_reverse"] if bidirectional else []))
    }
    params = variables["params"]
    assert set(params) == expected_names
    for name, cell in params.items():
        fan_in = D if name.startswith("layer_0") else width
        assert {k: v.shape for k, v in cell.items()} == {"w_ih": (fan_in, 4 * H), "w_hh": (H, 4 * H), "b": (4 * H,)}
        assert all(v.dtype == jnp.float32 for v in cell.values())


def test_return_carry_structure(key):
    module = jl.LSTM(H, num_layers=2, bidirectional=True, return_carry=True)
    x = jnp.ones((2, 3, T, D))  # two batch dims
    variables = module.init(key, x)
    carries, out = module.apply(variables, x)
    assert out.shape == (2, 3, T, 2 * H)
    assert len(carries) == 2
    for layer in carries:
        assert len(layer) == 2
        for carry in layer:
            assert isinstance(carry, jl.LSTMCarry)
            assert carry.h.shape == carry.c.shape == (2, 3, H)


def test_unbatched_input(rng, key):
    module = jl.LSTM(H)
    x = rng.standard_normal((T, D)).astype(np.float32)
    variables = _randomize(module.init(key, jnp.asarray(x)), rng)
    out = module.apply(variables, jnp.asarray(x))
    assert out.shape == (T, H)
    (w,) = stack_weights(variables["params"], 1, False)[0]
    assert_close(out, ref_lstm(*w, x)[2])


def test_init_schemes(key):
    x = jnp.ones((B, T, D))
    keras = jl.LSTM(H).init(key, x)["params"]["layer_0"]
    np.testing.assert_array_equal(keras["b"], np.repeat([0.0, 1.0, 0.0, 0.0], H))
    assert_close(keras["w_hh"] @ keras["w_hh"].T, np.eye(H))
    assert np.all(np.abs(keras["w_ih"]) <= math.sqrt(6 / (D + 4 * H)))
    torch = jl.LSTM(H, init_scheme="torch").init(key, x)["params"]["layer_0"]
    for leaf in torch.values():
        assert np.all(np.abs(leaf) <= 1 / math.sqrt(H))
        assert np.abs(leaf).max() > 0.5 / math.sqrt(H)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_bidirectional_matches_reference(rng, key, merge):
    module = jl.LSTM(H, num_layers=2, bidirectional=True, merge=merge, return_carry=True)
    x = _xs(rng)
    variables = _randomize(module.init(key, jnp.asarray(x)), rng)
    carries = _random_carries(rng, 2, 2)
    apply = jax.jit(module.apply)

    finals, out = apply(
        variables, jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS), initial_carry=_as_lstm_carries(carries)
    )

    weights = stack_weights(variables["params"], 2, True)
    ref_finals, ref_hs = ref_stack(weights, x, LENGTHS, merge, carries)
    assert out.shape == ref_hs.shape
    assert_close(out, ref_hs)
    for layer in range(2):
        for direction in range(2):
            assert_close(finals[layer][direction].h, ref_finals[layer][direction][0], f"[{layer}][{direction}].h")
            assert_close(finals[layer][direction].c, ref_finals[layer][direction][1], f"[{layer}][{direction}].c")

    last = jax.jit(module.clone(return_sequences=False, return_carry=False).apply)(
        variables, jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS), initial_carry=_as_lstm_carries(carries)
    )
    assert last.shape == (B, 2 * H if merge == "concat" else H)
    assert_close(last, ref_last_output(ref_finals, merge))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_unidirectional_stack_matches_reference(rng, key, reverse):
    module = jl.LSTM(H, num_layers=2, reverse=reverse)
    x = _xs(rng)
    variables = _randomize(module.init(key, jnp.asarray(x)), rng)
    carries = _random_carries(rng, 2, 1)
    out = module.apply(
        variables, jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS), initial_carry=_as_lstm_carries(carries)
    )
    _, ref_hs = ref_stack(stack_weights(variables["params"], 2, False), x, LENGTHS, "concat", carries, reverse=reverse)
    assert_close(out, ref_hs)


def test_return_sequences_false_gives_each_sequences_last_valid_step(rng, key):
    x = jnp.asarray(_xs(rng))
    lengths = jnp.asarray(np.array([T, 1, 3], np.int32))
    for bidirectional in (False, True):
        module = jl.LSTM(H, num_layers=2, bidirectional=bidirectional)
        variables = _randomize(module.init(key, x), rng)
        seqs = np.asarray(jax.jit(module.apply)(variables, x, seq_lengths=lengths))
        last = np.asarray(jax.jit(module.clone(return_sequences=False).apply)(variables, x, seq_lengths=lengths))
        # Two separately compiled programs: XLA may fuse the last layer differently when its
        # outputs are not needed (e.g. contract a multiply-add into an FMA), so the values agree to
        # float32 rounding (a few ulp), not bit for bit; a wrong step would differ by far more.
        close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
        for seq, length in enumerate(np.asarray(lengths)):
            close(last[seq, :H], seqs[seq, length - 1, :H])  # forward: step length-1
            if bidirectional:
                close(last[seq, H:], seqs[seq, 0, H:])  # backward: step 0


def test_initial_carry_single_layer(rng, key):
    module = jl.LSTM(H, return_carry=True)
    x = _xs(rng)
    variables = _randomize(module.init(key, jnp.asarray(x)), rng)
    (((h0, c0),),) = _random_carries(rng, 1, 1)  # one layer, one direction
    ((final,),), out = module.apply(
        variables, jnp.asarray(x), initial_carry=((jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)),),)
    )
    (w,) = stack_weights(variables["params"], 1, False)[0]
    ref_h, ref_c, ref_hs = ref_lstm(*w, x, h0, c0)
    assert_close(out, ref_hs)
    assert_close(final.h, ref_h)
    assert_close(final.c, ref_c)
    # and it matters
    assert np.abs(np.asarray(out) - ref_lstm(*w, x)[2]).max() > 1e-3


def test_jit_matches_eager_and_grad_flows(rng, key):
    module = jl.LSTM(H, num_layers=2, bidirectional=True, merge="ave")
    x = jnp.asarray(_xs(rng))
    variables = _randomize(module.init(key, x), rng)
    eager = module.apply(variables, x, seq_lengths=jnp.asarray(LENGTHS))
    jitted = jax.jit(module.apply)(variables, x, seq_lengths=jnp.asarray(LENGTHS))
    assert_close(jitted, np.asarray(eager))
    grads = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x, seq_lengths=jnp.asarray(LENGTHS)) ** 2)))(variables)
    assert set(grads["params"]) == {"layer_0", "layer_0_reverse", "layer_1", "layer_1_reverse"}
    assert all(np.all(np.isfinite(g)) and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


def test_computation_dtype_bfloat16(rng, key):
    x = _xs(rng)
    module = jl.LSTM(H, dtype=jnp.bfloat16)
    variables = _randomize(module.init(key, jnp.asarray(x)), rng)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = module.apply(variables, jnp.asarray(x))
    assert out.dtype == jnp.bfloat16
    (w,) = stack_weights(variables["params"], 1, False)[0]
    assert_close(out, ref_lstm(*w, x)[2])  # bfloat16 row of the tolerance table


def test_param_dtype_bfloat16_computes_in_the_wider_dtype(rng, key):
    """bfloat16 params, float32 input, dtype=None: computed in float32 (Flax's convention)."""
    x = _xs(rng)
    module = jl.LSTM(H, param_dtype=jnp.bfloat16, init_scheme="torch")
    variables = _randomize(module.init(key, jnp.asarray(x)), rng)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(variables))
    out = module.apply(variables, jnp.asarray(x))
    assert out.dtype == jnp.float32
    (w,) = stack_weights(variables["params"], 1, False)[0]
    assert_close(out, ref_lstm(*(a.astype(np.float32) for a in w), x)[2])


# --------------------------------------------------------------------------- dropout


def test_dropout(rng, key):
    module = jl.LSTM(H, num_layers=2, dropout=0.5)
    x = jnp.asarray(_xs(rng))
    variables = _randomize(module.init(key, x), rng)
    _, ref_hs = ref_stack(stack_weights(variables["params"], 2, False), np.asarray(x), LENGTHS)
    lengths = jnp.asarray(LENGTHS)
    apply = jax.jit(module.apply, static_argnames=("deterministic",))

    # deterministic=True (the default) is exactly the no-dropout network
    assert_close(apply(variables, x, seq_lengths=lengths), ref_hs)
    assert_close(apply(variables, x, seq_lengths=lengths, deterministic=True, rngs={"dropout": key}), ref_hs)

    a = np.asarray(apply(variables, x, seq_lengths=lengths, deterministic=False, rngs={"dropout": key}))
    assert np.abs(a - ref_hs).max() > 1e-2
    np.testing.assert_array_equal(
        apply(variables, x, seq_lengths=lengths, deterministic=False, rngs={"dropout": key}), a
    )
    other = apply(variables, x, seq_lengths=lengths, deterministic=False, rngs={"dropout": jax.random.fold_in(key, 1)})
    assert not np.array_equal(other, a)
    np.testing.assert_array_equal(a[2, 3:], 0.0)

    # one layer: no inter-layer activations, nothing to drop
    single = jl.LSTM(H, dropout=0.5)
    v1 = {"params": {"layer_0": variables["params"]["layer_0"]}}
    out = single.apply(v1, x, deterministic=False, rngs={"dropout": key})
    assert_close(out, ref_stack(stack_weights(v1["params"], 1, False), np.asarray(x))[1])


# --------------------------------------------------------------------------- LSTMCell


def test_cell_matches_reference_and_initialize_carry(rng, key):
    cell = jl.LSTMCell(H)
    x = rng.standard_normal((2, 3, D)).astype(np.float32)
    carry0 = cell.initialize_carry(key, x.shape)
    assert isinstance(carry0, jl.LSTMCarry)
    assert carry0.h.shape == carry0.c.shape == (2, 3, H) and carry0.h.dtype == jnp.float32
    np.testing.assert_array_equal(carry0.c, 0.0)
    variables = _randomize(cell.init(key, carry0, jnp.asarray(x)), rng)
    h = rng.standard_normal((2, 3, H)).astype(np.float32)
    c = rng.standard_normal((2, 3, H)).astype(np.float32)
    carry, out = cell.apply(variables, jl.LSTMCarry(jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    p = variables["params"]
    ref_h, ref_c = ref_cell(p["w_ih"], p["w_hh"], p["b"], h, c, x)
    assert_close(out, ref_h)
    assert_close(carry.c, ref_c)
    assert cell.num_feature_axes == 1


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cell_in_flax_rnn_equals_lstm(rng, key, reverse):
    rnn = nn.RNN(jl.LSTMCell(H), reverse=reverse, keep_order=True, return_carry=True)
    x = jnp.asarray(_xs(rng))
    variables = _randomize(rnn.init(key, x), rng)
    p = variables["params"]["cell"]
    params = jl.LSTMParams(p["w_ih"], p["w_hh"], p["b"])
    lengths = jnp.asarray(np.array([T, 1, 3], np.int32))

    carry, out = rnn.apply(variables, x, seq_lengths=lengths)
    final, hs = jl.lstm(params, x, seq_lengths=lengths, reverse=reverse)

    for seq, length in enumerate(np.asarray(lengths)):  # Flax leaves garbage in padded steps
        assert_close(out[seq, :length], np.asarray(hs[seq, :length]))
    assert_close(carry.h, np.asarray(final.h))
    assert_close(carry.c, np.asarray(final.c))
    assert_close(hs, ref_lstm(p["w_ih"], p["w_hh"], p["b"], np.asarray(x), seq_lengths=lengths, reverse=reverse)[2])


@pytest.mark.parametrize("options", [{}, {"variant": jl.LSTMVariant(peepholes=True)}], ids=["plain", "variant"])
def test_input_of_another_width_than_the_params_is_refused(key, options):
    module = jl.LSTM(H, **options)
    variables = module.init(key, jnp.ones((2, 5, 3)))
    expected = r"layer_0: the input has 6 features but the params expect input_size=3 .*\(3, 16\)"
    with pytest.raises(ValueError, match=expected):
        module.apply(variables, jnp.ones((2, 5, 6)))
