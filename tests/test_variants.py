"""The LSTM family (jaxlstm.variants): each variant against the NumPy reference in tests/reference_variants.py.

Sizes are tiny and distinct (a swapped axis cannot pass); each numerical test
compiles one function.
"""

import functools
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import assert_close, ref_lstm
from reference_variants import random_variant_weights, ref_variant_lstm, ref_variant_stack

import jaxlstm as jl
from jaxlstm.variants import LSTMVariant, VariantParams, draw_masks

B, T, D, H, P = 3, 6, 4, 5, 2
LENGTHS = np.array([6, 2, 4])
ROOT = pathlib.Path(__file__).resolve().parents[1]


def params_of(weights) -> VariantParams:
    return VariantParams(**{name: jnp.asarray(value) for name, value in weights.items()})


def inputs(rng, batch=B, time=T, features=D):
    return rng.standard_normal((batch, time, features)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("variant", "reverse"))
def run(params, xs, seq_lengths=None, key=None, *, variant, reverse=False):
    """``jl.lstm_variant`` under one ``jit``: one compilation per test."""
    return jl.lstm_variant(params, xs, variant=variant, seq_lengths=seq_lengths, reverse=reverse, dropout_key=key)


def assert_matches_reference(result, expected):
    (final, hs), (h_ref, c_ref, hs_ref) = result, expected
    assert hs.shape == hs_ref.shape and final.h.shape == h_ref.shape and final.c.shape == c_ref.shape
    assert_close(hs, hs_ref, "hs")
    assert_close(final.h, h_ref, "final h")
    assert_close(final.c, c_ref, "final c")


# ----------------------------------------------------------------------------- each variant vs the reference

CASES = {
    "projection": (dict(proj_size=P), dict(seq_lengths=True)),
    "peepholes": (dict(peepholes=True), dict(reverse=True, seq_lengths=True)),
    "layer_norm": (dict(layer_norm=True), dict(seq_lengths=True)),
    "cifg": (dict(cifg=True), dict(reverse=True)),
    "forget_bias": (dict(forget_bias=1.5), dict(seq_lengths=True)),
    "cell_clip": (dict(cell_clip=0.25), dict()),
    "zoneout_eval": (dict(zoneout_h=0.3, zoneout_c=0.2), dict(reverse=True, seq_lengths=True)),
    "all": (
        dict(proj_size=P, peepholes=True, layer_norm=True, cifg=True, cell_clip=0.5, zoneout_h=0.1, zoneout_c=0.2),
        dict(reverse=True, seq_lengths=True),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_variant_matches_reference(rng, name):
    options, call = CASES[name]
    variant = LSTMVariant(**options)
    weights = random_variant_weights(rng, D, H, options)
    xs = 2.0 * inputs(rng)  # large enough that cell_clip bites
    lengths = LENGTHS if call.get("seq_lengths") else None
    reverse = call.get("reverse", False)
    trace = []
    expected = ref_variant_lstm(weights, xs, options, seq_lengths=lengths, reverse=reverse, trace=trace)
    if "cell_clip" in options:
        assert np.abs(np.stack(trace)).max() > options["cell_clip"]  # the clip is exercised
    result = run(
        params_of(weights),
        jnp.asarray(xs),
        None if lengths is None else jnp.asarray(lengths),
        variant=variant,
        reverse=reverse,
    )
    assert_matches_reference(result, expected)
    if "proj_size" in options:
        assert result[1].shape == (B, T, P) and result[0].c.shape == (B, H)


@pytest.mark.parametrize("reverse", [False, True])
def test_mask_resets_and_previous_output_match_reference(rng, reverse):
    options = dict(proj_size=P, peepholes=True, zoneout_c=0.3)
    weights = random_variant_weights(rng, D, H, options)
    xs = inputs(rng)
    mask = rng.random((B, T)) > 0.25
    resets = np.zeros((B, T), bool)
    resets[0, 3] = resets[1, 1] = resets[2, 0] = resets[2, 4] = True
    h0 = rng.standard_normal((B, P)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    expected = ref_variant_lstm(
        weights,
        xs,
        options,
        h0,
        c0,
        seq_lengths=LENGTHS,
        mask=mask,
        resets=resets,
        reverse=reverse,
        masked_output="previous",
    )
    result = jl.lstm_variant(
        params_of(weights),
        jnp.asarray(xs),
        jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)),
        variant=LSTMVariant(**options),
        seq_lengths=jnp.asarray(LENGTHS),
        mask=jnp.asarray(mask),
        resets=jnp.asarray(resets),
        reverse=reverse,
        masked_output="previous",
    )
    assert_matches_reference(result, expected)


def test_cell_is_one_step_of_the_loop(rng):
    options = dict(proj_size=P, layer_norm=True, peepholes=True, zoneout_h=0.5)
    variant = LSTMVariant(**options)
    weights = random_variant_weights(rng, D, H, options)
    x = rng.standard_normal((D,)).astype(np.float32)  # one unbatched step
    h0, c0 = rng.standard_normal((P,)).astype(np.float32), rng.standard_normal((H,)).astype(np.float32)
    carry, h = jl.lstm_variant_cell(
        params_of(weights), jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)), jnp.asarray(x), variant=variant
    )
    h_ref, c_ref = ref_variant_lstm(weights, x[None, None], options, h0[None], c0[None])[:2]
    assert h is carry.h and h.shape == (P,) and carry.c.shape == (H,)
    assert_close(h, h_ref[0])
    assert_close(carry.c, c_ref[0])


