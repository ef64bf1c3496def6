"""jaxlstm.explain: its numbers are the real modules' numbers, its words answer the question."""

import dataclasses
import itertools
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxlstm as jl
from jaxlstm import _checks
from jaxlstm.explain import Explanation, cell_params, explain, format_count
from jaxlstm.stack import MERGE_MODES

# distinct sizes, so a swapped axis cannot pass
B, T, D, H = 3, 5, 6, 4

GRID = [
    dict(num_layers=layers, bidirectional=bi, merge=merge, return_sequences=seq)
    for layers, bi, merge, seq in itertools.product((1, 2, 3), (False, True), MERGE_MODES, (True, False))
]


def _id(config):
    return "L{num_layers}-{bi}-{merge}-{seq}".format(
        num_layers=config["num_layers"],
        bi="bi" if config["bidirectional"] else "uni",
        merge=config["merge"],
        seq="seq" if config["return_sequences"] else "last",
    )


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


@pytest.mark.parametrize("config", GRID, ids=map(_id, GRID))
def test_explain_matches_linen_module(config):
    """Output, carries, every parameter shape and the total equal the real jl.LSTM's (abstractly evaluated)."""
    e = explain(B, T, D, H, **config)
    layer = jl.LSTM(H, return_carry=True, **config)
    x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    (carries, out), variables = jax.eval_shape(lambda x: layer.init_with_output(jax.random.key(0), x), x)
    params = variables["params"]

    assert tuple(out.shape) == e.output_shape
    assert _shapes(carries) == e.carry_shapes
    assert all(carry.h == e.carry_shape == (B, H) for layer_carries in e.carry_shapes for carry in layer_carries)
    assert dict(_shapes(params)) == e.param_shapes
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == e.total_params
    for info in e.layers:
        for cell in info.cells:
            assert tuple(params[cell.name]["w_ih"].shape) == (info.input_size, 4 * H)
            assert cell.num_params == sum(math.prod(a.shape) for a in jax.tree.leaves(params[cell.name]))
    assert e.output_shape[-1] == e.dense_input_size == layer.output_size
    assert str(format_count(e.total_params)) in str(e)


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(num_layers=3),
        dict(num_layers=2, bidirectional=True),
        dict(num_layers=2, bidirectional=True, merge="ave"),
    ],
    ids=["plain", "3-layers", "bi-concat", "bi-ave"],
)
def test_explain_matches_nnx_module(config):
    from flax import nnx

    e = explain(B, T, D, H, **config)
    model = nnx.eval_shape(lambda: jl.nnx.LSTM(D, H, rngs=nnx.Rngs(0), **config))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert _shapes(params) == e.param_shapes
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == e.total_params


def test_explain_numbers_single_layer():
    e = explain(4, 10, 8, 32)
    assert e.input_shape == (4, 10, 8)
    assert e.step_input_shape == (4, 8)
    assert e.gates_shape == (4, 128)
    assert e.gate_shape == e.carry_shape == e.step_output_shape == (4, 32)
    assert e.output_shape == (4, 10, 32)
    assert e.param_shapes == {"layer_0": {"w_ih": (8, 128), "w_hh": (32, 128), "b": (128,)}}
    assert e.total_params == 5248 == 4 * (32 * (8 + 32) + 32)
    assert len(e.layers) == 1 and e.layers[0].num_params == 5248
    assert e.layers[0].cells[0].formula == "4·(32·(8+32)+32) = 5,248"


def test_explain_numbers_stacked_bidirectional():
    e = explain(4, 10, 8, 32, num_layers=2, bidirectional=True, return_sequences=False)
    assert e.output_size == 64
    assert e.output_shape == (4, 64)
    assert [layer.input_size for layer in e.layers] == [8, 64]
    assert [cell.name for cell in e.cells] == ["layer_0", "layer_0_reverse", "layer_1", "layer_1_reverse"]
    assert [cell.direction for cell in e.cells] == ["forward", "backward"] * 2
    assert [cell.num_params for cell in e.cells] == [5248, 5248, 12416, 12416]
    assert e.total_params == 35328
    assert e.layers[1].sequence_shape == (4, 10, 64)


@pytest.mark.parametrize("merge, width", [("concat", 64), ("sum", 32), ("mul", 32), ("ave", 32)])
def test_merge_width(merge, width):
    e = explain(2, 3, 5, 32, num_layers=2, bidirectional=True, merge=merge)
    assert e.output_size == width == e.layers[1].input_size
    assert merge in str(e)


