"""``summary``: a Keras-style table of a Flax model's layers, shapes and parameter counts.

Works on any ``flax.linen`` or ``flax.nnx`` model, whatever layers it mixes;
for jaxlstm's layers it also shows the carry each cell keeps, (batch, H) per
layer and direction. Everything is computed with ``jax.eval_shape``: no
weights are initialised and nothing runs on the accelerator, so it is instant
even for large models. Flax is imported when ``summary`` runs, not before.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import jax

from . import _checks
from ._text import format_count
from .cell import LSTMCarry

__all__ = ["summary", "Summary", "SummaryRow"]


class Shape(tuple):
    """An array's shape in a summary: a plain tuple of ints (compares equal to one)."""

    __slots__ = ()


@dataclass(frozen=True)
class SummaryRow:
    """One module call in the model.

    Attributes:
        name: the module's path in the model, dotted: ``"LSTM_0"``,
            ``"encoder.lstm"``, ``"layers.0"``; ``""`` for the model itself.
        path: the same path as a tuple.
        type: the module's class: ``"jl.LSTM"``, ``"jl.nnx.LSTM"``, ``"Dense"``, ...
        depth: 0 for the model itself, 1 for its direct children, ...
        input_shape: the shape of the call's input (its single positional
            argument), or a tuple with one shape tree per positional argument.
            Shapes are tuples of ints; containers keep their structure
            (e.g. ``LSTMCarry(h=(4, 32), c=(4, 32))``).
        output_shape: the shape tree of what the call returned.
        carry_shape: for recurrent layers, the shape of one cell's ``h`` (and
            ``c``): (batch, H) — (batch, P) for a layer with ``proj_size`` P,
            whose ``c`` stays (batch, H) (see ``carry_shapes``); ``None`` for
            other layers.
        carry_shapes: for ``jl.LSTM`` / ``jl.nnx.LSTM``, every carry nested
            ``[layer][direction]`` → ``LSTMCarry(h=(B, H), c=(B, H))``, as the
            layer returns with ``return_carry=True``; ``None`` otherwise.
        num_params: the parameters of this module and everything under it.
        calls: how many times the model called it with these shapes.
        is_jaxlstm: whether the module is one of jaxlstm's.
    """

    name: str
    path: tuple
    type: str
    depth: int
    input_shape: Any
    output_shape: Any
    carry_shape: tuple[int, ...] | None
    carry_shapes: tuple | None
    num_params: int
    calls: int = 1
    is_jaxlstm: bool = False


