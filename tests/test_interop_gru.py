"""GRU weight converters: torch.nn.GRU, Keras GRU and Flax GRUCell against jaxlstm's GRU on the converted weights."""

import contextlib
import functools
import io
import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

import jaxlstm as jl  # noqa: E402
from jaxlstm.interop import (  # noqa: E402
    from_flax_gru,
    from_keras_gru,
    from_torch_gru,
    gru_stack_from_variables,
    gru_stack_to_variables,
    load_torch_gru,
    to_flax_gru,
    to_keras_gru,
    to_torch_gru,
)
from tests.reference import assert_close  # noqa: E402

B, T, D, H = 3, 5, 4, 3
LENGTHS = [5, 2, 4]
CELL = jl.cells.GRU()
_stacked = jax.jit(jl.stacked_rnn, static_argnums=0, static_argnames=("merge", "reverse", "masked_output"))


def inputs(seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


@functools.cache
def random_stack(num_layers=2, bidirectional=True, seed=0):
    """A stack with every bias nonzero (init_rnn_stack draws PyTorch's uniform biases)."""
    return jl.init_rnn_stack(CELL, jax.random.key(seed), D, H, num_layers=num_layers, bidirectional=bidirectional)


def leaves_equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(np.array_equal(x, y) for x, y in pairs)


# --- PyTorch -------------------------------------------------------------------------------------------


def torch_gru(num_layers=2, bidirectional=True, bias=True, seed=0):
    torch.manual_seed(seed)
    return torch.nn.GRU(D, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=True)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_gru_equals_torch_with_packed_sequences(bidirectional, bias):
    gru, x = torch_gru(bidirectional=bidirectional, bias=bias), inputs()
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), LENGTHS, batch_first=True, enforce_sorted=False
    )
    out, h_n = gru(packed)
    out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)[0].detach().numpy()
    stack = from_torch_gru(gru)
    directions = 1 + bidirectional
    expected_shapes = [[(D, 3 * H)] * directions, [(directions * H, 3 * H)] * directions]
    assert [[p.w_ih.shape for p in layer] for layer in stack] == expected_shapes
    finals, hs = _stacked(CELL, stack, jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS))
    assert_close(hs, out)
    assert_close(jnp.stack([h for layer in finals for h in layer]), h_n.detach().numpy())


def test_torch_round_trips_are_bitwise():
    gru = torch_gru()
    state = to_torch_gru(from_torch_gru(gru))
    assert list(state) == list(gru.state_dict())
    assert all(torch.equal(state[k], v) for k, v in gru.state_dict().items())
    stack = random_stack()
    back = torch_gru(seed=1)
    back.load_state_dict(to_torch_gru(stack), strict=True)
    assert leaves_equal(from_torch_gru(back), stack)
    # a bias-free module: zero biases back and forth, no bias keys
    no_bias = torch_gru(bias=False)
    state = to_torch_gru(from_torch_gru(no_bias), bias=False)
    assert list(state) == list(no_bias.state_dict())
    assert all(torch.equal(state[k], v) for k, v in no_bias.state_dict().items())


def test_float64_and_bfloat16_round_trips_are_bitwise():
    with jax.enable_x64(True):
        gru = torch_gru(bidirectional=False).double()
        stack = from_torch_gru(gru)
        assert stack[0][0].w_ih.dtype == jnp.float64
        assert all(torch.equal(to_torch_gru(stack)[k], v) for k, v in gru.state_dict().items())
    gru = torch_gru(bidirectional=False).to(torch.bfloat16)
    stack = from_torch_gru(gru)
    assert stack[0][0].w_hh.dtype == jnp.bfloat16
    assert all(torch.equal(to_torch_gru(stack)[k], v) for k, v in gru.state_dict().items())


