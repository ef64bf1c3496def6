"""jaxlstm.interop.keras: exact conversion to and from Keras 3 LSTM and Bidirectional(LSTM) layers."""

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import jaxlstm as jl  # noqa: E402
from jaxlstm.interop import KerasLSTM, from_keras, to_keras  # noqa: E402

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


def apply(module, variables, x, lengths=None):
    seq_lengths = None if lengths is None else jnp.asarray(lengths)
    return jax.jit(module.apply)(variables, jnp.asarray(x), seq_lengths=seq_lengths)


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


def test_masks_match_seq_lengths():
    x = inputs()
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    valid = mask[..., None]

    bidirectional = built(keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True, return_state=True)))
    module, variables = from_keras(bidirectional)
    # Bidirectional (with Keras' default scan) zeroes the masked steps, as jaxlstm does: equal everywhere.
    assert_outputs_match(apply(module, variables, x, LENGTHS), keras_call(bidirectional, x, mask=mask))

    # A plain LSTM (and Keras' unrolled loop) repeats the last output at masked steps:
    # equal at the valid steps and in the final states.
    for go_backwards in (False, True):
        layer = built(keras.layers.LSTM(H, return_sequences=True, return_state=True, go_backwards=go_backwards, **FAST))
        module, variables = from_keras(layer)
        (ours, *our_states), (theirs, *their_states) = (
            apply(module, variables, x, LENGTHS),
            keras_call(layer, x, mask=mask),
        )
        if go_backwards:  # reversed time order: the valid steps are the last ones
            valid_here = valid[:, ::-1]
        else:
            valid_here = valid
        assert max_abs(np.where(valid_here, ours, 0.0), np.where(valid_here, theirs, 0.0)) <= ATOL
        assert_outputs_match(tuple(our_states), their_states)


def test_use_bias_false_is_a_zero_bias():
    layer = built(keras.layers.LSTM(H, use_bias=False, return_sequences=True, **FAST))
    module, variables = from_keras(layer)
    assert not variables["params"]["layer_0"]["b"].any()
    assert max_abs(apply(module, variables, inputs()), keras_call(layer, inputs())) <= ATOL


def test_dropout_is_refused_unless_ignored():
    for option in ("dropout", "recurrent_dropout"):
        layer = built(keras.layers.LSTM(H, **{option: 0.2}, **FAST))
        with pytest.raises(ValueError, match=f"{option}=0.2.*ignore_dropout=True"):
            from_keras(layer)
        module, variables = from_keras(layer, ignore_dropout=True)
        assert max_abs(apply(module, variables, inputs()), keras_call(layer, inputs(), training=False)) <= ATOL


def test_unsupported_options_raise():
    # options are checked before the weights: these layers need not be built
    with pytest.raises(ValueError, match="activation='relu'"):
        from_keras(keras.layers.LSTM(H, activation="relu", **FAST))
    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'"):
        from_keras(keras.layers.LSTM(H, recurrent_activation="hard_sigmoid", **FAST))
    with pytest.raises(NotImplementedError, match="stateful=True"):
        from_keras(keras.layers.LSTM(H, stateful=True, **FAST))
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
        from_keras(keras.layers.LSTM(H, **FAST))
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
