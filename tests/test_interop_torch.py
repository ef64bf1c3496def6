"""jaxlstm.interop.torch: exact conversion to and from torch.nn.LSTM, and loading saved state dicts."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jaxlstm as jl  # noqa: E402
from jaxlstm.interop import from_torch, from_torch_state_dict, load_torch, to_torch  # noqa: E402

torch.set_num_threads(1)

B, T, D, H = 3, 5, 4, 6
LENGTHS = np.array([5, 2, 4])
ATOL = 1e-5  # float32, max abs
KEY = jax.random.key(0)


def make_torch(num_layers=1, bidirectional=False, bias=True, seed=0, batch_first=True, **kwargs):
    torch.manual_seed(seed)
    return torch.nn.LSTM(
        D, H, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, **kwargs
    )


def inputs(seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


def torch_run(lstm, x, lengths=None):
    """torch's outputs (B, T, F), h_n, c_n for batch-first x; packed when lengths are given."""
    xt = torch.from_numpy(x)
    if not lstm.batch_first:
        xt = xt.transpose(0, 1)
    with torch.no_grad():
        if lengths is None:
            out, (h_n, c_n) = lstm(xt)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.from_numpy(lengths), batch_first=lstm.batch_first, enforce_sorted=False
            )
            out, (h_n, c_n) = lstm(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=lstm.batch_first, total_length=T)
    if not lstm.batch_first:
        out = out.transpose(0, 1)
    return out.numpy(), h_n.numpy(), c_n.numpy()


def apply(module, variables, x, lengths=None):
    """``module.apply`` under one ``jit`` (one compilation instead of many small ones: keeps the suite fast)."""
    seq_lengths = None if lengths is None else jnp.asarray(lengths)
    return jax.jit(module.apply)(variables, jnp.asarray(x), seq_lengths=seq_lengths)


def random_variables(num_layers, bidirectional, seed=7):
    """Variables of ``jl.LSTM(H, num_layers, bidirectional)`` for input D: every entry random, biases non-zero."""
    stack = jl.init_stack(
        jax.random.key(seed), D, H, num_layers=num_layers, bidirectional=bidirectional, scheme="torch"
    )
    names = [f"layer_{layer}" + ("_reverse" if d else "") for layer in range(num_layers) for d in range(len(stack[0]))]
    cells = [params for directions in stack for params in directions]
    return {"params": {name: p._asdict() for name, p in zip(names, cells, strict=True)}}