@dataclass(frozen=True)
class Summary:
    """A model's layers; ``str()`` is the table.

    Attributes:
        model_type: the model's class name.
        api: ``"linen"`` or ``"nnx"``.
        rows: one ``SummaryRow`` per module call, in call order (the model
            itself first, as ``rows[0]``); ``layers`` leaves the model out.
        input_shape, output_shape: the model's.
        total_params: every parameter of the model, shared ones counted once.
    """

    model_type: str
    api: str
    rows: tuple[SummaryRow, ...]
    total_params: int

    @property
    def layers(self) -> tuple[SummaryRow, ...]:
        """The rows of the model's modules, without the model itself."""
        return tuple(row for row in self.rows if row.depth > 0)

    @property
    def input_shape(self):
        return self.rows[0].input_shape

    @property
    def output_shape(self):
        return self.rows[0].output_shape

    def __getitem__(self, name: str) -> SummaryRow:
        """The first row whose ``name`` is ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no module named {name!r} in this summary; names: {[row.name for row in self.layers]}")

    def __str__(self) -> str:
        return _table(self)


def summary(model, /, *args, **call_kwargs) -> Summary:
    """A Keras-style summary of a Flax model: every layer's shapes and parameter count.

    Args:
        model: a ``flax.linen.Module`` (unbound: it is initialised abstractly
            with ``jax.eval_shape``) or a ``flax.nnx.Module`` (its parameters
            are counted as they are; the call runs abstractly and leaves the
            model untouched).
        *args: the model's positional inputs: arrays, or
            ``jax.ShapeDtypeStruct`` when you only have shapes.
        **call_kwargs: keyword arguments of the call; arrays among them (e.g.
            ``seq_lengths``) are abstract too, anything else (e.g.
            ``deterministic=True``) is passed as it is.

    Returns:
        a ``Summary``: ``print`` it for the table; ``.rows`` / ``.layers``
        hold each call's name, type, input and output shapes, carry shape and
        parameter count, and ``.total_params`` the model's total.

    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxlstm as jl
    >>> class Tagger(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(5)(jl.LSTM(32)(x))
    >>> s = jl.summary(Tagger(), jnp.ones((4, 10, 8)))
    >>> [(row.name, row.output_shape, row.num_params) for row in s.layers]
    [('LSTM_0', (4, 10, 32), 5248), ('Dense_0', (4, 10, 5), 165)]
    >>> s["LSTM_0"].carry_shape, s.total_params
    ((4, 32), 5413)
    """
    import flax.linen as nn
    from flax import nnx

    if isinstance(model, nnx.Module):
        return _summary_nnx(model, args, call_kwargs)
    if isinstance(model, nn.Module):
        if model.scope is not None:
            raise TypeError(
                "summary needs an unbound linen module (the model as you construct it, e.g. MyModel()), "
                "not one bound to variables"
            )
        return _summary_linen(model, args, call_kwargs)
    raise TypeError(
        f"model must be a flax.linen.Module or a flax.nnx.Module, got {_checks.described(model)}; "
        "call jl.summary(model, *inputs)"
    )


# ------------------------------------------------------------------------------------------ shared


def _split_arrays(tree):
    """Splits a pytree into its array leaves (to trace) and a function putting them back."""
    leaves, treedef = jax.tree.flatten(tree)
    is_array = [hasattr(leaf, "shape") and hasattr(leaf, "dtype") for leaf in leaves]
    arrays = [leaf for leaf, a in zip(leaves, is_array, strict=True) if a]

    def rebuild(new_arrays):
        it = iter(new_arrays)
        return treedef.unflatten([next(it) if a else leaf for leaf, a in zip(leaves, is_array, strict=True)])

    return arrays, rebuild


def _shapes(tree):
    """The tree with every array replaced by its ``Shape``; other leaves kept."""
    return jax.tree.map(lambda a: Shape(a.shape) if hasattr(a, "shape") else a, tree)


def _input_shapes(args):
    return _shapes(args[0]) if len(args) == 1 else _shapes(tuple(args))


def _size(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape"))


def _carry(module, args, stack: bool) -> tuple[Shape | None, tuple[tuple[Any, ...], ...] | None]:
    """(carry_shape, carry_shapes) of a jaxlstm layer or any RNN cell; (None, None) otherwise.

    The ``LSTMCarry`` values hold shapes, not arrays: a carry's structure.
    """
    if stack:  # jl.LSTM / jl.nnx.LSTM: x is (*batch, T, D); h has proj_size features with a projection
        batch = tuple(args[0].shape[:-2])
        shape = Shape((*batch, module.features))
        if type(module).__name__ == "GRU":  # jl.GRU / jl.nnx.GRU: the carry is h alone
            return shape, tuple((shape,) * (2 if module.bidirectional else 1) for _ in range(module.num_layers))
        h_shape = Shape((*batch, getattr(module, "recurrent_size", module.features)))
        directions = 2 if module.bidirectional else 1
        one = LSTMCarry._make((h_shape, shape))
        return h_shape, tuple((one,) * directions for _ in range(module.num_layers))
    if len(args) >= 2:  # an RNN cell, called as cell(carry, x)
        carry = _shapes(args[0])
        if isinstance(carry, LSTMCarry):
            return cast(Shape, carry.h), None  # _shapes made every array a Shape
        leaves = jax.tree.leaves(carry, is_leaf=lambda s: isinstance(s, Shape))
        return (leaves[0] if leaves else None), None
    return None, None


def _type_name(module) -> tuple[str, bool, bool]:
    """(display name, is jaxlstm's, is a jaxlstm layer stack)."""
    cls = type(module)
    if cls.__module__ in ("jaxlstm.linen", "jaxlstm.gru_linen"):
        return f"jl.{cls.__name__}", True, cls.__name__ in ("LSTM", "GRU")
    if cls.__module__ in ("jaxlstm.nnx", "jaxlstm.gru_nnx"):
        return f"jl.nnx.{cls.__name__}", True, cls.__name__ in ("LSTM", "GRU")
    return cls.__name__, False, False


def _is_rnn_cell(module) -> bool:
    import flax.linen as nn
    from flax import nnx

    cell_bases = tuple(c for c in (getattr(nn, "RNNCellBase", None), getattr(nnx, "RNNCellBase", None)) if c)
    return isinstance(module, cell_bases) or type(module).__name__ == "LSTMCell"


def _row(path, module, args, output, num_params) -> SummaryRow:
    type_name, is_jaxlstm, is_stack = _type_name(module)
    carry_shape, carry_shapes = None, None
    if is_stack or _is_rnn_cell(module):
        carry_shape, carry_shapes = _carry(module, args, is_stack)
    return SummaryRow(
        name=".".join(map(str, path)),
        path=tuple(path),
        type=type_name,
        depth=len(path),
        input_shape=_input_shapes(args),
        output_shape=_shapes(output),
        carry_shape=carry_shape,
        carry_shapes=carry_shapes,
        num_params=num_params,
        is_jaxlstm=is_jaxlstm,
    )


def _merge_repeats(rows: list[SummaryRow]) -> tuple[SummaryRow, ...]:
    """One row per (module, shapes): repeated calls (shared layers, scan tracing twice) counted in ``calls``."""
    merged: dict[tuple, SummaryRow] = {}
    for row in rows:
        key = (row.path, repr(row.input_shape), repr(row.output_shape))
        if key in merged:
            old = merged[key]
            merged[key] = dataclasses.replace(old, calls=old.calls + 1)
        else:
            merged[key] = row
    root = [row for row in merged.values() if row.depth == 0]
    return tuple(root + [row for row in merged.values() if row.depth > 0])


# ------------------------------------------------------------------------------------------ linen


def _summary_linen(model, args, kwargs) -> Summary:
    import flax.linen as nn

    arrays, rebuild = _split_arrays((args, kwargs))
    calls = []  # (path, module, args, output), in call order

    def interceptor(next_fun, call_args, call_kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*call_args, **call_kwargs)
        index = len(calls)
        calls.append(None)
        output = next_fun(*call_args, **call_kwargs)
        module = context.module
        calls[index] = (tuple(module.path), module, _shape_structs(call_args), _shape_structs(output))
        return output

    rngs = dict(zip(("params", "dropout"), jax.random.split(jax.random.key(0)), strict=True))

    def init(*arrays):
        call_args, call_kwargs = rebuild(arrays)
        return model.init_with_output(rngs, *call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        _, variables = jax.eval_shape(init, *arrays)
    params = variables.get("params", {})

    def params_under(path):
        tree = params
        for key in path:
            if not isinstance(tree, dict) or key not in tree:
                return 0
            tree = tree[key]
        return _size(tree)

    rows = [_row(path, module, a, out, params_under(path)) for path, module, a, out in calls if path is not None]
    rows = _merge_repeats(rows)
    if not rows or rows[0].depth != 0:
        raise RuntimeError("summary: the model's own __call__ was not seen; call summary(model, *inputs)")
    return Summary(type(model).__name__, "linen", rows, _size(params))


def _shape_structs(tree):
    """Tracers → ShapeDtypeStruct, so shapes survive the trace that made them."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a, tree)


# ------------------------------------------------------------------------------------------ nnx


def _summary_nnx(model, args, kwargs) -> Summary:
    from flax import nnx

    modules = list(nnx.iter_modules(model))
    num_params = {path: _size(nnx.state(module, nnx.Param)) for path, module in modules}
    types_by_path = {path: module for path, module in modules}

    # Wrap each class's own __call__ for the duration of one abstract call; only the
    # modules of the model being summarised (looked up by id in the traced copy) record.
    owners = set()
    for _, module in modules:
        owner = next((k for k in type(module).__mro__ if "__call__" in vars(k)), None)
        if owner is not None and owner is not object:
            owners.add(owner)
    paths_by_id: dict[int, tuple] = {}
    calls = []

    def wrap(original):
        @functools.wraps(original)
        def recording_call(self, *call_args, **call_kwargs):
            path = paths_by_id.get(id(self))
            if path is None:
                return original(self, *call_args, **call_kwargs)
            index = len(calls)
            calls.append(None)
            output = original(self, *call_args, **call_kwargs)
            calls[index] = (path, _shape_structs(call_args), _shape_structs(output))
            return output

        return recording_call

    graphdef, state = nnx.split(model)
    arrays, rebuild = _split_arrays((args, kwargs))

    def run(state, arrays):
        copy = nnx.merge(graphdef, state)
        paths_by_id.clear()
        paths_by_id.update({id(module): tuple(path) for path, module in nnx.iter_modules(copy)})
        call_args, call_kwargs = rebuild(arrays)
        return copy(*call_args, **call_kwargs)

    originals = {owner: vars(owner)["__call__"] for owner in owners}
    try:
        for owner, original in originals.items():
            owner.__call__ = wrap(original)
        jax.eval_shape(run, state, arrays)
    finally:
        for owner, original in originals.items():
            owner.__call__ = original
        paths_by_id.clear()

    rows = [
        _row(path, types_by_path[path], a, out, num_params.get(path, 0))
        for path, a, out in (c for c in calls if c is not None)
        if path in types_by_path
    ]
    rows = _merge_repeats(rows)
    if not rows or rows[0].depth != 0:
        raise RuntimeError("summary: the model's own __call__ was not seen; call summary(model, *inputs)")
    return Summary(type(model).__name__, "nnx", rows, num_params[()])


# ------------------------------------------------------------------------------------------ the table


def _fmt(tree) -> str:
    """A shape tree as compact text: ``(4, 10, 8)``, ``h, c (4, 32)``, ``2x[h, c (4, 32)]``."""
    if isinstance(tree, Shape):
        return str(tuple(tree))
    if isinstance(tree, LSTMCarry) and isinstance(tree.h, Shape) and tree.h == tree.c:
        return f"h, c {tuple(tree.h)}"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (tuple, list)):
        parts = [_fmt(item) for item in tree]
        if len(parts) > 1 and len(set(parts)) == 1:
            return f"{len(parts)}x[{parts[0]}]"
        return "[" + ", ".join(parts) + "]"
    if tree is None:
        return "-"
    return repr(tree)


def _carry_text(row: SummaryRow) -> str:
    if row.carry_shape is None:
        return ""
    gru = "GRU" in row.type  # a GRU's carry is h alone
    text = f"{'h' if gru else 'h, c'} {tuple(row.carry_shape)}"
    if row.carry_shapes is not None:
        first = row.carry_shapes[0][0]
        if not gru and first.h != first.c:  # a projection: h (batch, P), c (batch, H)
            text = f"h {tuple(first.h)}, c {tuple(first.c)}"
        layers, directions = len(row.carry_shapes), len(row.carry_shapes[0])
        if layers * directions > 1:
            text += f" x {layers}x{directions}"
    return text


def _table(s: Summary) -> str:
    header = ("Layer (type)", "Input shape", "Output shape", "Carry per cell", "Params")
    body = []
    for row in s.layers or s.rows:
        name = "  " * max(row.depth - 1, 0) + (row.name or "(model)") + f" ({row.type})"
        if row.calls > 1:
            name += f" x{row.calls} calls"
        shapes = (_fmt(row.input_shape), _fmt(row.output_shape), _carry_text(row))
        body.append((name, *shapes, format_count(row.num_params)))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells):
        last = len(cells) - 1
        return "  ".join(
            c.rjust(w) if i == last else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "=" * len(line(header))
    title = f'Model: "{s.model_type}" (flax.{s.api})'
    out = [title, rule, line(header), "-" * len(rule), *map(line, body), rule]
    out.append(f"Total params: {format_count(s.total_params)}")
    out.append(f"Input: {_fmt(s.input_shape)}  ->  output: {_fmt(s.output_shape)}")
    if any(row.carry_shape is not None for row in s.rows):
        lstm = any(r.carry_shape is not None and "GRU" not in r.type for r in s.rows)
        gru = any(r.carry_shape is not None and "GRU" in r.type for r in s.rows)
        kept = "h and c, each (batch, H)" if lstm else "h, (batch, H)"
        kept += " (a GRU's: h alone)" if lstm and gru else ""
        out.append(
            f"Carry per cell: {kept}, kept by every recurrent cell; a jaxlstm layer has one cell "
            "per layer and direction (x layers x directions), nested [layer][direction]. See "
            f"{_checks.GUIDE}#carry (jaxlstm docs shapes#carry)"
        )
    if any(
        row.carry_shapes is not None
        and isinstance(row.carry_shapes[0][0], LSTMCarry)
        and row.carry_shapes[0][0].h != row.carry_shapes[0][0].c
        for row in s.rows
    ):
        out.append(
            "With proj_size P, h is (batch, P) and c stays (batch, H); "
            "see docs/variants.md#projection (jaxlstm docs variants#projection)"
        )
    return "\n".join(out)