def test_plain_calls_take_the_fast_path_bitwise(rng, key):
    """Options that leave a plain LSTM (forget_bias, dropout when deterministic) run jaxlstm.lstm itself."""
    weights = random_variant_weights(rng, D, H, {})
    xs = jnp.asarray(inputs(rng))
    params = params_of(weights)
    b = params.b.at[H : 2 * H].add(1.5)
    _, expected = jl.lstm(jl.LSTMParams(params.w_ih, params.w_hh, b), xs)
    variant = LSTMVariant(forget_bias=1.5, input_dropout=0.5, recurrent_dropout=0.5)
    _, hs = jl.lstm_variant(params, xs, variant=variant, dropout_key=key, deterministic=True)
    np.testing.assert_array_equal(hs, expected)


# ----------------------------------------------------------------------------- dropout and zoneout


def test_training_masks_are_the_ones_the_reference_replays(rng, key):
    options = dict(proj_size=P, input_dropout=0.3, recurrent_dropout=0.4, zoneout_h=0.3, zoneout_c=0.2)
    variant = LSTMVariant(**options)
    weights = random_variant_weights(rng, D, H, options)
    xs = inputs(rng)
    masks = draw_masks(key, variant, (B,), T, D, H)
    assert masks.input.shape == (B, D) and masks.recurrent.shape == (B, P)  # one mask per sequence, no time axis
    assert masks.zoneout_h.shape == (B, T, P) and masks.zoneout_c.shape == (B, T, H)  # a new mask every step
    expected = ref_variant_lstm(
        weights,
        xs,
        options,
        seq_lengths=LENGTHS,
        training=True,
        masks={k: np.asarray(v) for k, v in masks._asdict().items()},
    )
    result = run(params_of(weights), jnp.asarray(xs), jnp.asarray(LENGTHS), key=key, variant=variant)
    assert_matches_reference(result, expected)


