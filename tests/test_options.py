"""The options' records (``jaxlstm.options``): each option checked once, where it is declared; unknown
names refused with the valid ones listed; and the rules written once — the training rule
(``deterministic`` as a NumPy bool), reverse with two directions, the variant type check — giving the
same answer through every API that takes them."""

from __future__ import annotations

import dataclasses

import cudnn_cpu
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl
from jaxlstm.layer import LayerConfig, LayerFields, draws_masks
from jaxlstm.options import LSTMOptions, StackOptions, build, option_names
from jaxlstm.variants import is_training

B, T, D, H = 2, 3, 2, 3
KEY = jax.random.key(0)
XS = jax.random.normal(jax.random.key(1), (B, T, D))
PARAMS = jl.init_params(jax.random.key(2), D, H)
STACK = jl.init_stack(jax.random.key(3), D, H, num_layers=2)

# (option, a bad value, the error, what its message says): every option of StackOptions that is checked
BAD = [
    ("masked_output", "last", ValueError, r"masked_output must be one of 'zeros', 'previous', got 'last'"),
    ("gradient", "manual", ValueError, r"gradient must be one of 'fused', 'autodiff'"),
    ("reverse", "no", TypeError, r"reverse must be True or False, got"),
    ("unroll", 0, ValueError, r"unroll must be"),
    ("checkpoint_every", 0, ValueError, r"checkpoint_every must be"),
    ("gate_fn", "sigmoid", TypeError, r"gate_fn must be"),
    ("activation_fn", 3, TypeError, r"activation_fn must be"),
    ("variant", {"proj_size": 2}, TypeError, r"variant must be None or a jaxlstm.LSTMVariant, got dict"),
    ("dropout_key", "key", TypeError, r"dropout_key must be"),
    ("deterministic", "yes", TypeError, r"deterministic must be None, True or False, got"),
    ("backend", "gpu", ValueError, r"backend must be one of 'auto', 'xla', 'cudnn', got 'gpu'"),
    ("cudnn_precision", "bf16", ValueError, r"cudnn_precision must be one of 'float32', 'tf32', got 'bf16'"),
    ("merge", "max", ValueError, r"merge must be one of 'concat', 'sum', 'mul', 'ave', got 'max'"),
    ("dropout", 1.5, ValueError, r"dropout must be"),
]


def test_every_checked_option_is_in_the_table():
    """The table covers every option of the stack but the arrays (checked against xs by the call)."""
    arrays = {"seq_lengths", "mask", "resets", "reset_carries"}
    assert {name for name, *_ in BAD} == set(option_names(StackOptions)) - arrays


@pytest.mark.parametrize("name, value, error, match", BAD)
def test_each_option_is_checked_by_its_record(name, value, error, match):
    with pytest.raises(error, match=match):
        StackOptions(**{name: value})
    if name in option_names(LSTMOptions):
        with pytest.raises(error, match=match):
            LSTMOptions(**{name: value})


@pytest.mark.parametrize("name, value, error, match", [row for row in BAD if row[0] in ("backend", "merge", "reverse")])
def test_the_apis_give_the_records_error(name, value, error, match):
    """The stack, the backend query and the layer's config raise the record's error (nothing traced)."""
    with pytest.raises(error, match=match):
        jl.stacked_lstm(STACK, XS, **{name: value})
    with pytest.raises(error, match=match):
        jl.backend_for(STACK, XS, **{name: value})
    with pytest.raises(error, match=match):
        LayerConfig(H, **{name: value})


def test_records_are_frozen_and_normalize_flags():
    options = StackOptions(reverse=np.True_, deterministic=np.False_)
    assert options.reverse is True and options.deterministic is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.merge = "sum"  # type: ignore[misc]
    config = LayerConfig(H, reverse=np.True_, bidirectional=np.False_)
    assert config.reverse is True and config.bidirectional is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.features = 4  # type: ignore[misc]


def test_the_layer_declares_each_option_once():
    """jl.LSTM's fields are LayerFields', inherited, and the layer's stack options default as StackOptions."""
    assert [f.name for f in dataclasses.fields(jl.LSTM) if f.name not in ("parent", "name")] == [
        f.name for f in dataclasses.fields(LayerFields)
    ]
    assert "features" not in jl.LSTM.__dict__.get("__annotations__", {})
    defaults = StackOptions()
    for field in dataclasses.fields(LayerFields):
        if field.name in option_names(StackOptions):
            assert field.default is getattr(defaults, field.name) or field.default == getattr(defaults, field.name)