def max_abs(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.mark.parametrize(
    "num_layers, bidirectional, bias, packed",
    [
        (1, False, True, False),
        (2, True, True, True),
        (2, False, False, True),
        (1, True, False, False),
    ],
)
def test_from_torch_parity(num_layers, bidirectional, bias, packed):
    lstm = make_torch(num_layers, bidirectional, bias)
    if bias:  # torch's default biases are non-zero; make sure both are
        assert all(p.abs().min() > 0 for n, p in lstm.named_parameters() if n.startswith("bias"))
    x = inputs()
    lengths = LENGTHS if packed else None
    out, h_n, c_n = torch_run(lstm, x, lengths)

    module, variables = from_torch(lstm)
    assert (module.features, module.num_layers, module.bidirectional) == (H, num_layers, bidirectional)
    assert max_abs(apply(module, variables, x, lengths), out) <= ATOL

    last = apply(module.clone(return_sequences=False), variables, x, lengths)
    expected = np.concatenate([h_n[-2], h_n[-1]], -1) if bidirectional else h_n[-1]
    assert max_abs(last, expected) <= ATOL

    carries, _ = apply(module.clone(return_carry=True), variables, x, lengths)
    num_directions = 2 if bidirectional else 1
    for layer in range(num_layers):
        for direction in range(num_directions):
            k = layer * num_directions + direction
            assert max_abs(carries[layer][direction].h, h_n[k]) <= ATOL
            assert max_abs(carries[layer][direction].c, c_n[k]) <= ATOL


def test_time_major_torch_module_converts():
    lstm = make_torch(batch_first=False)
    x = inputs()
    out, _, _ = torch_run(lstm, x)  # torch_run feeds it time-major, returns batch-first
    module, variables = from_torch(lstm)
    assert max_abs(apply(module, variables, x), out) <= ATOL


def test_dropout_carries_over_and_is_identity_when_deterministic():
    lstm = make_torch(num_layers=2, dropout=0.25)
    module, variables = from_torch(lstm)
    assert module.dropout == 0.25
    lstm.eval()
    out, _, _ = torch_run(lstm, inputs())
    assert max_abs(apply(module, variables, inputs()), out) <= ATOL
    assert to_torch(module, variables).dropout == 0.25


def _assert_state_dicts_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_round_trip_from_torch_then_to_torch(num_layers, bidirectional):
    lstm = make_torch(num_layers, bidirectional)
    back = to_torch(*from_torch(lstm))
    original, converted = lstm.state_dict(), back.state_dict()
    assert list(original) == list(converted)
    for key in original:
        if key.startswith("weight"):
            assert torch.equal(original[key], converted[key]), key
    for key in (k for k in original if k.startswith("bias_ih")):
        hh = key.replace("bias_ih", "bias_hh")
        # jaxlstm keeps the sum (written to bias_ih; bias_hh = 0), so torch's bias sum is bit-identical.
        assert torch.equal(converted[key], original[key] + original[hh]), key
        assert torch.equal(converted[key] + converted[hh], original[key] + original[hh]), key
        assert not converted[hh].any()
    # a torch module whose bias_hh is zero (as to_torch writes it) round-trips bit for bit
    _assert_state_dicts_equal(to_torch(*from_torch(back)).state_dict(), back.state_dict())
    x = inputs()
    assert max_abs(torch_run(back, x)[0], torch_run(lstm, x)[0]) <= ATOL


def test_round_trip_bias_false_is_bitwise():
    lstm = make_torch(num_layers=2, bidirectional=True, bias=False)
    module, variables = from_torch(lstm)
    _assert_state_dicts_equal(to_torch(module, variables, bias=False).state_dict(), lstm.state_dict())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_round_trip_to_torch_then_from_torch_is_bitwise(bidirectional):
    module = jl.LSTM(H, num_layers=2, bidirectional=bidirectional)
    variables = random_variables(2, bidirectional)
    # non-zero biases, including a negative zero, must survive bit for bit
    b = variables["params"]["layer_0"]["b"]
    variables["params"]["layer_0"]["b"] = b.at[0].set(-0.0)

    lstm = to_torch(module, variables)
    assert lstm.batch_first and lstm.bias and (lstm.num_layers, lstm.bidirectional) == (2, bidirectional)
    module2, variables2 = from_torch(lstm)
    assert (module2.features, module2.num_layers, module2.bidirectional) == (H, 2, bidirectional)
    assert jax.tree.structure(variables2) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(variables2), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))

    x = inputs()
    out, _, _ = torch_run(lstm, x, LENGTHS)
    assert max_abs(apply(module, variables, x, LENGTHS), out) <= ATOL


def test_to_torch_rejects_what_torch_cannot_express():
    bidirectional = random_variables(1, True)
    with pytest.raises(ValueError, match="merge='sum'"):
        to_torch(jl.LSTM(H, bidirectional=True, merge="sum"), bidirectional)
    variables = random_variables(1, False)
    with pytest.raises(ValueError, match="reverse=True"):
        to_torch(jl.LSTM(H, reverse=True), variables)
    module = jl.LSTM(H)
    with pytest.raises(ValueError, match="not zero"):
        to_torch(module, variables, bias=False)
    with pytest.raises(ValueError, match="layer_1"):
        to_torch(jl.LSTM(H, num_layers=2), variables)
    with pytest.raises(ValueError, match=r"'w_ih'\] has shape .*features=7"):
        to_torch(jl.LSTM(H + 1), variables)
    with pytest.raises(TypeError, match="jaxlstm.LSTM"):
        to_torch(jl.LSTMCell(H), variables)


def test_from_torch_rejects_unsupported_options():
    with pytest.raises(TypeError, match="LSTMCell"):
        from_torch(torch.nn.LSTMCell(D, H))
    with pytest.raises(TypeError, match="GRU"):
        from_torch(torch.nn.GRU(D, H))


# --- loading saved state dicts -------------------------------------------------------------------


def test_load_torch_infers_the_configuration(tmp_path):
    lstm = make_torch(num_layers=2, bidirectional=True)
    path = tmp_path / "lstm.pt"
    torch.save(lstm.state_dict(), path)
    module, variables = load_torch(path, dropout=0.1)
    assert (module.features, module.num_layers, module.bidirectional, module.dropout) == (H, 2, True, 0.1)
    expected_module, expected = from_torch(lstm)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(variables), strict=True):
        assert np.array_equal(a, b)
    x = inputs()
    out, _, _ = torch_run(lstm, x, LENGTHS)
    assert max_abs(apply(module, variables, x, LENGTHS), out) <= ATOL