def test_input_dropout_mask_is_constant_over_time(rng, key):
    """Which inputs reach the output: d sum(hs) / d xs[b, t, d] is zero for every t exactly where the mask drops d."""
    rate, batch, features = 0.5, 8, 6
    variant = LSTMVariant(input_dropout=rate)
    params = jl.init_variant_params(jax.random.key(1), features, H, variant)
    xs = jnp.asarray(inputs(rng, batch, T, features))
    grads = jax.jit(jax.grad(lambda xs: jnp.sum(jl.lstm_variant(params, xs, variant=variant, dropout_key=key)[1])))(xs)
    reaches = np.asarray(grads != 0)  # (batch, T, features)
    assert (reaches == reaches[:, :1]).all()  # the same inputs at every step
    np.testing.assert_array_equal(reaches[:, 0], draw_masks(key, variant, (batch,), T, features, H).input)
    assert 0 < reaches[:, 0].sum() < reaches[:, 0].size


@pytest.mark.parametrize("name", ["input_dropout", "recurrent_dropout", "zoneout_h", "zoneout_c"])
def test_rates_are_statistically_right(key, name):
    rate, batch, time = 0.3, 400, 25
    variant = LSTMVariant(**{name: rate})
    masks = draw_masks(key, variant, (batch,), time, 50, 50)
    drawn = np.asarray(getattr(masks, name.replace("_dropout", "")))
    n = drawn.size
    hit = (1.0 - drawn.mean()) if "dropout" in name else drawn.mean()  # dropped (dropout) / kept (zoneout)
    assert abs(hit - rate) < 5 * math.sqrt(rate * (1 - rate) / n), (name, hit)
    if "zoneout" in name:  # a new, independent draw every step
        same = (drawn[:, 1:] == drawn[:, :-1]).mean()
        assert abs(same - (rate**2 + (1 - rate) ** 2)) < 0.02


def test_zoneout_keeps_previous_values_where_flagged(rng, key):
    variant = LSTMVariant(zoneout_h=0.5)
    params = jl.init_variant_params(jax.random.key(2), D, H, variant)
    xs = jnp.asarray(inputs(rng))
    _, hs = jl.lstm_variant(params, xs, variant=variant, dropout_key=key)
    flags = np.asarray(draw_masks(key, variant, (B,), T, D, H).zoneout_h)
    hs = np.asarray(hs)
    previous = np.concatenate([np.zeros((B, 1, H), np.float32), hs[:, :-1]], axis=1)
    assert (hs[flags] == previous[flags]).all()
    assert (hs[~flags] != previous[~flags]).all()


def test_training_needs_a_key_and_deterministic_turns_draws_off(rng):
    variant = LSTMVariant(recurrent_dropout=0.2)
    params = jl.init_variant_params(jax.random.key(0), D, H, variant)
    with pytest.raises(ValueError, match=r"deterministic=False with \{'recurrent_dropout': 0.2\} needs a dropout_key"):
        jl.lstm_variant(params, jnp.ones((B, T, D)), variant=variant, deterministic=False)
    with pytest.raises(ValueError, match="deterministic=False needs a dropout_key"):
        jl.stacked_lstm(((params,),), jnp.ones((B, T, D)), variant=variant, deterministic=False)


# ----------------------------------------------------------------------------- modules and the core

MODULE_OPTIONS = dict(proj_size=P, peepholes=True, layer_norm=True, cell_clip=1.0, zoneout_c=0.2)