def test_load_torch_gru_reads_a_whole_model_without_unpickling(tmp_path):
    model = torch.nn.ModuleDict({"encoder": torch_gru(), "head": torch.nn.Linear(2 * H, 1)})
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    stack, unused = load_torch_gru(buffer, return_unused=True)
    assert unused == ["head.weight", "head.bias"]
    assert leaves_equal(stack, from_torch_gru(model["encoder"]))
    buffer.seek(0)
    with pytest.warns(UserWarning, match=r"converted the GRU only; 2 keys .* 'head.weight', 'head.bias'"):
        load_torch_gru(buffer)
    # the way back into the model's own state dict
    state = {**model.state_dict(), **to_torch_gru(random_stack(), prefix="encoder.")}
    model.load_state_dict(state, strict=True)
    assert leaves_equal(from_torch_gru(model["encoder"]), random_stack())
    pickled = tmp_path / "module.pt"
    torch.save(torch_gru(), pickled)  # a whole pickled module: refused, never unpickled
    with pytest.raises(ValueError, match=r"could not be read as a torch state dict .*weights_only=True"):
        load_torch_gru(pickled)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_torch_gru(tmp_path / "nope.pt")


def test_torch_bad_state_dicts_name_the_key():
    good = torch_gru().state_dict()
    missing = {k: v for k, v in good.items() if k != "bias_hh_l1_reverse"}
    with pytest.raises(ValueError, match=r"missing key 'bias_hh_l1_reverse'"):
        from_torch_gru(missing)
    misshaped = {**good, "weight_hh_l1": torch.zeros(3 * H, H + 1)}
    expected = r"'weight_hh_l1' has shape \(9, 4\), expected \(9, 3\) \(3 \* hidden_size, hidden_size\)"
    with pytest.raises(ValueError, match=expected):
        from_torch_gru(misshaped)
    with pytest.raises(ValueError, match=r"unexpected key 'weight_hr_l0': torch.nn.GRU has no projection"):
        from_torch_gru({**good, "weight_hr_l0": torch.zeros(2, H)})
    with pytest.raises(ValueError, match=r"unexpected key 'running_mean' for a torch.nn.GRU state dict"):
        from_torch_gru({**good, "running_mean": torch.zeros(2)})
    nan = good["weight_ih_l0"].clone()
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"'weight_ih_l0' has 1 non-finite value of 36 .* index \(1, 2\)"):
        from_torch_gru({**good, "weight_ih_l0": nan})
    assert np.isnan(from_torch_gru({**good, "weight_ih_l0": nan}, allow_nonfinite=True)[0][0].w_ih[2, 1])
    with pytest.raises(ValueError, match=r"'bias_ih_l0' must hold floating-point values, got dtype int64"):
        from_torch_gru({**good, "bias_ih_l0": torch.zeros(3 * H, dtype=torch.int64)})
    with pytest.raises(TypeError, match=r"converts a torch.nn.GRU or its state dict, got LSTM"):
        from_torch_gru(torch.nn.LSTM(D, H))
    with pytest.raises(TypeError, match=r"got GRUCell \(nn.GRUCell: copy its weights"):
        from_torch_gru(torch.nn.GRUCell(D, H))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch_gru({k: v.numpy() for k, v in good.items()})  # NumPy arrays, nothing unused


def test_to_torch_gru_names_the_bad_entry():
    stack = random_stack()
    bad = (stack[0], (stack[1][0]._replace(w_hh=jnp.zeros((H, 3 * H + 1))), stack[1][1]))
    with pytest.raises(ValueError, match=r"stack\[1\]\[0\].w_hh has shape \(3, 10\), expected \(3, 9\)"):
        to_torch_gru(bad)
    with pytest.raises(ValueError, match=r"stack\[1\]\[1\].w_ih has dtype float16, the other entries float32"):
        to_torch_gru((stack[0], (stack[1][0], stack[1][1]._replace(w_ih=stack[1][1].w_ih.astype(jnp.float16)))))
    with pytest.raises(TypeError, match=r"stack\[0\]\[0\] must be a jaxlstm.GRUParams, got tuple"):
        to_torch_gru(((tuple(stack[0][0]),),))
    with pytest.raises(ValueError, match=r"every layer must have the same 1 or 2 directions, got \[2, 1\]"):
        to_torch_gru((stack[0], stack[1][:1]))
    with pytest.raises(ValueError, match=r"to_torch_gru\(bias=False\): stack\[0\]\[0\]'s biases are not zero"):
        to_torch_gru(stack, bias=False)