def test_load_torch_bias_false_and_prefixed_model_state_dict():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.LSTM(D, H, bias=False, batch_first=True)
            self.head = torch.nn.Linear(H, 2)

    model = Model()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    module, variables, unused = load_torch(buffer, return_unused=True)
    assert unused == ["head.weight", "head.bias"]
    assert (module.num_layers, module.bidirectional) == (1, False)
    assert not variables["params"]["layer_0"]["b"].any()
    out, _, _ = torch_run(model.encoder, inputs())
    assert max_abs(apply(module, variables, inputs()), out) <= ATOL


def test_state_dict_of_numpy_arrays_and_ambiguous_prefix():
    state = {k: v.numpy() for k, v in make_torch().state_dict().items()}
    module, variables = from_torch_state_dict(state)
    assert module.features == H
    two = {**{"a." + k: v for k, v in state.items()}, **{"b." + k: v for k, v in state.items()}}
    with pytest.raises(ValueError, match="prefix"):
        from_torch_state_dict(two)
    module, _, unused = from_torch_state_dict(two, prefix="b.", return_unused=True)
    assert module.features == H and unused == ["a." + k for k in state]


def _save(tmp_path, obj, name="bad.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_load_torch_malformed_files(tmp_path):
    state = make_torch(num_layers=2).state_dict()

    missing = dict(state)
    del missing["weight_hh_l1"]
    with pytest.raises(ValueError, match=r"bad\.pt.*missing key 'weight_hh_l1'"):
        load_torch(_save(tmp_path, missing))

    missing_bias = dict(state)
    del missing_bias["bias_hh_l0"]
    with pytest.raises(ValueError, match="missing key 'bias_hh_l0'"):
        load_torch(_save(tmp_path, missing_bias))

    misshaped = dict(state)
    misshaped["weight_ih_l1"] = torch.zeros(4 * H, H + 1)
    with pytest.raises(ValueError, match=r"'weight_ih_l1' has shape \(24, 7\), expected \(24, 6\)"):
        load_torch(_save(tmp_path, misshaped))

    bad_hidden = dict(state)
    bad_hidden["weight_hh_l0"] = torch.zeros(4 * H, H + 1)
    with pytest.raises(ValueError, match="'weight_hh_l0' has shape"):
        load_torch(_save(tmp_path, bad_hidden))

    bad_bias = dict(state)
    bad_bias["bias_ih_l0"] = torch.zeros(4 * H + 1)
    with pytest.raises(ValueError, match="'bias_ih_l0' has shape"):
        load_torch(_save(tmp_path, bad_bias))

    extra = dict(state)
    extra["weight_xx"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected key 'weight_xx'"):
        load_torch(_save(tmp_path, extra))

    with pytest.raises(ValueError, match="not a state dict"):
        load_torch(_save(tmp_path, torch.zeros(3)))
    with pytest.raises(ValueError, match="not the state dict of a torch.nn.LSTM"):
        load_torch(_save(tmp_path, torch.nn.Linear(2, 3).state_dict()))
    projected = torch.nn.LSTM(D, H, proj_size=2).state_dict()
    misshaped_hr = dict(projected)
    misshaped_hr["weight_hr_l0"] = torch.zeros(H, 2)
    with pytest.raises(ValueError, match=r"'weight_hr_l0' has shape \(6, 2\), expected \(proj_size, hidden_size\)"):
        load_torch(_save(tmp_path, misshaped_hr))
    bad_hh = dict(projected)
    bad_hh["weight_hh_l0"] = torch.zeros(4 * H, H)
    with pytest.raises(ValueError, match=r"'weight_hh_l0' has shape \(24, 6\), expected \(24, 2\)"):
        load_torch(_save(tmp_path, bad_hh))

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00definitely not a torch file\xff" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pt.*could not be read as a torch state dict"):
        load_torch(garbage)

    pickled_module = _save(tmp_path, make_torch(), "module.pt")  # a whole pickled module: refused, not unpickled
    with pytest.raises(ValueError, match=r"module\.pt.*weights_only"):
        load_torch(pickled_module)

    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="is not a file"):
        load_torch(tmp_path)


def test_low_precision_round_trips_are_bitwise():
    for dtype in (torch.bfloat16, torch.float16):
        lstm = make_torch(bias=False).to(dtype)
        module, variables = from_torch(lstm)
        assert module.param_dtype == jnp.dtype(str(dtype).removeprefix("torch."))
        _assert_state_dicts_equal(to_torch(module, variables, bias=False).state_dict(), lstm.state_dict())