def test_merge_is_irrelevant_without_bidirectional():
    assert explain(2, 3, 5, 7, merge="sum").output_shape == explain(2, 3, 5, 7).output_shape == (2, 3, 7)


def test_cell_params_formula():
    for d, h in [(1, 1), (8, 32), (300, 1024)]:
        assert cell_params(d, h) == d * 4 * h + h * 4 * h + 4 * h


def test_thousands_separators():
    e = explain(128, 7, 300, 1024)
    assert e.total_params == 5_427_200
    assert "5,427,200" in str(e)
    assert "4·(1024·(300+1024)+1024)" in str(e)


def test_text_answers_the_question():
    text = str(explain(4, 10, 8, 32))
    for phrase in [
        "how are the 32 vectors",
        "They are not combined, because there are not 32 vectors",
        "ONE cell",
        "applied 10 times",
        "32 units = one 32-vector per step, not 32 vectors",
    ]:
        assert phrase in text


def test_text_walks_through_the_shapes_in_order():
    text = str(explain(4, 10, 8, 32, num_layers=2, bidirectional=True))
    steps = [
        "(B, T, D)   = (4, 10, 8)",  # input
        "x_t = x[:, t, :]",  # one step
        "(B, D)      = (4, 8)",
        "(B, 4H)     = (4, 128)",  # gates
        "i, f, g, o = split(z, 4)",
        "h = sig(o)*tanh(c)",  # new carry
        "(B, T, H)   = (4, 10, 32)",  # one direction's output
        "(B, H)      = (4, 32)      return_sequences=False",
        "bidirectional  merge='concat'",  # merge
        "next layer",
        "model output",
        "What a following Dense layer receives",
        "w_ih  (D, 4H)",  # parameters
        "w_hh  (H, 4H)",
        "b     (4H,)",
        "w_ih  (F, 4H)        = (64, 128)",  # layer 1 reads 2H
        "total (2 layers x 2 directions)",
    ]
    position = 0
    for step in steps:  # each one after the one before
        position = text.index(step, position) + len(step)
    assert "4·(H·(D+H)+H)" in text and "4·(H·(F+H)+H)" in text
    assert "35,328" in text


def test_text_dense_input():
    assert "(4, 10, 32). Dense(n)" in str(explain(4, 10, 8, 32))
    last_only = explain(4, 10, 8, 32, bidirectional=True, return_sequences=False)
    assert "(4, 64): one 64-vector per sequence" in str(last_only)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(batch=0), ValueError, "batch must be an int >= 1, got 0"),
        (dict(time=-1), ValueError, "time must be an int >= 1"),
        (dict(input_size=0), ValueError, "input_size must be an int >= 1"),
        (dict(units=0), ValueError, "units must be an int >= 1"),
        (dict(units=2.5), TypeError, "units must be an int >= 1, got float"),
        (dict(units=True), TypeError, "units must be an int >= 1, got the bool"),
        (dict(num_layers=0), ValueError, "num_layers must be an int >= 1"),
        (dict(bidirectional="yes"), TypeError, "bidirectional must be True or False"),
        (dict(return_sequences=1), TypeError, "return_sequences must be True or False"),
        (dict(merge="max"), ValueError, "merge must be one of 'concat', 'sum', 'mul', 'ave', got 'max'"),
        (dict(merge=None), TypeError, "merge must be a str"),
    ],
)
def test_explain_validates(kwargs, error, words):
    args = dict(batch=4, time=10, input_size=8, units=32) | kwargs
    batch, time, input_size, units = (args.pop(k) for k in ("batch", "time", "input_size", "units"))
    with pytest.raises(error, match=None) as info:
        explain(batch, time, input_size, units, **args)
    assert words in str(info.value)


def test_numpy_ints_accepted():
    import numpy as np

    assert explain(np.int64(4), 10, 8, np.int32(32)).carry_shape == (4, 32)


def test_explanation_is_frozen():
    e = explain(4, 10, 8, 32)
    assert isinstance(e, Explanation)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.units = 16
    assert e == explain(4, 10, 8, 32)


def test_explain_module_does_not_import_flax_or_matplotlib():
    code = "import sys, jaxlstm.explain; print(sorted({'flax', 'matplotlib'} & set(sys.modules)))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root)
    out = result.stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- the guide the errors point to

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_anchor_rule():
    assert _github_anchor("Units, cells and time steps") == "units-cells-and-time-steps"
    assert _github_anchor("Padding and seq_lengths") == "padding-and-seq_lengths"