# --- Keras ---------------------------------------------------------------------------------------------

keras = pytest.importorskip("keras")


def keras_numerics():
    """Keras' own jax code relies on implicit rank and dtype promotion, which the suite makes errors."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


def keras_built(layer, seed=0):
    with keras_numerics():
        layer.build((None, T, D))
        rng = np.random.default_rng(seed)
        layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    return layer


MASK = np.array([[True] * 5, [True, True, False, False, False], [True, False, True, True, False]])
KERAS_LAYERS = {
    "gru": lambda: keras.layers.GRU(H, return_sequences=True, unroll=True),
    "go_backwards": lambda: keras.layers.GRU(H, return_sequences=True, go_backwards=True, unroll=True),
    "last_step": lambda: keras.layers.GRU(H, unroll=True),
    "bidirectional_sum": lambda: keras.layers.Bidirectional(
        keras.layers.GRU(H, return_sequences=True, zero_output_for_mask=True), merge_mode="sum"
    ),
    "bidirectional_concat": lambda: keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True)),
}


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the Keras interop needs KERAS_BACKEND=jax")
@pytest.mark.parametrize("name", list(KERAS_LAYERS))
def test_from_keras_gru_equals_keras_with_masks(name):
    layer, x = keras_built(KERAS_LAYERS[name]()), inputs()
    with keras_numerics():
        expected = np.asarray(layer(x, mask=MASK))
    stack, options = from_keras_gru(layer)
    finals, hs = _stacked(CELL, stack, jnp.asarray(x), mask=jnp.asarray(MASK), **options)
    if name == "last_step":
        assert_close(finals[0][0], expected)
    else:
        assert_close(hs[:, ::-1] if name == "go_backwards" else hs, expected)
    expected_options = {
        "gru": {"masked_output": "previous"},
        "go_backwards": {"masked_output": "previous", "reverse": True},
        "last_step": {"masked_output": "previous"},
        "bidirectional_sum": {"masked_output": "zeros", "merge": "sum"},
        "bidirectional_concat": {"masked_output": "zeros", "merge": "concat"},
    }
    assert options == expected_options[name]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the Keras interop needs KERAS_BACKEND=jax")
def test_keras_round_trips_are_bitwise():
    layer = keras_built(KERAS_LAYERS["bidirectional_sum"]())
    stack, _ = from_keras_gru(layer)
    back = to_keras_gru(stack, merge="sum")
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), layer.get_weights(), strict=True))
    stack = random_stack(num_layers=1)
    assert leaves_equal(from_keras_gru(to_keras_gru(stack))[0], stack)
    # and the layer to_keras_gru builds computes what the stack computes
    one = random_stack(num_layers=1, bidirectional=False)
    keras_layer = to_keras_gru(one)
    with keras_numerics():
        expected = np.asarray(keras_layer(inputs()))
    assert_close(_stacked(CELL, one, jnp.asarray(inputs()))[1], expected)
    # use_bias=False: zero biases
    no_bias = keras_built(keras.layers.GRU(H, use_bias=False, return_sequences=True))
    with keras_numerics():
        expected = np.asarray(no_bias(inputs()))
    stack, options = from_keras_gru(no_bias)
    assert not stack[0][0].b_ih.any() and not stack[0][0].b_hh.any()
    assert_close(_stacked(CELL, stack, jnp.asarray(inputs()), **options)[1], expected)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the Keras interop needs KERAS_BACKEND=jax")
def test_keras_refusals_say_why():
    reason = r"has reset_after=False, a different cell: its candidate applies the reset gate before"
    with pytest.raises(ValueError, match=reason):
        from_keras_gru(keras_built(keras.layers.GRU(H, reset_after=False)))
    with pytest.raises(ValueError, match=r"has activation='relu'; jaxlstm's GRU cell uses tanh"):
        from_keras_gru(keras_built(keras.layers.GRU(H, activation="relu")))
    with pytest.raises(ValueError, match=r"dropout=0.5, recurrent_dropout=0.0, which a GRU stack does not apply"):
        from_keras_gru(keras_built(keras.layers.GRU(H, dropout=0.5)))
    assert len(from_keras_gru(keras_built(keras.layers.GRU(H, dropout=0.5)), ignore_dropout=True)[0]) == 1
    with pytest.raises(TypeError, match=r"converts keras.layers.GRU or Bidirectional\(GRU\), got LSTM"):
        from_keras_gru(keras.layers.LSTM(H))
    with pytest.raises(ValueError, match=r"is not built"):
        from_keras_gru(keras.layers.GRU(H))
    layer = keras_built(keras.layers.GRU(H))
    kernel = layer.get_weights()[0]
    kernel[0, 0] = np.inf
    with keras_numerics():
        layer.set_weights([kernel, *layer.get_weights()[1:]])
    with pytest.raises(ValueError, match=r"\.kernel has 1 non-finite value of 36 \(0 NaN, 1 Inf"):
        from_keras_gru(layer)
    with pytest.raises(ValueError, match=r"a Keras GRU layer is one layer; this stack has 2 layers"):
        to_keras_gru(random_stack())


# --- Flax ----------------------------------------------------------------------------------------------


def randomized(tree, seed=0):
    """``tree`` with every leaf redrawn (Flax initialises the biases to zero)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def test_from_flax_gru_equals_linen_rnn_with_lengths():
    x, lengths = jnp.asarray(inputs()), jnp.asarray(LENGTHS)
    rnn = nn.RNN(nn.GRUCell(features=H))
    variables = randomized(rnn.init(jax.random.key(0), x))
    params = from_flax_gru(variables, nn.GRUCell(features=H))
    assert_close(params.b_hh[: 2 * H], np.zeros(2 * H))
    final, hs = jax.jit(jl.gru)(params, x, seq_lengths=lengths)
    flax_final, flax_hs = jax.jit(functools.partial(rnn.apply, return_carry=True))(variables, x, seq_lengths=lengths)
    valid = np.arange(T)[None, :, None] < np.asarray(LENGTHS)[:, None, None]  # Flax leaves padding unspecified
    assert_close(jnp.where(valid, hs, 0.0), np.where(valid, flax_hs, 0.0))
    assert_close(final, flax_final)


