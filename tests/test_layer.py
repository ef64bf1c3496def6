"""jaxlstm.layer: the one core of the linen and NNX modules — options, the rng rule, the call.

Each rule is checked through both modules, so a copy that drifts in one of
them fails here.
"""

import dataclasses
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import assert_tree_close

import jaxlstm as jl
from jaxlstm.layer import LayerConfig, draws_masks

B, T, D, H, P = 3, 5, 4, 6, 3
LENGTHS = np.array([5, 2, 4], np.int32)


# ----------------------------------------------------------------------------- one declaration of the options


def test_linen_fields_are_the_layer_config():
    """jl.LSTM's dataclass fields are LayerConfig's: same names, order and defaults."""
    linen = [(f.name, f.default) for f in dataclasses.fields(jl.LSTM) if f.name not in ("parent", "name")]
    assert linen == [(f.name, f.default) for f in dataclasses.fields(LayerConfig)]
    assert jl.LSTM(H).config == LayerConfig(H)


def test_nnx_keeps_every_option_as_an_attribute():
    model = jl.nnx.LSTM(D, H, num_layers=2, merge="sum", rngs=nnx.Rngs(0))
    assert model.config == LayerConfig(H, num_layers=2, merge="sum")
    assert (model.num_layers, model.merge, model.variant, model.in_features) == (2, "sum", None, D)


def test_flat_variant_options_are_refused():
    with pytest.raises(TypeError, match=re.escape("jl.LSTM got peepholes=True: the LSTM variant options are one")):
        jl.LSTM(H, peepholes=True)
    with pytest.raises(TypeError, match="jl.LSTM got an unexpected keyword argument 'units'"):
        jl.LSTM(H, units=3)
    with pytest.raises(TypeError, match=re.escape("write variant=jl.LSTMVariant(peepholes=True)")):
        jl.nnx.LSTM(D, H, peepholes=True, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="jl.nnx.LSTM got an unexpected keyword argument 'units'"):
        jl.nnx.LSTM(D, H, units=3, rngs=nnx.Rngs(0))
    for build in (lambda v: jl.LSTM(H, variant=v), lambda v: jl.nnx.LSTM(D, H, variant=v, rngs=nnx.Rngs(0))):
        with pytest.raises(TypeError, match=r"variant must be None or a jaxlstm.LSTMVariant, got dict"):
            build({"peepholes": True})


@pytest.mark.parametrize(
    "options, error, words",
    [
        (dict(merge="max"), ValueError, "merge must be one of"),
        (dict(dropout=1.5), ValueError, "dropout must be in [0, 1)"),
        (dict(unroll=0), ValueError, "unroll must be an int >= 1"),
        (dict(checkpoint_every=0), ValueError, "checkpoint_every must be an int >= 1"),
        (dict(reverse=True, bidirectional=True), ValueError, "reverse=True is for a single direction"),
        (dict(stateful=True, reverse=True), ValueError, "stateful=True streams a sequence forward"),
        (dict(variant=jl.LSTMVariant(proj_size=H)), ValueError, "proj_size must be smaller than features"),
        (dict(gate_fn="sigmoid"), TypeError, "gate_fn must be an elementwise function"),
    ],
)
def test_both_modules_refuse_a_bad_option_with_the_same_message(options, error, words):
    with pytest.raises(error) as linen:
        jl.LSTM(H, **options)
    with pytest.raises(error) as nnx_error:
        jl.nnx.LSTM(D, H, **options, rngs=nnx.Rngs(0))
    assert words in str(linen.value)
    assert str(linen.value) == str(nnx_error.value)


# ----------------------------------------------------------------------------- the same numbers