def _random_like(tree, seed=3):
    """Every parameter random (gains around 1), so no term of the variant is trivially zero or one."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([jnp.asarray(0.5 * rng.standard_normal(a.shape) + 0.5, a.dtype) for a in leaves])


def _numpy_stack(params, num_layers=2, num_directions=2):
    """A module's ``params[layer_*]`` as the reference's ``[layer][direction] -> {name: array}``."""
    return [
        [{k: np.asarray(v) for k, v in params[jl.linen.cell_name(layer, d)].items()} for d in range(num_directions)]
        for layer in range(num_layers)
    ]


def test_linen_module_matches_reference(rng):
    layer = jl.LSTM(H, num_layers=2, bidirectional=True, return_carry=True, variant=LSTMVariant(**MODULE_OPTIONS))
    xs = inputs(rng)
    variables = _random_like(jax.eval_shape(layer.init, jax.random.key(0), jnp.asarray(xs)))  # no compile
    params = variables["params"]
    assert sorted(params["layer_1_reverse"]) == sorted(VariantParams._fields)
    assert params["layer_1"]["w_ih"].shape == (2 * P, 4 * H) and params["layer_0"]["w_hr"].shape == (H, P)
    carries, hs = jax.jit(layer.apply)(variables, jnp.asarray(xs), seq_lengths=jnp.asarray(LENGTHS))
    assert hs.shape == (B, T, 2 * P) and carries[1][1].h.shape == (B, P) and carries[1][1].c.shape == (B, H)

    finals, expected = ref_variant_stack(_numpy_stack(params), xs, MODULE_OPTIONS, seq_lengths=LENGTHS)
    assert_close(hs, expected)
    for layer_index in (0, 1):
        for direction in (0, 1):
            assert_close(carries[layer_index][direction].h, finals[layer_index][direction][0])
            assert_close(carries[layer_index][direction].c, finals[layer_index][direction][1])


def test_nnx_module_matches_reference_and_linen_param_tree(rng):
    """The NNX twin: the same parameter tree as linen's and explain's, the same numbers as the reference."""
    from flax import nnx

    variant = LSTMVariant(**MODULE_OPTIONS)
    model = jl.nnx.LSTM(D, H, num_layers=2, bidirectional=True, variant=variant, rngs=nnx.Rngs(0))
    model.eval()  # deterministic: zoneout's expectation
    nnx.update(model, _random_like(nnx.state(model, nnx.Param)))
    xs = inputs(rng)
    stack = model.stack_params()
    assert isinstance(stack[0][0], VariantParams) and stack[0][0].w_hh.shape == (P, 4 * H)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    _, expected = ref_variant_stack(_numpy_stack(params), xs, MODULE_OPTIONS)
    assert_close(nnx.jit(lambda model, xs: model(xs))(model, jnp.asarray(xs)), expected)

    linen_shapes = jax.eval_shape(
        jl.LSTM(H, num_layers=2, bidirectional=True, variant=variant).init, jax.random.key(0), jnp.asarray(xs)
    )["params"]
    nnx_shapes = jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert nnx_shapes == jax.tree.map(lambda a: tuple(a.shape), dict(linen_shapes))
    explained = jl.explain(B, T, D, H, num_layers=2, bidirectional=True, proj_size=P, peepholes=True, layer_norm=True)
    assert nnx_shapes == explained.param_shapes
    assert sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param))) == explained.total_params


def test_modules_train_with_dropout_and_zoneout(rng):
    from flax import nnx

    variant = LSTMVariant(proj_size=P, input_dropout=0.3, recurrent_dropout=0.3, zoneout_h=0.2)
    xs = jnp.asarray(inputs(rng))
    layer = jl.LSTM(H, variant=variant)
    variables = _random_like(jax.eval_shape(layer.init, jax.random.key(0), xs))
    apply = jax.jit(layer.apply, static_argnames="deterministic")
    eval_out = apply(variables, xs)
    train = [apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(s)}) for s in (1, 1, 2)]
    np.testing.assert_array_equal(train[0], train[1])  # the rng decides the masks
    assert not np.allclose(train[0], train[2]) and not np.allclose(train[0], eval_out)
    # eval is deterministic and equals the core's deterministic call (zoneout's expectation)
    params = params_of({k: np.asarray(v) for k, v in variables["params"]["layer_0"].items()})
    _, core = jl.lstm_variant(params, xs, variant=layer.variant)
    assert_close(eval_out, np.asarray(core, np.float64))

    model = jl.nnx.LSTM(D, H, variant=variant, rngs=nnx.Rngs(0))  # NNX modules start in training mode
    call = nnx.jit(lambda model, xs: model(xs))
    first, second = call(model, xs), call(model, xs)
    assert not np.allclose(first, second)  # a new draw per call, from the module's own rng stream
    model.eval()
    np.testing.assert_array_equal(call(model, xs), call(model, xs))


def test_plain_options_keep_the_plain_modules():
    from flax import nnx

    x = jnp.ones((B, T, D))
    for variant in (None, LSTMVariant(), LSTMVariant(forget_bias=0.0, proj_size=None)):
        tree = jax.eval_shape(jl.LSTM(H, variant=variant).init, jax.random.key(0), x)
        assert sorted(tree["params"]["layer_0"]) == ["b", "w_hh", "w_ih"]
        assert type(jl.nnx.LSTM(D, H, variant=variant, rngs=nnx.Rngs(0)).layer_0) is jl.nnx.LSTMCell


def test_gradients_are_right_in_training(rng, key):
    """Every option at once, masks drawn (a fixed key makes them constants): JAX's gradient = finite differences."""
    options = dict(
        proj_size=P,
        peepholes=True,
        layer_norm=True,
        cell_clip=3.0,
        input_dropout=0.2,
        recurrent_dropout=0.2,
        zoneout_h=0.2,
        zoneout_c=0.3,
    )
    variant = LSTMVariant(**options)
    with jax.enable_x64(True):
        params = params_of(random_variant_weights(rng, D, H, options, np.float64))
        xs = jnp.asarray(rng.standard_normal((2, 4, D)))
        lengths = jnp.asarray([4, 2])

        @jax.jit
        def loss(params, xs):
            _, hs = jl.lstm_variant(params, xs, variant=variant, seq_lengths=lengths, reverse=True, dropout_key=key)
            return jnp.sum(hs**2)

        check_grads(loss, (params, xs), order=1, modes=["rev"], eps=1e-6)  # a curved loss: small steps