def test_from_flax_gru_equals_nnx_rnn():
    x = jnp.asarray(inputs())
    cell = nnx.GRUCell(D, H, rngs=nnx.Rngs(0))
    nnx.update(cell, randomized(nnx.to_pure_dict(nnx.state(cell, nnx.Param))))
    params = from_flax_gru(cell)
    assert not params.b_hh.any()
    assert_close(jax.jit(jl.gru)(params, x)[1], nnx_rnn(cell, x))


@nnx.jit
def nnx_rnn(cell, x):
    return nnx.RNN(cell)(x)


def test_to_flax_gru_folds_the_r_and_z_recurrent_biases():
    x = jnp.asarray(inputs())
    params = random_stack(num_layers=1, bidirectional=False)[0][0]  # every b_hh block nonzero
    tree = to_flax_gru(params)
    assert sorted(tree["hr"]) == ["kernel"] and sorted(tree["hn"]) == ["bias", "kernel"]
    expected = jax.jit(nn.RNN(nn.GRUCell(features=H)).apply)({"params": {"cell": tree}}, x)
    assert_close(jax.jit(jl.gru)(params, x)[1], expected)
    # nnx has no recurrent bias: r and z fold, n cannot
    cell = nnx.GRUCell(D, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"params.b_hh's n block \(b_hh\[6:\]\) is nonzero, 3 of 3 entries"):
        to_flax_gru(params, cell)
    no_n_bias = params._replace(b_hh=params.b_hh.at[2 * H :].set(0.0))
    nnx.update(cell, to_flax_gru(no_n_bias, cell))
    assert_close(jax.jit(jl.gru)(no_n_bias, x)[1], nnx_rnn(cell, x))


