"""jaxlstm.interop.keras: exact conversion to and from Keras 3 LSTM and Bidirectional(LSTM) layers."""

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # the converters refuse other backends (test_interop_strict checks the message)
    pytest.skip("the Keras interop needs KERAS_BACKEND=jax", allow_module_level=True)

import jaxlstm as jl  # noqa: E402
from jaxlstm.interop import KerasLSTM, from_keras, to_keras  # noqa: E402
from jaxlstm.interop.keras import KERAS_ACTIVATIONS  # noqa: E402

B, T, D, H = 3, 5, 4, 6
LENGTHS = np.array([5, 2, 4])
ATOL = 1e-5  # float32, max abs
# Keras' unrolled loop gives the same numbers as its scan and, at these tiny shapes, runs far faster
# eagerly (its ops are cached across layers; a scan recompiles per layer). One test keeps the scan.
FAST = {"unroll": True}


def inputs(seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


def keras_numerics():
    """Keras' own jax code (initializers, its loop) relies on implicit rank and dtype promotion,
    which the suite turns into errors; this relaxes them around Keras' calls only."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


def keras_call(layer, *args, **kwargs):
    with keras_numerics():
        return layer(*args, **kwargs)


def built(layer, seed=0):
    """Builds ``layer`` for D inputs and gives it random weights, non-zero biases included."""
    with keras_numerics():
        layer.build((None, T, D))
        rng = np.random.default_rng(seed)
        layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    return layer


def apply(module, variables, x, lengths=None, mask=None):
    seq_lengths = None if lengths is None else jnp.asarray(lengths)
    mask = None if mask is None else jnp.asarray(mask)
    return jax.jit(module.apply)(variables, jnp.asarray(x), seq_lengths=seq_lengths, mask=mask)


def lstm_of(module):
    """The jl.LSTM inside a from_keras module."""
    return module.lstm if isinstance(module, KerasLSTM) else module


def max_abs(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def assert_outputs_match(ours, theirs):
    if isinstance(theirs, (list, tuple)):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert max_abs(a, b) <= ATOL
    else:
        assert max_abs(ours, theirs) <= ATOL


@pytest.mark.parametrize(
    "return_sequences, go_backwards, return_state",
    [(True, False, False), (False, False, False), (True, True, False), (False, True, True), (True, True, True)],
)
def test_lstm_parity(return_sequences, go_backwards, return_state):
    layer = built(
        keras.layers.LSTM(
            H, return_sequences=return_sequences, go_backwards=go_backwards, return_state=return_state, **FAST
        )
    )
    x = inputs()
    module, variables = from_keras(layer)
    wrapped = return_state or (go_backwards and return_sequences)
    assert isinstance(module, KerasLSTM) == wrapped
    assert isinstance(module, jl.LSTM) != wrapped
    assert_outputs_match(apply(module, variables, x), keras_call(layer, x))


def test_go_backwards_returns_reversed_sequences_in_keras():
    """The Keras convention the wrapper follows: go_backwards outputs come in reversed time order."""
    x = inputs()
    backwards = built(keras.layers.LSTM(H, return_sequences=True, go_backwards=True))  # Keras' default scan
    forwards = built(keras.layers.LSTM(H, return_sequences=True))
    forwards.set_weights(backwards.get_weights())
    assert max_abs(keras_call(backwards, x), keras_call(forwards, x[:, ::-1])) <= ATOL
    module, variables = from_keras(backwards)
    aligned = apply(module.lstm, variables, x)  # the bare jl.LSTM(reverse=True): aligned with the inputs
    assert max_abs(aligned[:, ::-1], keras_call(backwards, x)) <= ATOL


@pytest.mark.parametrize(
    "merge_mode, return_sequences, return_state",
    [("concat", True, False), ("sum", False, False), ("mul", True, True), ("ave", False, True)],
)
def test_bidirectional_parity(merge_mode, return_sequences, return_state):
    layer = built(
        keras.layers.Bidirectional(
            keras.layers.LSTM(H, return_sequences=return_sequences, return_state=return_state, **FAST),
            merge_mode=merge_mode,
        )
    )
    x = inputs()
    module, variables = from_keras(layer)
    lstm = module.lstm if isinstance(module, KerasLSTM) else module
    assert (lstm.bidirectional, lstm.merge, lstm.return_sequences) == (True, merge_mode, return_sequences)
    assert sorted(variables["params"]) == ["layer_0", "layer_0_reverse"]
    assert_outputs_match(apply(module, variables, x), keras_call(layer, x))


def test_masks_match_everywhere():
    """Keras' mask and jaxlstm's: equal at every step, masked ones included, and in the final states."""
    x = inputs()
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    mask[1, 0] = False  # a row that begins masked, then right padding

    bidirectional = built(keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True, return_state=True)))
    module, variables = from_keras(bidirectional)
    assert module.lstm.masked_output == "zeros"  # Bidirectional (with Keras' default scan) zeroes the masked steps
    assert_outputs_match(apply(module, variables, x, mask=mask), keras_call(bidirectional, x, mask=mask))

    # a plain LSTM repeats the previous output at masked steps; so does any layer with unroll=True
    for go_backwards in (False, True):
        layer = built(keras.layers.LSTM(H, return_sequences=True, return_state=True, go_backwards=go_backwards, **FAST))
        module, variables = from_keras(layer)
        assert module.lstm.masked_output == "previous"
        assert_outputs_match(apply(module, variables, x, mask=mask), keras_call(layer, x, mask=mask))
    # seq_lengths is the right-padded mask
    module, variables = from_keras(layer)
    right_padded = np.arange(T)[None, :] < LENGTHS[:, None]
    assert_outputs_match(apply(module, variables, x, LENGTHS), keras_call(layer, x, mask=right_padded))


@pytest.mark.parametrize(
    "factory, expected",
    [
        (lambda: keras.layers.LSTM(H), "previous"),
        (lambda: keras.layers.LSTM(H, return_sequences=True, zero_output_for_mask=True), "zeros"),
        (lambda: keras.layers.LSTM(H, return_sequences=True, zero_output_for_mask=True, unroll=True), "previous"),
        (lambda: keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True)), "zeros"),
        (lambda: keras.layers.Bidirectional(keras.layers.LSTM(H)), "zeros"),
        (lambda: keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True, unroll=True)), "previous"),
    ],
    ids=["lstm", "zero_output_for_mask", "unrolled", "bidirectional", "bidirectional-last", "bidirectional-unrolled"],
)
def test_masked_output_follows_the_keras_layer(factory, expected):
    module, _ = from_keras(built(factory()))
    assert lstm_of(module).masked_output == expected


def test_keras_mask_corners_that_are_not_copied():
    """Two Keras behaviours the converted module does not reproduce (documented in from_keras)."""
    x = inputs()
    mask = np.array([[False, True, True, False, True], [False] * T, [True, True, True, True, False]])
    rng = np.random.default_rng(3)
    h0, c0 = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))

    # 1. unroll=True with an initial state: zeros, not the initial h, before a row's first counted step
    layer = built(keras.layers.LSTM(H, return_sequences=True, return_state=True, unroll=True))
    module, variables = from_keras(layer)
    carry = ((jl.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)),),)
    (ours, our_h, our_c) = jax.jit(module.apply)(variables, jnp.asarray(x), mask=jnp.asarray(mask), initial_carry=carry)
    theirs, their_h, their_c = keras_call(layer, x, mask=mask, initial_state=[h0, c0])
    before_first = np.cumsum(mask, axis=1) == 0
    assert max_abs(np.where(before_first[..., None], 0.0, ours), theirs) <= ATOL
    np.testing.assert_array_equal(np.asarray(theirs)[before_first], 0.0)
    assert max_abs(np.asarray(ours)[1], np.broadcast_to(h0[1], (T, H))) == 0.0
    assert max_abs(our_h, their_h) <= ATOL and max_abs(our_c, their_c) <= ATOL
    # Keras' scan path (unroll=False) outputs the initial h there, as the module does
    scan = built(keras.layers.LSTM(H, return_sequences=True))
    module, variables = from_keras(scan)
    ours = jax.jit(module.apply)(variables, jnp.asarray(x), mask=jnp.asarray(mask), initial_carry=carry)
    assert max_abs(ours, keras_call(scan, x, mask=mask, initial_state=[h0, c0])) <= ATOL

    # 2. zero_output_for_mask=True, return_sequences=False: zeros for a row whose last step is masked
    layer = built(keras.layers.LSTM(H, zero_output_for_mask=True, return_state=True))
    module, variables = from_keras(layer)
    ours, our_h, _ = apply(module, variables, x, mask=mask)
    theirs, their_h, _ = keras_call(layer, x, mask=mask)
    assert max_abs(ours, our_h) == 0.0 and max_abs(our_h, their_h) <= ATOL  # the final states agree
    np.testing.assert_array_equal(np.asarray(theirs)[2], 0.0)  # row 2's last step is masked
    assert max_abs(np.asarray(ours)[:2], np.asarray(theirs)[:2]) <= ATOL


def test_activations_convert_by_name_exactly():
    """Every converted activation computes what Keras 3 computes, on both sides of its kinks and tails."""
    z = np.linspace(-8.0, 8.0, 161, dtype=np.float32)
    z = np.concatenate([z, np.array([-3.0, 3.0, 0.0, -1e-7, 1e-7, 30.0, -30.0], np.float32)])
    for name, fn in KERAS_ACTIVATIONS.items():
        with keras_numerics():
            expected = np.asarray(keras.activations.get(name)(jnp.asarray(z)))
            op = getattr(keras.ops, name, None)
            via_op = None if op is None else np.asarray(op(jnp.asarray(z)))
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(z))), expected, rtol=1e-6, atol=1e-7, err_msg=name)
        if via_op is not None and name != "gelu":  # keras.ops.gelu is the tanh approximation
            np.testing.assert_allclose(via_op, expected, rtol=1e-6, atol=1e-7, err_msg=f"keras.ops.{name}")
    assert KERAS_ACTIVATIONS["hard_sigmoid"] is jax.nn.hard_sigmoid
    np.testing.assert_array_equal(jax.nn.hard_sigmoid(jnp.array([-3.0, 0.0, 1.5, 3.0])), [0.0, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    "options, gate_fn, activation_fn",
    [
        (dict(recurrent_activation="hard_sigmoid", activation="relu"), jax.nn.hard_sigmoid, jax.nn.relu),
        (dict(recurrent_activation=keras.ops.sigmoid, activation="linear"), jax.nn.sigmoid, None),
        (dict(recurrent_activation="sigmoid", activation=jnp.tanh), jax.nn.sigmoid, jnp.tanh),
    ],
    ids=["names", "keras.ops-and-linear", "jax-function"],
)
def test_activations_parity_and_round_trip(options, gate_fn, activation_fn):
    layer = built(keras.layers.LSTM(H, return_sequences=True, **options, **FAST))
    module, variables = from_keras(layer)
    assert module.gate_fn is gate_fn
    assert activation_fn is None or module.activation_fn is activation_fn
    assert max_abs(apply(module, variables, inputs()), keras_call(layer, inputs())) <= ATOL
    back = to_keras(module, variables)
    assert module == from_keras(back)[0]
    assert max_abs(keras_call(back, inputs()), keras_call(layer, inputs())) <= ATOL


def test_stateful_layer_streams_on_from_its_states():
    layer = keras.layers.LSTM(H, stateful=True, return_sequences=True, **FAST)
    with keras_numerics():
        layer.build((B, T, D))
        rng = np.random.default_rng(0)
        layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    first, second = inputs(1), inputs(2)
    keras_call(layer, first)  # Keras now holds the carry after `first`
    module, variables = from_keras(layer)
    assert module.stateful and variables["carry"]["state"][0][0].h.shape == (B, H)
    ours, state = module.apply(variables, jnp.asarray(second), mutable=["carry"])
    assert max_abs(ours, keras_call(layer, second)) <= ATOL  # the next chunk, on both sides
    assert max_abs(state["carry"]["state"][0][0].c, layer.states[1].value) <= ATOL
    layer.reset_state()
    fresh, _ = module.apply({"params": variables["params"]}, jnp.asarray(first), mutable=["carry"])
    assert max_abs(fresh, keras_call(layer, first)) <= ATOL


def test_use_bias_false_is_a_zero_bias():
    layer = built(keras.layers.LSTM(H, use_bias=False, return_sequences=True, **FAST))
    module, variables = from_keras(layer)
    assert not variables["params"]["layer_0"]["b"].any()
    assert max_abs(apply(module, variables, inputs()), keras_call(layer, inputs())) <= ATOL


MASK = np.array([[True, False, True, True, False], [False] * T, [False, True, True, True, True]])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_dropout_converts_to_the_variant(bidirectional):
    """Keras' dropout and recurrent_dropout become input_dropout and recurrent_dropout: the same outputs at
    inference (masked steps included), the rates kept for training, and back to Keras unchanged."""
    lstm = keras.layers.LSTM(H, dropout=0.5, recurrent_dropout=0.3, return_sequences=True, **FAST)
    layer = built(keras.layers.Bidirectional(lstm) if bidirectional else lstm)
    module, variables = from_keras(layer)
    assert module.variant == jl.LSTMVariant(input_dropout=0.5, recurrent_dropout=0.3)
    x = inputs()
    assert max_abs(apply(module, variables, x), keras_call(layer, x, training=False)) <= ATOL
    assert max_abs(apply(module, variables, x, mask=MASK), keras_call(layer, x, mask=MASK, training=False)) <= ATOL

    train = jax.jit(module.apply, static_argnames="deterministic")
    drawn = [train(variables, x, deterministic=False, rngs={"dropout": jax.random.key(s)}) for s in (1, 1, 2)]
    np.testing.assert_array_equal(drawn[0], drawn[1])  # the rng decides the masks
    assert max_abs(drawn[0], drawn[2]) > 1e-2 and max_abs(drawn[0], apply(module, variables, x)) > 1e-2

    back = to_keras(module, variables)
    for sub in (back.forward_layer, back.backward_layer) if bidirectional else (back,):
        assert (sub.cell.dropout, sub.cell.recurrent_dropout) == (0.5, 0.3)
    for ours, theirs in zip(layer.get_weights(), back.get_weights(), strict=True):
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert from_keras(back)[0] == module


def test_dropout_can_be_ignored_and_must_match_between_directions():
    layer = built(keras.layers.LSTM(H, dropout=0.2, **FAST))
    module, variables = from_keras(layer, ignore_dropout=True)
    assert module.variant is None
    assert max_abs(apply(module, variables, inputs()), keras_call(layer, inputs(), training=False)) <= ATOL
    assert from_keras(built(keras.layers.LSTM(H, recurrent_dropout=0.2, **FAST)))[0].variant == jl.LSTMVariant(
        recurrent_dropout=0.2
    )
    backward = keras.layers.LSTM(H, go_backwards=True, dropout=0.1, **FAST)
    with pytest.raises(ValueError, match="different dropout rates .*one variant for both directions"):
        from_keras(keras.layers.Bidirectional(keras.layers.LSTM(H, dropout=0.2, **FAST), backward_layer=backward))


def test_unsupported_options_raise():
    # options are checked before the weights: these layers need not be built
    with pytest.raises(ValueError, match="activation='softmax', which is not one of the elementwise"):
        from_keras(keras.layers.LSTM(H, activation="softmax", **FAST))
    with pytest.raises(ValueError, match="recurrent_activation='my_gate'.*gate_fn=.*activation_fn="):

        def my_gate(x):
            return keras.ops.sigmoid(2.0 * x)

        from_keras(keras.layers.LSTM(H, recurrent_activation=my_gate, **FAST))
    with pytest.raises(ValueError, match="different activations"):
        from_keras(
            keras.layers.Bidirectional(
                keras.layers.LSTM(H, **FAST), backward_layer=keras.layers.LSTM(H, activation="relu", go_backwards=True)
            )
        )
    with pytest.raises(NotImplementedError, match="treat masked steps differently"):
        from_keras(
            keras.layers.Bidirectional(
                keras.layers.LSTM(H, **FAST), backward_layer=keras.layers.LSTM(H, go_backwards=True, unroll=False)
            )
        )
    with pytest.raises(NotImplementedError, match="stateful=True with go_backwards=True"):
        from_keras(keras.layers.LSTM(H, stateful=True, go_backwards=True, **FAST))
    with pytest.raises(NotImplementedError, match="stateful Bidirectional"):
        from_keras(keras.layers.Bidirectional(keras.layers.LSTM(H, stateful=True, **FAST)))
    with pytest.raises(NotImplementedError, match="merge_mode=None"):
        from_keras(keras.layers.Bidirectional(keras.layers.LSTM(H, **FAST), merge_mode=None))
    with pytest.raises(NotImplementedError, match="go_backwards=True"):
        from_keras(
            keras.layers.Bidirectional(
                keras.layers.LSTM(H, go_backwards=True, **FAST), backward_layer=keras.layers.LSTM(H, **FAST)
            )
        )
    with pytest.raises(ValueError, match="different units"):
        from_keras(
            keras.layers.Bidirectional(
                keras.layers.LSTM(H, **FAST), backward_layer=keras.layers.LSTM(H + 1, go_backwards=True, **FAST)
            )
        )
    with pytest.raises(ValueError, match="not built"):
        from_keras(keras.layers.LSTM(H, recurrent_activation="hard_sigmoid", activation="relu", **FAST))
    with pytest.raises(TypeError, match="GRU"):
        from_keras(keras.layers.GRU(H))
    with pytest.raises(TypeError, match="GRU"):
        from_keras(keras.layers.Bidirectional(keras.layers.GRU(H)))


def _bits(tree):
    return [np.asarray(a).view(np.uint32) for a in jax.tree.leaves(tree)]


@pytest.mark.parametrize(
    "layer_factory",
    [
        lambda: keras.layers.LSTM(H, return_sequences=True, return_state=True, go_backwards=True, **FAST),
        lambda: keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True, **FAST), merge_mode="ave"),
    ],
)
def test_round_trips_are_exact(layer_factory):
    layer = built(layer_factory())
    module, variables = from_keras(layer)
    back = to_keras(module, variables)
    assert type(back) is type(layer)
    for a, b in zip(layer.get_weights(), back.get_weights(), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert_outputs_match(keras_call(back, inputs()), keras_call(layer, inputs()))
    module2, variables2 = from_keras(back)
    assert module2 == module
    assert all(np.array_equal(a, b) for a, b in zip(_bits(variables), _bits(variables2), strict=True))


def test_to_keras_from_a_jaxlstm_module():
    stack = jl.init_stack(jax.random.key(0), D, H, bidirectional=True, scheme="torch")
    variables = {"params": {"layer_0": stack[0][0]._asdict(), "layer_0_reverse": stack[0][1]._asdict()}}
    module = jl.LSTM(H, bidirectional=True, merge="sum")
    layer = to_keras(module, variables)
    assert isinstance(layer, keras.layers.Bidirectional) and layer.merge_mode == "sum"
    assert max_abs(keras_call(layer, inputs()), apply(module, variables, inputs())) <= ATOL

    with pytest.raises(ValueError, match="num_layers=2"):
        to_keras(jl.LSTM(H, num_layers=2), variables)
    forward = {"params": {"layer_0": stack[0][0]._asdict()}}
    with pytest.raises(ValueError, match="reversed time order"):
        to_keras(jl.LSTM(H, reverse=True), forward)
    # return_sequences=False needs no flip: go_backwards and reverse agree
    reverse_last = jl.LSTM(H, reverse=True, return_sequences=False)
    assert (
        max_abs(keras_call(to_keras(reverse_last, forward), inputs()), apply(reverse_last, forward, inputs())) <= ATOL
    )


def test_to_keras_carries_masked_output_and_activations():
    stack = jl.init_stack(jax.random.key(0), D, H, bidirectional=True, scheme="torch")
    forward = {"params": {"layer_0": stack[0][0]._asdict()}}
    both = {"params": {"layer_0": stack[0][0]._asdict(), "layer_0_reverse": stack[0][1]._asdict()}}
    # one direction: zero_output_for_mask says which
    assert to_keras(jl.LSTM(H), forward).zero_output_for_mask is True
    assert to_keras(jl.LSTM(H, masked_output="previous"), forward).zero_output_for_mask is False
    assert to_keras(jl.LSTM(H, return_sequences=False), forward).zero_output_for_mask is False  # see from_keras
    # Bidirectional always writes zeros with its scan: "previous" takes Keras' unrolled loop
    zeros = to_keras(jl.LSTM(H, bidirectional=True), both)
    previous = to_keras(jl.LSTM(H, bidirectional=True, masked_output="previous"), both)
    assert not zeros.forward_layer.unroll and previous.forward_layer.unroll and previous.backward_layer.unroll
    mask = np.array([[True, False, True, True, False], [False] * T, [False, True, True, True, True]])
    for masked_output, layer in (("zeros", zeros), ("previous", previous)):
        module = jl.LSTM(H, bidirectional=True, masked_output=masked_output)
        assert max_abs(keras_call(layer, inputs(), mask=mask), apply(module, both, inputs(), mask=mask)) <= ATOL
    # activations by name
    layer = to_keras(jl.LSTM(H, gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.silu), forward)
    assert (layer.get_config()["recurrent_activation"], layer.get_config()["activation"]) == ("hard_sigmoid", "silu")

    with pytest.raises(ValueError, match="activation_fn='gelu' is not one of the functions Keras has"):
        to_keras(jl.LSTM(H, activation_fn=jax.nn.gelu), forward)  # the tanh approximation; Keras' gelu is exact
    with pytest.raises(ValueError, match="learn_initial_carry=True"):
        to_keras(jl.LSTM(H, learn_initial_carry=True), forward)
    with pytest.raises(ValueError, match="stateful=True"):
        to_keras(jl.LSTM(H, stateful=True), forward)
    with pytest.raises(ValueError, match="checkpoint_every=4 has no keras.layers.LSTM equivalent"):
        to_keras(jl.LSTM(H, checkpoint_every=4), forward)
    for option, value in (("cell_clip", 3.0), ("forget_bias", 1.0), ("zoneout_h", 0.1)):  # no weights of their own
        message = f"keras.layers.LSTM has no {option}={value}; .* input_dropout \\(its dropout\\) and recurrent_dropout"
        with pytest.raises(ValueError, match=message):
            to_keras(jl.LSTM(H, variant=jl.LSTMVariant(**{option: value})), forward)