def test_float64_without_x64_warns():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is enabled: float64 converts exactly")
    with pytest.warns(UserWarning, match="jax_enable_x64"):
        module, variables = from_torch(make_torch().double())
    assert variables["params"]["layer_0"]["w_ih"].dtype == jnp.float32


# --- LSTMs with projections (proj_size) ----------------------------------------------------------

P = 2
# torch's CPU kernel notes that it runs projections without oneDNN; nothing to act on.
no_onednn_warning = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


@no_onednn_warning
@pytest.mark.parametrize(
    "num_layers, bidirectional, packed",
    [(2, True, True), (3, False, True), (1, True, False)],
)
def test_from_torch_parity_with_projections(num_layers, bidirectional, packed):
    lstm = make_torch(num_layers, bidirectional, proj_size=P)
    x = inputs()
    lengths = LENGTHS if packed else None
    out, h_n, c_n = torch_run(lstm, x, lengths)
    assert out.shape[-1] == (2 * P if bidirectional else P) and h_n.shape[-1] == P and c_n.shape[-1] == H

    module, variables = from_torch(lstm)
    assert (module.features, module.variant, module.num_layers) == (H, jl.LSTMVariant(proj_size=P), num_layers)
    assert variables["params"]["layer_0"]["w_hr"].shape == (H, P)
    carries, hs = apply(module.clone(return_carry=True), variables, x, lengths)
    assert max_abs(hs, out) <= ATOL
    num_directions = 2 if bidirectional else 1
    for layer in range(num_layers):
        for direction in range(num_directions):
            k = layer * num_directions + direction
            assert max_abs(carries[layer][direction].h, h_n[k]) <= ATOL
            assert max_abs(carries[layer][direction].c, c_n[k]) <= ATOL


@no_onednn_warning
def test_projection_round_trips_are_bitwise():
    lstm = make_torch(num_layers=2, bidirectional=True, bias=False, proj_size=P)
    module, variables = from_torch(lstm)
    back = to_torch(module, variables, bias=False)
    assert back.proj_size == P
    _assert_state_dicts_equal(back.state_dict(), lstm.state_dict())

    module = jl.LSTM(H, num_layers=2, bidirectional=True, variant=jl.LSTMVariant(proj_size=P))
    variables = jax.tree.map(
        lambda a: jnp.asarray(np.random.default_rng(5).standard_normal(a.shape), a.dtype),
        jax.eval_shape(module.init, KEY, jnp.ones((B, T, D))),
    )
    lstm = to_torch(module, variables)
    module2, variables2 = from_torch(lstm)
    assert module2.variant.proj_size == P
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(variables2), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    x = inputs()
    assert max_abs(apply(module, variables, x, LENGTHS), torch_run(lstm, x, LENGTHS)[0]) <= ATOL


def test_load_torch_with_projections(tmp_path):
    lstm = make_torch(num_layers=2, proj_size=P)
    module, variables = load_torch(_save(tmp_path, lstm.state_dict(), "projected.pt"))
    assert (module.variant.proj_size, module.num_layers) == (P, 2)
    assert variables["params"]["layer_1"]["w_ih"].shape == (P, 4 * H)


def test_to_torch_rejects_variants_torch_lacks():
    Variant = jl.LSTMVariant
    variables = jax.eval_shape(jl.LSTM(H, variant=Variant(peepholes=True)).init, KEY, jnp.ones((B, T, D)))
    with pytest.raises(ValueError, match="torch.nn.LSTM has no peepholes=True, cell_clip=1.0; .* proj_size only"):
        to_torch(jl.LSTM(H, variant=Variant(peepholes=True, cell_clip=1.0)), variables)
    with pytest.raises(ValueError, match="torch.nn.LSTM has no zoneout_h=0.1"):
        to_torch(jl.LSTM(H, variant=Variant(proj_size=P, zoneout_h=0.1)), variables)
    with pytest.raises(ValueError, match="torch.nn.LSTM has no input_dropout=0.5"):  # torch's dropout is between layers
        to_torch(jl.LSTM(H, variant=Variant(input_dropout=0.5)), random_variables(1, False))
    plain = random_variables(1, False)
    with pytest.raises(ValueError, match=r"params\['layer_0'\]\['w_hr'\] is missing"):
        to_torch(jl.LSTM(H, variant=Variant(proj_size=P)), plain)