def test_flax_round_trips_are_bitwise():
    rnn = nn.RNN(nn.GRUCell(features=H))
    tree = randomized(rnn.init(jax.random.key(0), jnp.asarray(inputs())))["params"]["cell"]
    assert leaves_equal(to_flax_gru(from_flax_gru(tree)), tree)
    params = random_stack(num_layers=1, bidirectional=False)[0][0]
    params = params._replace(b_hh=params.b_hh.at[: 2 * H].set(0.0))  # what Flax has room for
    assert leaves_equal(from_flax_gru(to_flax_gru(params)), params)
    cell = nnx.GRUCell(D, H, rngs=nnx.Rngs(0))
    state = randomized(nnx.to_pure_dict(nnx.state(cell, nnx.Param)))
    assert leaves_equal(to_flax_gru(from_flax_gru(state), cell), state)


def test_flax_bad_trees_name_the_entry():
    tree = to_flax_gru(random_stack(num_layers=1, bidirectional=False)[0][0])
    with pytest.raises(ValueError, match=r"params has entries \['Dense_0'\] that a Flax GRUCell does not have"):
        from_flax_gru({**tree, "Dense_0": {"kernel": np.zeros((2, 3), np.float32)}})
    with pytest.raises(ValueError, match=r"params\['hz'\]\['kernel'\] has shape \(4, 3\), expected \(3, 3\)"):
        from_flax_gru({**tree, "hz": {"kernel": np.zeros((4, 3), np.float32)}})
    with pytest.raises(ValueError, match=r"params\['hr'\] has unexpected entries \['bias'\]"):
        from_flax_gru({**tree, "hr": {**tree["hr"], "bias": np.zeros(3, np.float32)}})
    with pytest.raises(ValueError, match=r"params\['in'\] is missing"):
        from_flax_gru({k: v for k, v in tree.items() if k != "in"})
    with pytest.raises(ValueError, match=r"GRUCell has gate_fn=tanh; jaxlstm's uses sigmoid"):
        from_flax_gru(tree, nn.GRUCell(features=H, gate_fn=jnp.tanh))
    with pytest.raises(ValueError, match=r"params.b_hh has shape \(8,\), expected \(9,\)"):
        to_flax_gru(jl.GRUParams(jnp.zeros((D, 9)), jnp.zeros((H, 9)), jnp.zeros(9), jnp.zeros(8)))


# --- the linen layout ----------------------------------------------------------------------------------


def test_stack_variables_are_jl_gru_s_and_round_trip():
    stack, x = random_stack(), jnp.asarray(inputs())
    variables = gru_stack_to_variables(stack)
    assert leaves_equal(gru_stack_from_variables(variables), stack)
    expected = _stacked(CELL, stack, x, seq_lengths=jnp.asarray(LENGTHS))[1]
    module = jl.GRU(features=H, num_layers=2, bidirectional=True)
    assert_close(jax.jit(module.apply)(variables, x, seq_lengths=jnp.asarray(LENGTHS)), expected)
    params = dict(variables["params"])
    del params["layer_1_reverse"]
    with pytest.raises(ValueError, match=r"missing \['layer_1_reverse'\], unexpected \[\]"):
        gru_stack_from_variables(params)
    with pytest.raises(ValueError, match=r"\['layer_0'\] must have exactly \['w_ih', 'w_hh', 'b_ih', 'b_hh'\]"):
        gru_stack_from_variables({"layer_0": {"w_ih": 0, "w_hh": 0, "b": 0}})