def test_every_option_is_declared_in_one_class_only():
    """Across the records, the layer's fields and the modules, no option name is annotated (declared) in two
    classes: each is written once and inherited everywhere else (REFUSED is a class constant, not an option)."""
    from jaxlstm import engine, layer, options

    classes = [
        engine.SequenceData, engine.SequenceSettings, engine.SequenceOptions, options.DrawOptions,
        options.LSTMSettings, options.StackSettings, options.LSTMOptions, options.RNNStackOptions,
        options.StackOptions, layer.RecurrentLayerFields, layer.LayerFields, layer.LayerConfig,
        jl.LSTM, jl.GRU,
    ]  # fmt: skip  (the one-step cells jl.LSTMCell / jl.GRUCell declare flax.linen's cell fields, as Flax's)
    declared: dict[str, list[str]] = {}
    for cls in classes:
        for name in vars(cls).get("__annotations__", {}):
            if name not in ("REFUSED", "parent", "name"):
                declared.setdefault(name, []).append(cls.__name__)
    assert {name: where for name, where in declared.items() if len(where) > 1} == {}
    # and every option a layer shares with the stack is the stack's own, inherited from its settings
    stack_settings = {f.name for f in dataclasses.fields(options.StackSettings)}
    stack_settings |= {f.name for f in dataclasses.fields(engine.SequenceSettings)}
    assert stack_settings <= {f.name for f in dataclasses.fields(jl.GRU)}
    assert {f.name for f in dataclasses.fields(options.LSTMSettings)} <= {f.name for f in dataclasses.fields(jl.LSTM)}


def test_module_calls_take_the_sequence_arrays_from_the_record():
    """The four layer modules' calls list seq_lengths, mask and resets in their signatures (generated from
    SequenceData, not annotated again), document each, and refuse an unknown one with the valid names."""
    import inspect

    import jaxlstm.nnx
    from jaxlstm.options import call_data_names

    assert call_data_names() == ("seq_lengths", "mask", "resets")
    for call in (jl.LSTM.__call__, jaxlstm.nnx.LSTM.__call__, jl.GRU.__call__, jaxlstm.nnx.GRU.__call__):
        parameters = inspect.signature(call).parameters
        assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in call_data_names())
        assert not set(call_data_names()) & set(inspect.unwrap(call).__annotations__), call.__qualname__
    doc = inspect.getdoc(jl.LSTM.__call__) or ""
    assert "\n    resets: ``(*batch, T)`` bools marking the first step" in doc
    layer = jl.LSTM(3)
    variables = layer.init(KEY, XS)
    with pytest.raises(TypeError, match="jl.LSTM got an unexpected keyword argument 'seq_length'; its sequence "
                       "arguments are seq_lengths, mask, resets"):
        layer.apply(variables, XS, seq_length=jnp.array([3, 1]))
    hs = layer.apply(variables, XS, seq_lengths=jnp.array([3, 1]))  # the lengths reach the engine
    full = layer.apply(variables, XS)
    np.testing.assert_allclose(hs[0], full[0], rtol=1e-6, atol=1e-7)  # the masked loop rounds differently
    np.testing.assert_allclose(hs[1, 0], full[1, 0], rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(hs[1, 1:]) == 0) and np.any(np.asarray(full[1, 1:]) != 0)


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    "call, where",
    [
        (lambda **kw: jl.stacked_lstm(STACK, XS, **kw), "jaxlstm.stacked_lstm"),
        (lambda **kw: jl.backend_for(PARAMS, XS, **kw), "jaxlstm.backend_for"),
        (lambda **kw: build(LSTMOptions, kw, "here"), "here"),
    ],
)
def test_an_unknown_option_is_named_and_the_valid_ones_listed(call, where):
    with pytest.raises(TypeError) as error:
        call(seq_length=jnp.array([3, 1]))
    message = str(error.value)
    assert message.startswith(f"{where} got an unexpected keyword argument 'seq_length'")
    assert "its options are seq_lengths, mask, resets" in message and "cudnn_precision" in message


def test_the_stack_refuses_reset_carry_and_points_to_reset_carries():
    with pytest.raises(TypeError, match=r"jaxlstm.stacked_lstm got reset_carry=\.\.\.: .*reset_carries"):
        jl.stacked_lstm(STACK, XS, reset_carry=jl.zeros_carry(H, (B,)))


def test_a_flat_variant_option_points_to_variant():
    with pytest.raises(TypeError, match=r"write variant=jl.LSTMVariant\(peepholes=True\)"):
        jl.stacked_lstm(STACK, XS, peepholes=True)
    with pytest.raises(TypeError, match=r"jl.LSTM got an unexpected keyword argument 'units'.*num_layers"):
        jl.LSTM(H, units=4)  # type: ignore[call-arg]