def test_cifg_ignores_the_forget_columns(rng):
    variant = LSTMVariant(cifg=True)
    params = params_of(random_variant_weights(rng, D, H, {}))
    xs = jnp.asarray(inputs(rng))
    loss = jax.jit(lambda p: jnp.sum(jl.lstm_variant(p, xs, variant=variant)[1]))
    grads = jax.grad(loss)(params)
    for g in (grads.w_ih, grads.w_hh, grads.b):
        assert not np.asarray(g)[..., H : 2 * H].any() and np.asarray(g)[..., :H].any()


def test_projection_onto_the_first_units_is_a_plain_lstm_reading_only_those(rng):
    """With w_hr = [I_P; 0] h is the plain cell's first P units; a plain LSTM whose recurrent kernel has zero rows
    for the other units computes the same first P units (checked against tests/reference.py's plain loop)."""
    weights = random_variant_weights(rng, D, H, dict(proj_size=P))
    weights["w_hr"] = np.eye(H, P, dtype=np.float32)
    padded_w_hh = np.zeros((H, 4 * H), np.float32)
    padded_w_hh[:P] = weights["w_hh"]
    xs = inputs(rng)
    _, hs = jl.lstm_variant(params_of(weights), jnp.asarray(xs), variant=LSTMVariant(proj_size=P))
    # the plain LSTM whose recurrent kernel reads only its first P units computes the same first P units
    _, _, plain = ref_lstm(weights["w_ih"], padded_w_hh, weights["b"], xs)
    assert_close(hs, plain[..., :P])