def test_every_pointer_in_the_library_has_a_section_in_the_guide():
    guide = (ROOT / "docs" / "shapes.md").read_text(encoding="utf-8")
    anchors = {_github_anchor(line.lstrip("#")) for line in guide.splitlines() if re.match(r"#{1,6} ", line)}
    pointed = set()
    for path in (ROOT / "jaxlstm").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        pointed |= set(re.findall(r'_see\(\s*"([^"]+)"', source))
        pointed |= set(re.findall(r"(?:shapes\.md|GUIDE\})#([\w-]+)", source))
    pointed |= set(getattr(_checks, "_SECTIONS", {}).values())
    required = {"inputs", "carry", "parameters", "padding-and-seq_lengths", "units-cells-and-time-steps"}
    assert required <= anchors
    assert not pointed - anchors, f"pointers to sections docs/shapes.md lacks: {sorted(pointed - anchors)}"


# --------------------------------------------------------------------------- the GRU

GRU_GRID = [
    dict(num_layers=layers, bidirectional=bi, merge=merge, return_sequences=seq)
    for layers, bi, merge, seq in itertools.product((1, 2), (False, True), ("concat", "ave"), (True, False))
    if bi or merge == "concat"
]


@pytest.mark.parametrize("config", GRU_GRID, ids=map(_id, GRU_GRID))
def test_gru_explanation_matches_linen_module(config):
    """cell="gru": output, carries, every parameter shape and the total equal the real jl.GRU's."""
    e = explain(B, T, D, H, cell="gru", **config)
    layer = jl.GRU(H, return_carry=True, **config)
    x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    (carries, out), variables = jax.eval_shape(lambda x: layer.init_with_output(jax.random.key(0), x), x)
    params = variables["params"]

    assert tuple(out.shape) == e.output_shape
    assert _shapes(carries) == e.carry_shapes  # h alone per cell, nested [layer][direction]
    assert e.carry_shape == e.h_shape == (B, H) and e.c_shape is None
    assert dict(_shapes(params)) == e.param_shapes
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == e.total_params
    for cell in e.cells:
        assert cell.num_params == sum(math.prod(a.shape) for a in jax.tree.leaves(params[cell.name]))
    assert e.output_shape[-1] == e.dense_input_size


