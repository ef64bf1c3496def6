"""Strict weight loading: damaged torch files, NaN/Inf weights, tensors without dense values, Keras' backend.

Every converter refuses what it cannot load faithfully with a message that
names the file or key, and loads it bit for bit when asked to
(``allow_nonfinite=True``). The references are the source's own arrays.
"""

import io
import os
import re
import struct
import subprocess
import sys
import warnings
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxlstm as jl  # noqa: E402
from jaxlstm.interop import (  # noqa: E402
    from_flax,
    from_keras,
    from_torch,
    from_torch_state_dict,
    load_torch,
    to_flax,
    to_torch,
)

D, H = 2, 3  # w_ih has 4H x D = 24 values, w_hh 4H x H = 36


def same_bits(a, b) -> bool:
    """Equal dtype, shape and bits (NaN payloads and -0.0 included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- torch: the archive's checksums --------------------------------------------------------------


def torch_lstm(seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    return torch.nn.LSTM(D, H, batch_first=True)


def member_data(path, name_suffix: str) -> tuple[str, int, int]:
    """The zip member whose name ends with ``name_suffix``: its name, the offset of its data and its size."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(name_suffix))
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    return info.filename, info.header_offset + 30 + name_length + extra_length, info.file_size


def test_load_torch_refuses_a_damaged_file_and_names_the_member(tmp_path):
    torch = pytest.importorskip("torch")
    lstm = torch_lstm()
    good = tmp_path / "lstm.pt"
    torch.save(lstm.state_dict(), good)
    data = good.read_bytes()
    # Where the bytes change: the start of a tensor's data, 64 bytes inside another, the last byte of the
    # last tensor, and the pickle that lists the tensors.
    w_ih, w_ih_at, _ = member_data(good, "/data/0")
    w_hh, w_hh_at, w_hh_size = member_data(good, "/data/1")
    last, last_at, last_size = member_data(good, "/data/3")
    pickle, pickle_at, pickle_size = member_data(good, "/data.pkl")
    flips = [(w_ih, w_ih_at, 1), (w_hh, w_hh_at + w_hh_size // 4, 64), (last, last_at + last_size - 1, 1)]
    flips.append((pickle, pickle_at + pickle_size // 2, 1))
    for member, offset, count in flips:
        damaged = bytearray(data)
        for i in range(offset, offset + count):
            damaged[i] ^= 0x5A
        path = tmp_path / f"damaged_{offset}.pt"
        path.write_bytes(bytes(damaged))
        message = rf"'{path}' is damaged: its member '{member}' does not match the CRC-32 checksum"
        with pytest.raises(ValueError, match=message):
            load_torch(path)
        with pytest.raises(ValueError, match=rf"is damaged: its member '{member}'"):
            load_torch(io.BytesIO(bytes(damaged)))

    # The intact file loads bit for bit, from a path, a file object (left where it was) and a stream.
    # (torch.load would not read a file object that the check left at another position.)
    _, variables = load_torch(io.BytesIO(data))
    for source in (good, _Stream(data)):
        params = load_torch(source)[1]["params"]["layer_0"]
        assert same_bits(params["w_ih"], lstm.weight_ih_l0.detach().numpy().T)
        assert same_bits(params["w_hh"], variables["params"]["layer_0"]["w_hh"])


class _Stream:
    """A file object that can only be read forwards (no seek)."""

    def __init__(self, data: bytes):
        self._buffer = io.BytesIO(data)

    def read(self, size=-1):
        return self._buffer.read(size)

    def seekable(self):
        return False


def test_load_torch_warns_when_a_file_has_no_checksums(tmp_path):
    torch = pytest.importorskip("torch")
    lstm = torch_lstm()
    path = tmp_path / "legacy.pt"
    torch.save(lstm.state_dict(), path, _use_new_zipfile_serialization=False)
    with pytest.warns(UserWarning, match=r"carries no CRC-32 checksums .* without an integrity check"):
        _, variables = load_torch(path)
    assert same_bits(variables["params"]["layer_0"]["w_hh"], lstm.weight_hh_l0.detach().numpy().T)


# --- non-finite weights: one rule, one message, in every converter -------------------------------

NONFINITE = r"has 2 non-finite values of {size} \(1 NaN, 1 Inf; the first at index \({first}\)\): refused"


def test_torch_nonfinite_weights_are_refused_unless_allowed(tmp_path):
    torch = pytest.importorskip("torch")
    lstm = torch_lstm()
    with torch.no_grad():
        lstm.weight_ih_l0[1, 0] = float("nan")
        lstm.weight_ih_l0[5, 1] = -float("inf")
    message = "'weight_ih_l0' " + NONFINITE.format(size=24, first="1, 0") + ".*allow_nonfinite=True"
    with pytest.raises(ValueError, match="lstm: " + message):
        from_torch(lstm)
    path = tmp_path / "nan.pt"
    torch.save(lstm.state_dict(), path)
    with pytest.raises(ValueError, match=f"'{path}': " + message):
        load_torch(path)
    expected = lstm.weight_ih_l0.detach().numpy().T
    for _, variables in (from_torch(lstm, allow_nonfinite=True), load_torch(path, allow_nonfinite=True)):
        assert same_bits(variables["params"]["layer_0"]["w_ih"], expected)

    # A state dict of NumPy arrays, an Inf in a bias; and two finite biases whose sum overflows.
    state = {k: v.detach().numpy().copy() for k, v in torch_lstm().state_dict().items()}
    state["bias_hh_l0"][7] = np.inf
    with pytest.raises(ValueError, match=r"state dict: 'bias_hh_l0' has 1 non-finite value of 12 \(0 NaN, 1 Inf"):
        from_torch_state_dict(state)
    state["bias_hh_l0"][7] = 3e38
    state["bias_ih_l0"][7] = 3e38
    with pytest.raises(ValueError, match=r"'bias_ih_l0' \+ 'bias_hh_l0' has 1 non-finite value of 12 \(0 NaN, 1 Inf"):
        from_torch_state_dict(state)
    b = from_torch_state_dict(state, allow_nonfinite=True)[1]["params"]["layer_0"]["b"]
    assert same_bits(b, state["bias_ih_l0"] + state["bias_hh_l0"])


def test_keras_nonfinite_weights_are_refused_unless_allowed():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the Keras interop needs KERAS_BACKEND=jax")
    layer = keras.layers.LSTM(H, name="lstm")
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        layer.build((None, None, D))
        kernel, recurrent, bias = layer.get_weights()
        recurrent[2, 4] = np.nan
        recurrent[0, 11] = np.inf
        layer.set_weights([kernel, recurrent, bias])
    with pytest.raises(
        ValueError, match="from_keras: lstm.recurrent_kernel " + NONFINITE.format(size=36, first="0, 11")
    ):
        from_keras(layer)
    _, variables = from_keras(layer, allow_nonfinite=True)
    assert same_bits(variables["params"]["layer_0"]["w_hh"], recurrent)
    assert same_bits(variables["params"]["layer_0"]["w_ih"], kernel)


def test_flax_nonfinite_weights_are_refused_unless_allowed():
    from flax import nnx

    params = jl.init_params(jax.random.key(0), D, H, scheme="torch")
    tree = to_flax(params)
    kernel = np.array(tree["hf"]["kernel"])
    kernel[1, 2], kernel[2, 0] = np.nan, -np.inf
    tree["hf"]["kernel"] = jnp.asarray(kernel)
    with pytest.raises(
        ValueError, match=r"from_flax: params\['hf'\]\['kernel'\] " + NONFINITE.format(size=9, first="1, 2")
    ):
        from_flax({"params": {"cell": tree}})
    loaded = from_flax(tree, allow_nonfinite=True)
    assert same_bits(loaded.w_hh[:, H : 2 * H], tree["hf"]["kernel"])
    # Under jit the values are unknown: nothing is checked, the NaN passes through as it is.
    assert same_bits(jax.jit(from_flax)(tree).w_hh, loaded.w_hh)

    cell = nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(0))
    bias = np.array(cell.dense_h.bias[...])
    bias[3], bias[9] = np.nan, np.inf
    cell.dense_h.bias[...] = jnp.asarray(bias)
    with pytest.raises(ValueError, match=r"params\['dense_h'\]\['bias'\] " + NONFINITE.format(size=12, first="3,")):
        from_flax(cell)
    assert same_bits(from_flax(cell, allow_nonfinite=True).b, cell.dense_h.bias[...])


# --- torch tensors that hold no dense values -----------------------------------------------------


def test_torch_tensors_without_dense_values_are_named():
    torch = pytest.importorskip("torch")
    expected = "expected a dense strided tensor on the CPU or a GPU"
    with pytest.raises(ValueError, match=rf"lstm: 'weight_ih_l0' is on the meta device.*{expected}.*to_empty"):
        from_torch(torch.nn.LSTM(D, H, device="meta"))
    state = torch_lstm().state_dict()
    for layout, tensor in [
        ("sparse_coo", state["weight_hh_l0"].to_sparse()),
        ("sparse_csr", state["weight_hh_l0"].to_sparse_csr()),
    ]:
        with pytest.raises(ValueError, match=rf"'weight_hh_l0' has layout torch.{layout}; {expected}: .*to_dense"):
            from_torch_state_dict({**state, "weight_hh_l0": tensor})
    with warnings.catch_warnings():  # torch deprecates making quantized tensors; users may still hold some
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_tensor(state["bias_ih_l0"], 0.1, 0, torch.qint8)
    with pytest.raises(ValueError, match=r"'bias_ih_l0' is a quantized tensor \(torch.qint8\).*dequantize"):
        from_torch_state_dict({**state, "bias_ih_l0": quantized})


# --- every entry accounted for: nothing extra ignored, the wrong entry named, the rest listed ------


def linen_tree(seed=0):
    """A flax.linen LSTMCell's parameter subtree (D inputs, H units), random values."""
    return to_flax(jl.init_params(jax.random.key(seed), D, H, scheme="torch"))


def test_from_flax_refuses_entries_a_cell_does_not_have():
    from flax import nnx

    tree = linen_tree()
    for extra, message in [
        ({"extra": {"kernel": jnp.zeros((D, H))}}, r"params has entries \['extra'\] that a Flax LSTM cell does not"),
        ({"if_": tree["if"]}, r"params has entries \['if_'\]"),  # linen's and nnx's names at once
        ({"hi": {**tree["hi"], "scale": jnp.ones(H)}}, r"params\['hi'\] has unexpected entries \['scale'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            from_flax({**tree, **extra})
        with pytest.raises(ValueError, match=message):  # wrapped as nn.RNN's variables too
            from_flax({"params": {"cell": {**tree, **extra}}})
    packed = nnx.to_pure_dict(nnx.state(nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(0)), nnx.Param))
    with pytest.raises(ValueError, match=r"params has entries \['hi'\] .*expected 'dense_i', 'dense_h'"):
        from_flax({**packed, "hi": tree["hi"]})
    # What a cell may have still converts: an input Dense's bias is added into b.
    biased = {**tree, "ig": {**tree["ig"], "bias": jnp.full((H,), 0.5)}}
    expected = np.concatenate([np.asarray(tree[n]["bias"]) + (0.5 if n == "hg" else 0) for n in ("hi", "hf", "hg", "ho")])
    assert same_bits(from_flax(biased).b, expected.astype(np.float32))


def test_from_flax_names_the_misshaped_entry_itself():
    """Each entry in turn gets a wrong size: the error names that entry, whichever is read first."""
    tree = linen_tree()
    for name, entry in tree.items():
        for field, array in entry.items():
            for axis in range(array.ndim):
                shape = list(array.shape)
                shape[axis] += 1
                bad = {**tree, name: {**entry, field: jnp.zeros(shape, jnp.float32)}}
                with pytest.raises(ValueError, match=rf"^params\['{name}'\]\['{field}'\] has shape") as error:
                    from_flax(bad)
                expected = tuple(array.shape)
                assert f"expected {expected}" in str(error.value), str(error.value)
    # The reported case: a square 'hi' kernel of the wrong size is 'hi''s fault, not 'ii''s.
    with pytest.raises(ValueError, match=rf"params\['hi'\]\['kernel'\] has shape \(4, 4\), expected \({H}, {H}\)"):
        from_flax({**tree, "hi": {**tree["hi"], "kernel": jnp.zeros((4, 4))}})


def test_torch_misshaped_tensor_is_named_itself():
    """Each tensor of a 2-layer bidirectional state dict (and of a projected one) in turn gets one axis
    one longer: the error names that tensor, not one compared against it (the two directions' input
    sizes, one against one, are both named)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for lstm in (
        torch.nn.LSTM(D, H, num_layers=2, bidirectional=True),
        torch.nn.LSTM(D, H + 1, num_layers=2, proj_size=2),
    ):
        state = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
        for key, array in state.items():
            for axis in range(array.ndim):
                if (key, axis, lstm.bidirectional) == ("weight_ih_l0", 1, False):
                    continue  # one direction: its weight_ih_l0 alone says input_size, any value is valid
                shape = list(array.shape)
                shape[axis] += 1
                with pytest.raises(ValueError, match=rf"'{key}' has shape {re.escape(str(tuple(shape)))}"):
                    from_torch_state_dict({**state, key: np.zeros(shape, np.float32)})


def test_from_flax_refuses_integer_and_mixed_dtype_weights():
    tree = linen_tree()
    integers = jax.tree.map(lambda a: np.asarray(a).astype(np.int32), tree)
    with pytest.raises(ValueError, match=r"params\['ii'\]\['kernel'\] must hold floating-point values, got dtype int32"):
        from_flax(integers)
    mixed = {**tree, "hg": {**tree["hg"], "bias": np.asarray(tree["hg"]["bias"], np.float16)}}
    with pytest.raises(ValueError, match=r"params\['hg'\]\['bias'\] has dtype float16, the other entries float32"):
        from_flax(mixed)


class _Model:
    """A whole torch model's parts: an embedding, a 2-layer LSTM under 'encoder.lstm.', a head."""

    def __init__(self, seed=0):
        torch = pytest.importorskip("torch")
        torch.manual_seed(seed)
        self.model = torch.nn.ModuleDict(
            {
                "embed": torch.nn.Embedding(5, D),
                "encoder": torch.nn.ModuleDict({"lstm": torch.nn.LSTM(D, H, num_layers=2, batch_first=True)}),
                "head": torch.nn.Linear(H, 1),
            }
        )
        self.lstm = self.model["encoder"]["lstm"]


def test_load_torch_names_the_keys_it_left_unused():
    torch = pytest.importorskip("torch")
    whole = _Model()
    state = whole.model.state_dict()
    others = [k for k in state if not k.startswith("encoder.lstm.")]
    assert others == ["embed.weight", "head.weight", "head.bias"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for prefix in (None, "encoder.lstm."):
        buffer.seek(0)
        with pytest.warns(UserWarning, match=r"3 keys of the state dict are not the LSTM's and were left unused: "
                          r"'embed.weight', 'head.weight', 'head.bias'.*return_unused=True") as record:
            module, variables = load_torch(buffer, prefix=prefix)
        assert record[0].filename == __file__  # the warning points at the caller's line
        buffer.seek(0)
        _, again, unused = load_torch(buffer, prefix=prefix, return_unused=True)
        assert unused == others
        assert jax.tree.all(jax.tree.map(same_bits, again, variables))
    assert same_bits(variables["params"]["layer_1"]["w_hh"], whole.lstm.weight_hh_l1.detach().numpy().T)
    # A state dict of the LSTM alone leaves nothing unused: no warning, an empty list.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_torch_state_dict(whole.lstm.state_dict(), return_unused=True)[2] == []
        from_torch(whole.lstm)


def test_to_torch_writes_back_into_a_whole_models_state_dict():
    torch = pytest.importorskip("torch")
    whole = _Model()
    module, _ = from_torch(whole.lstm)
    x = np.random.default_rng(0).standard_normal((2, 4, D)).astype(np.float32)
    trained = module.init(jax.random.key(7), x)  # new weights, as after training in JAX
    before = {k: v.clone() for k, v in whole.model.state_dict().items()}

    state = to_torch(module, trained, state_dict=whole.model.state_dict())  # the prefix is found
    assert list(state) == list(before)
    assert all(torch.equal(state[k], before[k]) for k in before if not k.startswith("encoder.lstm."))
    assert all(torch.equal(v, before[k]) for k, v in whole.model.state_dict().items())  # not changed in place
    assert str(whole.model.load_state_dict(state, strict=True)) == "<All keys matched successfully>"
    with torch.no_grad():
        out = whole.lstm(torch.from_numpy(x))[0].numpy()
    assert np.allclose(out, jax.jit(module.apply)(trained, x), atol=1e-6)
    back = from_torch_state_dict(state, prefix="encoder.lstm.", return_unused=True)[1]
    assert jax.tree.all(jax.tree.map(same_bits, back, trained))

    alone = to_torch(module, trained, prefix="encoder.lstm.")  # the LSTM's entries alone, under the prefix
    assert sorted(alone) == sorted(k for k in before if k.startswith("encoder.lstm."))
    assert all(torch.equal(alone[k], state[k]) for k in alone)

    one_layer, one_variables = from_torch(torch.nn.LSTM(D, H, batch_first=True))
    with pytest.raises(ValueError, match=r"has LSTM entries \['encoder.lstm.weight_ih_l1', .* this module does not"):
        to_torch(one_layer, one_variables, state_dict=before)
    as_double = {k: v.double() if k.startswith("encoder") else v for k, v in before.items()}
    with pytest.raises(ValueError, match=r"'encoder.lstm.weight_ih_l0' has shape \(12, 2\) and dtype torch.float64; "
                       r"this module writes shape \(12, 2\) and dtype torch.float32"):
        to_torch(module, trained, prefix="encoder.lstm.", state_dict=as_double)


def test_converters_refuse_arguments_of_the_wrong_kind():
    with pytest.raises(TypeError, match=r"allow_nonfinite must be .*got str 'False'"):
        from_flax(linen_tree(), allow_nonfinite="False")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() == "jax":
        layer = keras.layers.LSTM(H)
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            layer.build((None, None, D))
        with pytest.raises(TypeError, match=r"ignore_dropout must be .*got int 1"):
            from_keras(layer, ignore_dropout=1)
    pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"path must be a file path \(a str or os.PathLike\) or a binary file "
                       r"object with read\(\), got int 12345"):
        load_torch(12345)
    state = torch_lstm().state_dict()
    with pytest.raises(TypeError, match=r"prefix must be a str such as 'encoder.lstm.' or None, got int 0"):
        from_torch_state_dict(state, prefix=0)
    with pytest.raises(TypeError, match=r"allow_nonfinite must be .*got str 'no'"):
        from_torch_state_dict(state, allow_nonfinite="no")
    with pytest.raises(TypeError, match=r"dropout must be a float in \[0, 1\), got str '0.1'"):
        from_torch_state_dict(state, dropout="0.1")
    module, variables = from_torch_state_dict(state)
    with pytest.raises(TypeError, match=r"state_dict must be a whole model's state dict .* got list"):
        to_torch(module, variables, state_dict=[])


# --- Keras' backend ------------------------------------------------------------------------------


def test_keras_on_another_backend_names_the_fix(tmp_path, monkeypatch):
    """Keras installed, KERAS_BACKEND unset: Keras loads its default 'tensorflow' backend (from a fresh
    keras.json), and the interop says so and how to fix it instead of asking to install Keras."""
    pytest.importorskip("keras")
    script = """
from jaxlstm.interop import from_keras, to_keras
for call in (lambda: to_keras(None, None), lambda: from_keras(None)):
    try:
        call()
    except ImportError as error:
        print(error)
"""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # no keras.json there: Keras' own default backend
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    for line, name in zip(lines, ("to_keras", "from_keras"), strict=True):
        assert line.startswith(name + ": ") and "'tensorflow' backend" in line, line
        assert "KERAS_BACKEND is unset" in line and "export KERAS_BACKEND=jax before Python imports keras" in line
        assert "pip install" not in line

    # Keras imported on another backend (as with KERAS_BACKEND=torch), before or after KERAS_BACKEND=jax was set.
    import keras

    from jaxlstm.interop import to_keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(
        ImportError,
        match=r"to_keras: Keras runs on its 'torch' backend \(KERAS_BACKEND='torch'\); .*"
        r"needs the 'jax' backend: export KERAS_BACKEND=jax",
    ):
        to_keras(None, None)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(ImportError, match=r"'torch' backend \(KERAS_BACKEND='jax' was set after keras was imported\)"):
        from_keras(None)