# ----------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    "options, error, words",
    [
        (dict(proj_size=0), ValueError, "proj_size must be None (no projection) or an int >= 1, got 0"),
        (dict(proj_size=-2), ValueError, "proj_size must be None (no projection) or an int >= 1, got -2"),
        (dict(proj_size=2.5), TypeError, "proj_size must be None or an int >= 1, got float"),
        (dict(proj_size=True), TypeError, "proj_size must be None or an int >= 1, got the bool"),
        (dict(cell_clip=-1.0), ValueError, "cell_clip must be None (no clipping) or > 0, got -1.0"),
        (dict(cell_clip=0), ValueError, "cell_clip must be None (no clipping) or > 0, got 0"),
        (dict(cell_clip=float("inf")), ValueError, "cell_clip must be finite"),
        (dict(input_dropout=1.0), ValueError, "input_dropout must be in [0, 1), got 1.0"),
        (dict(recurrent_dropout=-0.1), ValueError, "recurrent_dropout must be in [0, 1), got -0.1"),
        (dict(zoneout_h=1.5), ValueError, "zoneout_h must be in [0, 1), got 1.5"),
        (dict(zoneout_c="0.1"), TypeError, "zoneout_c must be a float in [0, 1), got str"),
        (dict(peepholes="yes"), TypeError, "peepholes must be True or False, got str"),
        (dict(forget_bias=None), TypeError, "forget_bias must be a number, got NoneType"),
        (dict(cifg=True, forget_bias=1.0), ValueError, "forget_bias=1.0 has no effect with cifg=True"),
        (dict(layer_norm_epsilon=0.0), ValueError, "layer_norm_epsilon must be > 0"),
    ],
)
def test_bad_options_give_clear_errors(options, error, words):
    with pytest.raises(error) as info:
        LSTMVariant(**options)
    assert words in str(info.value)
    assert "; see docs/variants.md#" in str(info.value)


@pytest.mark.parametrize("proj_size", [H, H + 3])
def test_projection_must_be_narrower_than_the_state(proj_size):
    from flax import nnx

    message = f"proj_size must be smaller than features: got proj_size={proj_size}, features={H}"
    with pytest.raises(ValueError, match=re.escape(message)):
        jl.LSTM(H, variant=LSTMVariant(proj_size=proj_size)).init(jax.random.key(0), jnp.ones((B, T, D)))
    with pytest.raises(ValueError, match=re.escape(message)):
        jl.nnx.LSTM(D, H, variant=LSTMVariant(proj_size=proj_size), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        jl.init_variant_params(jax.random.key(0), D, H, LSTMVariant(proj_size=proj_size))
    with pytest.raises(ValueError, match="proj_size must be smaller than units"):
        jl.explain(B, T, D, H, proj_size=proj_size)


def test_params_and_carry_that_do_not_fit_the_variant(rng):
    weights = random_variant_weights(rng, D, H, dict(proj_size=P))
    params, xs = params_of(weights), jnp.ones((B, T, D))
    with pytest.raises(ValueError, match=r"variant.peepholes needs params.w_peep of shape \(3, 5\)"):
        jl.lstm_variant(params, xs, variant=LSTMVariant(proj_size=P, peepholes=True))
    with pytest.raises(ValueError, match="params.w_hr is given but variant.proj_size is off"):
        jl.lstm_variant(params._replace(w_hh=jnp.zeros((H, 4 * H))), xs, variant=LSTMVariant())
    with pytest.raises(ValueError, match=r"params.w_hh must have shape \(R, 4H\) = \(3, 20\)"):
        jl.lstm_variant(params, xs, variant=LSTMVariant(proj_size=P + 1))
    bad_carry = jl.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H)))
    with pytest.raises(
        ValueError, match=r"carry.h must have shape \(\*batch, proj_size\) = \(3, 2\).*c \(\*batch, H\)"
    ):
        jl.lstm_variant(params, xs, bad_carry, variant=LSTMVariant(proj_size=P))
    with pytest.raises(TypeError, match="variant must be (None or )?a jaxlstm.LSTMVariant"):
        jl.lstm_variant(params, xs, variant={"proj_size": P})
    with pytest.raises(ValueError, match="xs has 3 features but params expect input_size=4"):
        jl.lstm_variant(params, jnp.ones((B, T, 3)), variant=LSTMVariant(proj_size=P))


# ----------------------------------------------------------------------------- explain, summary, CLI, docs