def test_linen_and_nnx_compute_the_same_variant_layer_with_seq_lengths(rng):
    """One config, the same weights: the same outputs and final carries (zoneout's expectation: deterministic)."""
    variant = jl.LSTMVariant(proj_size=P, peepholes=True, layer_norm=True, cell_clip=1.0, zoneout_c=0.2)
    options = dict(num_layers=2, bidirectional=True, return_carry=True, learn_initial_carry=True, variant=variant)
    x = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    linen = jl.LSTM(H, **options)
    shapes = jax.eval_shape(linen.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape) + 0.5, a.dtype), shapes)
    model = jl.nnx.LSTM(D, H, **options, rngs=nnx.Rngs(1))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param))) == jax.tree.map(jnp.shape, params)
    nnx.update(model, params)
    model.eval()

    lengths = jnp.asarray(LENGTHS)
    linen_carries, linen_out = jax.jit(linen.apply)({"params": params}, x, seq_lengths=lengths)
    nnx_carries, nnx_out = nnx.jit(lambda model, x: model(x, seq_lengths=lengths))(model, x)
    assert linen_out.shape == (B, T, 2 * P) and linen_carries[1][1].c.shape == (B, H)
    assert_tree_close(nnx_out, np.asarray(linen_out), "outputs")
    assert_tree_close(nnx_carries, jax.tree.map(np.asarray, linen_carries), "carries")
    np.testing.assert_array_equal(linen_out[1, 2:, :P], 0.0)  # padded steps of the forward direction


# ----------------------------------------------------------------------------- the one rng rule


@pytest.mark.parametrize(
    "options, deterministic, expected",
    [
        (dict(), False, False),
        (dict(dropout=0.5), False, False),  # one layer: nothing between layers to drop
        (dict(dropout=0.5, num_layers=2), False, True),
        (dict(dropout=0.5, num_layers=2), True, False),
        (dict(variant=jl.LSTMVariant(peepholes=True)), False, False),
        (dict(variant=jl.LSTMVariant(recurrent_dropout=0.3)), False, True),
        (dict(variant=jl.LSTMVariant(zoneout_h=0.1)), False, True),
        (dict(variant=jl.LSTMVariant(zoneout_h=0.1)), True, False),  # zoneout's expectation
    ],
)
def test_draws_masks(options, deterministic, expected):
    assert draws_masks(LayerConfig(H, **options), deterministic) is expected


def test_linen_and_nnx_without_a_dropout_rng_raise_the_same_error():
    variant = jl.LSTMVariant(recurrent_dropout=0.3)
    x = jnp.ones((B, T, D))
    layer = jl.LSTM(H, variant=variant)
    variables = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError) as linen:
        layer.apply(variables, x, deterministic=False)
    model = jl.nnx.LSTM(D, H, variant=variant, rngs=nnx.Rngs(params=0))  # no 'dropout' or 'default' stream
    with pytest.raises(ValueError) as nnx_error:
        model(x)  # NNX modules train by default
    message = str(linen.value)
    assert message == str(nnx_error.value)
    assert "deterministic=False with recurrent_dropout=0.3 draws random masks and needs a 'dropout' rng" in message
    assert "rngs={'dropout': key}" in message and "nnx.Rngs(dropout=seed)" in message
    # deterministic calls need none
    nnx.update(model, variables["params"])
    np.testing.assert_array_equal(model(x, deterministic=True), layer.apply(variables, x))


def test_each_api_keeps_its_frameworks_deterministic_default():
    """The three defaults that jaxlstm.layer's docstring explains, in one table."""
    assert inspect.signature(jl.stacked_lstm).parameters["deterministic"].default is None
    assert inspect.signature(jl.LSTM.__call__).parameters["deterministic"].default is True
    assert inspect.signature(jl.nnx.LSTM.__init__).parameters["deterministic"].default is False
    assert inspect.signature(nnx.Dropout.__init__).parameters["deterministic"].default is False
    assert "Deterministic or random" in jl.layer.__doc__
    for module in (jl.LSTM, jl.nnx.LSTM):
        assert '"Deterministic or random"' in " ".join(module.__doc__.split())


def test_module_calls_document_every_argument():
    """help(jl.LSTM.__call__) and the NNX one describe each argument they take, and what they return."""
    import jaxlstm.nnx

    for call in (jl.LSTM.__call__, jaxlstm.nnx.LSTM.__call__):
        doc = inspect.getdoc(call) or ""
        names = [name for name in inspect.signature(call).parameters if name != "self"]
        missing = [name for name in names if f"\n    {name}:" not in doc]
        assert not missing and "Returns:" in doc, (call.__qualname__, missing)
