"""Rules the interop converters share, each written once (issue 23): pinned here across converters.

* a ``jl.LSTM``'s variables are checked against its configuration (``read_stack``), projected
  ones (``proj_size``) included: missing, extra and misshaped entries are named;
* a cell's parameter-tree name (``layer_0``, ``layer_0_reverse``) is the same for an LSTM, a
  converted one and a GRU stack's variables;
* the variant options a target framework lacks are refused by name (``layer_norm_epsilon`` is no
  option of its own).

The arrays are built by hand (NumPy zeros): nothing here compiles.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxlstm as jl  # noqa: E402

# Imported here, not in the tests, so that importing them (seconds) is not a test's time.
try:
    import torch
except ImportError:
    torch = None
try:
    import keras
except ImportError:
    keras = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

D, H, P = 3, 5, 2


def _cells(num_layers: int, bidirectional: bool, proj: int | None) -> dict:
    """Zero params of the right shapes for ``jl.LSTM(H, ...)``: w_ih (F, 4H), w_hh (R, 4H), b (4H,), w_hr (H, P)."""
    directions = 2 if bidirectional else 1
    recurrent = H if proj is None else proj
    params = {}
    for layer in range(num_layers):
        reads = D if layer == 0 else directions * recurrent
        for direction in range(directions):
            cell = {
                "w_ih": np.zeros((reads, 4 * H), np.float32),
                "w_hh": np.zeros((recurrent, 4 * H), np.float32),
                "b": np.zeros((4 * H,), np.float32),
            }
            if proj is not None:
                cell["w_hr"] = np.zeros((H, proj), np.float32)
            params[f"layer_{layer}" + ("_reverse" if direction else "")] = cell
    return params


def _set(params, name, field, value):
    params = {key: dict(cell) for key, cell in params.items()}
    params[name][field] = value
    return params


def _drop(params, name):
    return {key: cell for key, cell in params.items() if key != name}


PROJECTED = _cells(2, True, P)
PLAIN = _cells(2, True, None)
PROJECTED_CASES = [
    (
        _set(PROJECTED, "layer_0", "w_hr", np.zeros((P, H), np.float32)),
        r"params\['layer_0'\]\['w_hr'\] has shape \(2, 5\), expected \(5, 2\) for features=5, proj_size=2",
    ),
    (
        _set(PROJECTED, "layer_0", "w_hh", np.zeros((H, 4 * H), np.float32)),
        r"params\['layer_0'\]\['w_hh'\] has shape \(5, 20\), expected \(2, 20\) for features=5, proj_size=2",
    ),
    (  # layers after the first read 2P features (bidirectional), not 2H
        _set(PROJECTED, "layer_1_reverse", "w_ih", np.zeros((2 * H, 4 * H), np.float32)),
        r"params\['layer_1_reverse'\]\['w_ih'\] has shape \(10, 20\), expected \(4, 20\) for features=5, proj_size=2",
    ),
    (_drop(PROJECTED, "layer_1_reverse"), r"params\['layer_1_reverse'\] is missing"),
    (
        {**PROJECTED, "layer_2": PROJECTED["layer_1"]},
        r"params has entries \['layer_2'\] that a jaxlstm.LSTM with num_layers=2, bidirectional=True does not have",
    ),
    (
        _set(PROJECTED, "layer_0", "scale", np.ones((H,), np.float32)),
        r"params\['layer_0'\] has unexpected entries \['scale'\]",
    ),
]
PLAIN_CASES = [
    (
        _set(PLAIN, "layer_0", "w_hh", np.zeros((P, 4 * H), np.float32)),
        r"params\['layer_0'\]\['w_hh'\] has shape \(2, 20\), expected \(5, 20\) for features=5, input_size=3",
    ),
    (
        _set(PLAIN, "layer_0", "w_hr", np.zeros((H, P), np.float32)),
        r"params\['layer_0'\] has unexpected entries \['w_hr'\]; expected w_ih, w_hh, b",
    ),
    (_drop(PLAIN, "layer_0_reverse"), r"params\['layer_0_reverse'\] is missing"),
]


@pytest.mark.parametrize(
    "proj, params, message", [(P, *case) for case in PROJECTED_CASES] + [(None, *case) for case in PLAIN_CASES]
)
@needs_torch
def test_to_torch_checks_every_entry_against_the_modules_configuration(proj, params, message):
    from jaxlstm.interop import to_torch

    module = jl.LSTM(H, num_layers=2, bidirectional=True, variant=None if proj is None else jl.LSTMVariant(proj_size=P))
    with pytest.raises(ValueError, match=message):
        to_torch(module, {"params": params})


@needs_torch
@pytest.mark.parametrize("proj", [None, P])
def test_to_torch_bias_false_names_the_cell_whose_bias_is_not_zero(proj):
    from jaxlstm.interop import to_torch

    params = _cells(2, True, proj)
    params = _set(params, "layer_1_reverse", "b", np.ones((4 * H,), np.float32))
    module = jl.LSTM(H, num_layers=2, bidirectional=True, variant=None if proj is None else jl.LSTMVariant(proj_size=P))
    with pytest.raises(ValueError, match=r"to_torch\(bias=False\): the biases \['layer_1_reverse.b'\] are not zero"):
        to_torch(module, {"params": params}, bias=False)
    lstm = to_torch(module, {"params": _cells(2, True, proj)}, bias=False)  # zero biases convert
    assert sorted(k for k in lstm.state_dict() if "reverse" in k and "l1" in k) == sorted(
        ["weight_ih_l1_reverse", "weight_hh_l1_reverse"] + (["weight_hr_l1_reverse"] if proj else [])
    )


def test_cell_names_are_one_rule_for_lstms_and_gru_stacks():
    """``from_torch_state_dict``'s parameter tree and ``gru_stack_to_variables``' name cells alike."""
    from jaxlstm.interop import from_torch_state_dict, gru_stack_from_variables, gru_stack_to_variables

    state = {}
    for layer in range(2):
        for suffix in ("", "_reverse"):
            state[f"weight_ih_l{layer}{suffix}"] = np.zeros((4 * H, D if layer == 0 else 2 * H), np.float32)
            state[f"weight_hh_l{layer}{suffix}"] = np.zeros((4 * H, H), np.float32)
    _, lstm = from_torch_state_dict(state)
    gru = jl.GRUParams(*(np.zeros(shape, np.float32) for shape in ((D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))))
    deeper = jl.GRUParams(np.zeros((2 * H, 3 * H), np.float32), *gru[1:])
    variables = gru_stack_to_variables(((gru, gru), (deeper, deeper)))
    names = ["layer_0", "layer_0_reverse", "layer_1", "layer_1_reverse"]
    assert list(variables["params"]) == list(lstm["params"]) == names
    assert [len(directions) for directions in gru_stack_from_variables(variables)] == [2, 2]
    with pytest.raises(ValueError, match=r"missing \['layer_1_reverse'\], unexpected \[\]"):
        gru_stack_from_variables({"params": _drop(variables["params"], "layer_1_reverse")})


@pytest.mark.parametrize("target", ["torch", "keras"])
def test_variant_options_a_target_lacks_are_refused_by_name(target):
    """``layer_norm_epsilon`` rides with ``layer_norm``: only ``layer_norm=True`` is named."""
    if target == "torch":
        if torch is None:
            pytest.skip("torch is not installed")
        from jaxlstm.interop import to_torch as convert

        expected = r"to_torch: torch.nn.LSTM has no layer_norm=True; of jaxlstm's LSTM variants it has proj_size only"
    else:
        if keras is None or keras.backend.backend() != "jax":
            pytest.skip("the Keras interop needs KERAS_BACKEND=jax")
        from jaxlstm.interop import to_keras as convert

        expected = (
            r"to_keras: keras.layers.LSTM has no layer_norm=True; of jaxlstm's LSTM variants it has input_dropout "
            r"\(its dropout\) and recurrent_dropout only \(see docs/variants.md, or run jaxlstm docs variants\)"
        )
    variant = jl.LSTMVariant(layer_norm=True, layer_norm_epsilon=1e-3)
    with pytest.raises(ValueError, match=expected):
        convert(jl.LSTM(H, variant=variant), {"params": _cells(1, False, None)})