def test_explain_and_summary_show_the_projection(capsys):
    from jaxlstm.__main__ import main

    e = jl.explain(4, 10, 8, 32, num_layers=2, bidirectional=True, proj_size=16, peepholes=True)
    assert (e.output_shape, e.h_shape, e.c_shape, e.gates_shape) == ((4, 10, 32), (4, 16), (4, 32), (4, 128))
    assert e.carry_shapes[1][1] == jl.LSTMCarry((4, 16), (4, 32))
    assert e.param_shapes["layer_1"] == {
        "w_ih": (32, 128),
        "w_hh": (16, 128),
        "b": (128,),
        "w_hr": (32, 16),
        "w_peep": (3, 32),
    }
    assert e.cells[0].formula == "4·(32·(8+16)+32) + 32·16 + 3·32 = 3,808"
    text = " ".join(str(e).split())
    for phrase in (
        "P = proj_size = 16",
        "h = m @ w_hr (B, P) = (4, 16)",
        "(B, T, 2P) = (4, 10, 32)",
        "w_hr (H, P) = (32, 16) 512",
        "w_hh (P, 4H) = (16, 128) 2,048",
    ):
        assert phrase in text, phrase

    variables = jax.eval_shape(
        jl.LSTM(32, num_layers=2, bidirectional=True, variant=LSTMVariant(proj_size=16, peepholes=True)).init,
        jax.random.key(0),
        jnp.ones((4, 10, 8)),
    )
    assert sum(a.size for a in jax.tree.leaves(variables)) == e.total_params

    s = jl.summary(jl.LSTM(32, variant=LSTMVariant(proj_size=16, layer_norm=True)), jnp.ones((4, 10, 8)))
    assert s.rows[0].carry_shapes == ((jl.LSTMCarry((4, 16), (4, 32)),),)
    assert s.rows[0].output_shape == (4, 10, 16)
    assert s.total_params == jl.explain(4, 10, 8, 32, proj_size=16, layer_norm=True).total_params
    assert "h (4, 16), c (4, 32)" in str(s)

    assert main(["explain", "--batch", "4", "--time", "10", "--input", "8", "--units", "32", "--proj-size", "16"]) == 0
    assert "jl.LSTM(32, variant=jl.LSTMVariant(proj_size=16))" in capsys.readouterr().out
    assert main(["explain", "--batch", "4", "--time", "10", "--input", "8", "--units", "32", "--proj-size", "32"]) == 2
    assert "--proj-size must be smaller than units" in capsys.readouterr().err


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_pointer_to_the_variants_guide_has_a_section():
    guide = (ROOT / "docs" / "variants.md").read_text(encoding="utf-8")
    anchors = {_github_anchor(line.lstrip("#")) for line in guide.splitlines() if re.match(r"#{1,6} ", line)}
    pointed = set()
    for path in (ROOT / "jaxlstm").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        pointed |= set(re.findall(r"variants\.md#([\w-]+)", source))
        if path.name == "variants.py":
            pointed |= set(re.findall(r'_pointer\(\s*"([^"]+)"', source))
    pointed |= set(jl.variants.SECTIONS.values())
    assert {"projection", "zoneout", "parameters", "options"} <= pointed
    assert not pointed - anchors, f"pointers to sections docs/variants.md lacks: {sorted(pointed - anchors)}"


def test_flax_scheme_projection_is_lecun_normal_as_flax_dense():
    """init_scheme="flax": w_hr as Flax's Dense kernel, variance 1/fan_in (and not Keras' glorot, 2/(H+P))."""
    params = jl.init_variant_params(jax.random.key(0), 8, 256, jl.LSTMVariant(proj_size=64), scheme="flax")
    variance = float(np.var(np.asarray(params.w_hr))) * 256
    assert abs(variance - 1.0) < 0.05, variance  # glorot would give 2 * 256 / 320 = 1.6