# ----------------------------------------------------------------------------- the training rule, once


def test_is_training_against_its_table():
    """deterministic decides when given (a NumPy bool or 0-d bool array as the bool it holds), else the key."""
    table = [  # (key given, deterministic, training)
        (True, None, True), (False, None, False),
        (True, True, False), (True, np.True_, False), (True, np.array(True), False), (True, jnp.array(True), False),
        (True, False, True), (True, np.False_, True), (False, np.False_, True),
    ]  # fmt: skip
    for key_given, deterministic, expected in table:
        assert is_training(KEY if key_given else None, deterministic) is expected, (key_given, deterministic)
    with pytest.raises(TypeError, match="deterministic must be None, True or False"):
        is_training(KEY, 1)


REGULARIZED = jl.LSTMVariant(recurrent_dropout=0.5, zoneout_h=0.3)


def _differs(a, b) -> bool:
    return not np.allclose(np.asarray(a), np.asarray(b))


def test_np_true_is_true_in_lstm():
    params = jl.init_variant_params(jax.random.key(4), D, H, REGULARIZED)
    inference = jl.lstm(params, XS, variant=REGULARIZED)[1]  # no key: deterministic
    true_ = jl.lstm(params, XS, variant=REGULARIZED, dropout_key=KEY, deterministic=np.True_)[1]
    false_ = jl.lstm(params, XS, variant=REGULARIZED, dropout_key=KEY, deterministic=np.False_)[1]
    np.testing.assert_array_equal(true_, inference)
    assert _differs(false_, inference)  # the masks were drawn: the comparison above can fail


def test_np_true_is_true_in_stacked_lstm():
    inference = jl.stacked_lstm(STACK, XS, dropout=0.5)[1]
    true_ = jl.stacked_lstm(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=np.True_)[1]
    false_ = jl.stacked_lstm(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=np.False_)[1]
    np.testing.assert_array_equal(true_, inference)
    assert _differs(false_, inference)


@pytest.mark.slow
def test_np_true_is_true_in_the_flax_modules():
    from flax import nnx

    layer = jl.LSTM(H, num_layers=2, dropout=0.5)
    variables = layer.init(KEY, XS)
    inference = layer.apply(variables, XS)
    rngs = {"dropout": jax.random.key(5)}
    np.testing.assert_array_equal(layer.apply(variables, XS, deterministic=np.True_, rngs=rngs), inference)
    assert _differs(layer.apply(variables, XS, deterministic=np.False_, rngs=rngs), inference)
    config = layer.config
    assert draws_masks(config, np.True_) is False and draws_masks(config, np.False_) is True

    model = jl.nnx.LSTM(D, H, num_layers=2, dropout=0.5, deterministic=np.True_, rngs=nnx.Rngs(0, dropout=1))
    assert model.deterministic is True
    np.testing.assert_array_equal(model(XS), model(XS, deterministic=True))


def test_np_true_is_true_in_backend_for(monkeypatch):
    """With dropout between layers, a deterministic call can run on cuDNN: np.True_ too (it used to fall
    back as if training)."""
    cudnn_cpu.simulated_gpu(monkeypatch)
    training = jl.backend_for(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=np.False_)
    assert training.backend == "xla" and "dropout=0.5 between layers" in (training.reason or "")
    for deterministic in (True, np.True_, jnp.array(True)):
        assert jl.backend_for(STACK, XS, dropout=0.5, dropout_key=KEY, deterministic=deterministic).backend == "cudnn"


# ----------------------------------------------------------------------------- the other rules, once


def test_reverse_with_two_directions_is_one_rule():
    bidirectional = jl.init_stack(jax.random.key(6), D, H, bidirectional=True)
    with pytest.raises(ValueError, match=r"reverse=True is for one-direction stacks; bidirectional=True already"):
        jl.stacked_lstm(bidirectional, XS, reverse=True)
    with pytest.raises(ValueError, match=r"reverse=True is for a single direction; bidirectional=True already"):
        LayerConfig(H, reverse=True, bidirectional=True)


def test_the_variant_type_check_is_one_rule():
    match = r"variant must be None or a jaxlstm.LSTMVariant, got dict \{'peepholes': True\}"
    for build_it in (
        lambda v: StackOptions(variant=v),
        lambda v: LayerConfig(H, variant=v),
        lambda v: jl.stacked_lstm(STACK, XS, variant=v),
        lambda v: jl.init_stack(KEY, D, H, variant=v),
    ):
        with pytest.raises(TypeError, match=match):
            build_it({"peepholes": True})