def test_gru_explanation_matches_nnx_module():
    from flax import nnx

    e = explain(B, T, D, H, cell="gru", num_layers=2, bidirectional=True)
    model = nnx.eval_shape(lambda: jl.nnx.GRU(D, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert _shapes(params) == e.param_shapes
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == e.total_params


@pytest.mark.slow  # imports torch
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (3, False), (1, True), (2, True)])
def test_gru_count_and_shapes_equal_torch(num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    gru = torch.nn.GRU(D, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
    e = explain(B, T, D, H, cell="gru", num_layers=num_layers, bidirectional=bidirectional)
    assert e.total_params == sum(p.numel() for p in gru.parameters())
    torch_shapes = {name: tuple(p.shape) for name, p in gru.named_parameters()}
    for cell in e.cells:  # weight_ih_l1_reverse (3H, F) is w_ih (F, 3H) transposed; the biases alike
        suffix = f"l{cell.layer}" + ("_reverse" if cell.direction == "backward" else "")
        ours = cell.param_shapes
        assert torch_shapes[f"weight_ih_{suffix}"] == ours["w_ih"][::-1]
        assert torch_shapes[f"weight_hh_{suffix}"] == ours["w_hh"][::-1]
        assert torch_shapes[f"bias_ih_{suffix}"] == ours["b_ih"] and torch_shapes[f"bias_hh_{suffix}"] == ours["b_hh"]
    x = torch.zeros(B, T, D)
    out, h_n = gru(x)
    assert tuple(out.shape) == e.output_shape
    assert tuple(h_n.shape) == (num_layers * e.num_directions, *e.carry_shape)


def test_gru_numbers():
    e = explain(4, 10, 8, 32, cell="gru")
    assert e.module_call == "jl.GRU(32)" and e.is_gru and e.gate_names == ("r", "z", "n")
    assert e.gates_shape == (4, 96) and e.gate_shape == e.carry_shape == (4, 32)
    assert e.param_shapes == {"layer_0": {"w_ih": (8, 96), "w_hh": (32, 96), "b_ih": (96,), "b_hh": (96,)}}
    assert e.total_params == 4032 == 8 * 96 + 32 * 96 + 96 + 96
    assert e.layers[0].cells[0].formula == "3·(32·(8+32)+2·32) = 4,032"
    assert e.variant.is_plain


def test_gru_cell_params_formula():
    for d, h in [(1, 1), (8, 32), (300, 1024)]:
        assert cell_params(d, h, cell="gru") == d * 3 * h + h * 3 * h + 2 * 3 * h
    assert cell_params(8, 32, cell="lstm") == cell_params(8, 32)


def test_a_gru_cell_instance_means_gru():
    assert explain(4, 10, 8, 32, cell=jl.cells.GRU(), num_layers=2) == explain(4, 10, 8, 32, cell="gru", num_layers=2)


def test_gru_text_shows_three_gates_and_no_c():
    text = str(explain(4, 10, 8, 32, cell="gru", num_layers=2, bidirectional=True))
    steps = [
        "jl.GRU(32, num_layers=2, bidirectional=True) on x",
        '"This GRU has 32 units',
        "a = x_t @ w_ih + b_ih  (B, 3H)     = (4, 96)",
        "u = h @ w_hh + b_hh    (B, 3H)     = (4, 96)",
        "r = sig(a_r + u_r)     (B, H)      = (4, 32)",
        "z = sig(a_z + u_z)",
        "n = tanh(a_n + r*u_n)",
        "4. new carry      h = (1-z)*n + z*h      (B, H)      = (4, 32)",
        "h -> step t+1",
        "(B, T, 2H)  = (4, 10, 64)",
        "h alone (there is no c), is (B, H) = (4, 32)",
        "The step as torch.nn.GRU writes it",
        "n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_(t-1) + b_hn))",
        "h_t = (1 - z_t) * n_t + z_t * h_(t-1)",
        "w_ih  (D, 3H)",
        "b_ih  (3H,)",
        "b_hh  (3H,)",
        "3·(H·(D+H)+2·H)  = 3·(32·(8+32)+2·32)    4,032",
        "w_ih  (F, 3H)          = (64, 96)",
        "total (2 layers x 2 directions)                                                26,880",
        "Gate order along the 3H axis: r, z, n",
        "docs/cells.md#the-gru",
    ]
    position = 0
    for step in steps:  # each one after the one before
        position = text.index(step, position) + len(step)
    for lstm_only in ("c = sig(f)", "(h, c)", "(B, 4H)", "i, f, g, o", "One bias b per cell", "Variant\n"):
        assert lstm_only not in text


def test_gru_diagram_is_refused_before_matplotlib():
    with pytest.raises(ValueError, match="diagram draws LSTM cells only, got cell='gru'"):
        explain(4, 10, 8, 32, cell="gru").diagram()


class _MyCell(jl.Cell):
    pass


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(cell="rnn"), ValueError, "cell must be one of 'lstm', 'gru' or a jl.cells.GRU(), got 'rnn'"),
        (dict(cell="GRU"), ValueError, "cell must be one of 'lstm', 'gru' or a jl.cells.GRU(), got 'GRU'"),
        (dict(cell=None), TypeError, "cell must be one of 'lstm', 'gru' or a jl.cells.GRU(), got NoneType None"),
        (dict(cell=_MyCell()), TypeError, "cell must be one of 'lstm', 'gru' or a jl.cells.GRU(), got _MyCell"),
        (dict(cell="gru", proj_size=2), ValueError, "proj_size=2 is an LSTM option: cell='gru' takes none of"),
        (dict(cell="gru", peepholes=True), ValueError, "peepholes=True is an LSTM option"),
        (dict(cell="gru", layer_norm=True), ValueError, "layer_norm=True is an LSTM option"),
        (dict(cell="gru", cifg=True), ValueError, "cifg=True is an LSTM option"),
        (dict(cell="gru", peepholes="yes"), TypeError, "peepholes must be True or False"),
        (dict(cell="gru", merge="max"), ValueError, "merge must be one of"),
    ],
)
def test_explain_validates_the_cell(kwargs, error, words):
    with pytest.raises(error) as info:
        explain(4, 10, 8, 32, **kwargs)
    assert words in str(info.value)
    if "LSTM option" in words:  # the choices: every LSTM-only option, and the cells
        assert "proj_size, peepholes, layer_norm, cifg" in str(info.value) and "'lstm', 'gru'" in str(info.value)


def test_cell_params_validates_the_cell():
    with pytest.raises(ValueError, match="cell must be one of 'lstm', 'gru', got 'rnn'"):
        cell_params(8, 32, cell="rnn")
    with pytest.raises(ValueError, match="peepholes=True is an LSTM option"):
        cell_params(8, 32, cell="gru", peepholes=True)
