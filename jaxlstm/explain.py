"""``explain``: every shape and parameter of an LSTM configuration, in words.

Answers the question every newcomer asks — "an LSTM layer has N units and each
unit outputs a vector: how are the N vectors combined for the next Dense
layer?" — for one concrete configuration, with the real numbers substituted:
there is one cell per layer and direction, applied once per time step, and
``units`` is the size H of its state vector, so each step makes one H-vector
(per sequence), not H vectors. Nothing is combined.

Pure Python: imports neither Flax nor JAX arrays, runs instantly.

>>> import jaxlstm as jl
>>> e = jl.explain(batch=4, time=10, input_size=8, units=32)
>>> e.output_shape, e.carry_shape, e.total_params
((4, 10, 32), (4, 32), 5248)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _checks
from .cell import LSTMCarry
from .stack import MERGE_MODES, merged_size

__all__ = ["explain", "Explanation", "CellInfo", "LayerInfo", "cell_params", "format_count"]

GUIDE = _checks.GUIDE

_MERGE_WORDS = {
    "concat": "concatenated side by side: [h_forward, h_backward], 2H = {f} features",
    "sum": "added element-wise: h_forward + h_backward, H = {f} features",
    "mul": "multiplied element-wise: h_forward * h_backward, H = {f} features",
    "ave": "averaged element-wise: (h_forward + h_backward) / 2, H = {f} features",
}


def format_count(n: int) -> str:
    """``5248`` → ``"5,248"``."""
    return f"{n:,}"


def cell_params(input_size: int, hidden_size: int) -> int:
    """The parameters of one cell (one layer, one direction): 4·(H·(D+H)+H).

    ``w_ih`` (D, 4H) + ``w_hh`` (H, 4H) + ``b`` (4H,), one bias (PyTorch has
    two, ``b_ih`` and ``b_hh``, so 4H more per cell).

    >>> cell_params(8, 32)
    5248
    """
    d, h = input_size, hidden_size
    return 4 * (h * (d + h) + h)


def _shape(shape: tuple[int, ...]) -> str:
    """``(4, 32)`` → ``"(4, 32)"``; ``(128,)`` → ``"(128,)"``."""
    return str(tuple(shape))


@dataclass(frozen=True)
class CellInfo:
    """One cell: one layer, one direction. Its weights are shared by all T steps.

    Attributes:
        layer: the layer index l (0 reads the input).
        direction: ``"forward"`` or ``"backward"``.
        name: the parameter-tree key, as in ``jl.LSTM``'s params:
            ``"layer_0"``, ``"layer_0_reverse"``.
        input_size: D_l, the size of one step's input to this cell.
        hidden_size: H.
        param_shapes: ``{"w_ih": (D_l, 4H), "w_hh": (H, 4H), "b": (4H,)}``.
        num_params: 4·(H·(D_l+H)+H).
    """

    layer: int
    direction: str
    name: str
    input_size: int
    hidden_size: int
    param_shapes: dict
    num_params: int

    @property
    def formula(self) -> str:
        """The count with the numbers substituted: ``"4·(32·(8+32)+32) = 5,248"``."""
        d, h = self.input_size, self.hidden_size
        return f"4·({h}·({d}+{h})+{h}) = {format_count(self.num_params)}"


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the stack: one cell per direction.

    Attributes:
        index: l.
        input_size: D_l — D for layer 0, F for later layers.
        output_size: F — 2H for bidirectional "concat", else H.
        cells: one ``CellInfo`` per direction (forward first).
        param_shapes: the shapes of one cell's ``w_ih``, ``w_hh``, ``b``
            (the same for both directions).
        num_params: this layer's parameters, all directions.
        sequence_shape: this layer's output for every step, (B, T, F).
    """

    index: int
    input_size: int
    output_size: int
    cells: tuple[CellInfo, ...]
    param_shapes: dict
    num_params: int
    sequence_shape: tuple[int, ...]

    @property
    def num_directions(self) -> int:
        return len(self.cells)


@dataclass(frozen=True)
class Explanation:
    """The shapes and parameters of one LSTM configuration; ``str()`` is the walk-through.

    Attributes (B = batch, T = time, D = input_size, H = units, F = output_size):
        batch, time, input_size, units, num_layers, bidirectional, merge,
        return_sequences: the configuration.
        num_directions: 1 or 2.
        output_size: F, the width of each layer's output (2H for bidirectional
            "concat", else H).
        input_shape: (B, T, D).
        step_input_shape: one step's input x_t, (B, D) (layer 0).
        gates_shape: the gate pre-activations z, (B, 4H).
        gate_shape: each of i, f, g, o, (B, H).
        carry_shape: h and c of one cell, (B, H).
        carry_shapes: all carries nested ``[layer][direction]`` →
            ``LSTMCarry(h=(B, H), c=(B, H))``, the structure ``jl.LSTM``
            returns with ``return_carry=True``.
        step_output_shape: one step's output h_t of one cell, (B, H).
        output_shape: the whole model's output, (B, T, F) or (B, F).
        dense_input_size: F, the size a following Dense layer's kernel
            reads: ``nn.Dense(n)`` gets a kernel of shape (F, n).
        layers: one ``LayerInfo`` per layer.
        cells: every ``CellInfo``, layer by layer, forward before backward.
        param_shapes: ``{"layer_0": {"w_ih": ..., "w_hh": ..., "b": ...}, ...}``,
            the same tree as ``jl.LSTM``'s ``params`` (and ``jl.nnx.LSTM``'s).
        total_params: the sum over all layers and directions.
    """

    batch: int
    time: int
    input_size: int
    units: int
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = "concat"
    return_sequences: bool = True

    # ------------------------------------------------------------------ shapes

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return merged_size(self.units, self.num_directions, self.merge)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.time, self.input_size)

    @property
    def step_input_shape(self) -> tuple[int, int]:
        return (self.batch, self.input_size)

    @property
    def gates_shape(self) -> tuple[int, int]:
        return (self.batch, 4 * self.units)

    @property
    def gate_shape(self) -> tuple[int, int]:
        return (self.batch, self.units)

    @property
    def carry_shape(self) -> tuple[int, int]:
        return (self.batch, self.units)

    @property
    def step_output_shape(self) -> tuple[int, int]:
        return (self.batch, self.units)

    @property
    def carry_shapes(self) -> tuple[tuple[LSTMCarry, ...], ...]:
        one = LSTMCarry(self.carry_shape, self.carry_shape)
        return tuple((one,) * self.num_directions for _ in range(self.num_layers))

    @property
    def sequence_output_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.time, self.output_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.return_sequences:
            return self.sequence_output_shape
        return (self.batch, self.output_size)

    @property
    def dense_input_size(self) -> int:
        return self.output_size

    # -------------------------------------------------------------- parameters

    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        h, f = self.units, self.output_size
        out = []
        for layer in range(self.num_layers):
            d = self.input_size if layer == 0 else f
            shapes = {"w_ih": (d, 4 * h), "w_hh": (h, 4 * h), "b": (4 * h,)}
            cells = tuple(
                CellInfo(
                    layer=layer,
                    direction=("forward", "backward")[direction],
                    name=f"layer_{layer}" + ("_reverse" if direction == 1 else ""),
                    input_size=d,
                    hidden_size=h,
                    param_shapes=dict(shapes),
                    num_params=cell_params(d, h),
                )
                for direction in range(self.num_directions)
            )
            out.append(
                LayerInfo(
                    index=layer,
                    input_size=d,
                    output_size=f,
                    cells=cells,
                    param_shapes=shapes,
                    num_params=sum(c.num_params for c in cells),
                    sequence_shape=(self.batch, self.time, f),
                )
            )
        return tuple(out)

    @property
    def cells(self) -> tuple[CellInfo, ...]:
        return tuple(cell for layer in self.layers for cell in layer.cells)

    @property
    def param_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {cell.name: dict(cell.param_shapes) for cell in self.cells}

    @property
    def total_params(self) -> int:
        return sum(cell.num_params for cell in self.cells)

    # --------------------------------------------------------------------- text

    def __str__(self) -> str:
        return "\n".join(_lines(self))

    def diagram(self, path=None, **kwargs):
        """Draws this configuration unrolled over time (needs matplotlib); see ``jaxlstm.diagram.draw``."""
        from .diagram import draw

        return draw(self, path, **kwargs)


def explain(
    batch: int,
    time: int,
    input_size: int,
    units: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "concat",
    return_sequences: bool = True,
) -> Explanation:
    """Walks through every shape and parameter of an LSTM, with your numbers.

    Args:
        batch: B, sequences per batch.
        time: T, steps per sequence.
        input_size: D, features per step.
        units: H, the size of the state vector (``features`` in
            ``jl.LSTM``, ``hidden_size`` in PyTorch, ``units`` in Keras).
        num_layers: stacked layers.
        bidirectional: add a backward direction to every layer.
        merge: how the directions combine: "concat", "sum", "mul", "ave".
        return_sequences: output every step (B, T, F), or only the last (B, F).

    Returns:
        an ``Explanation``: ``print`` it for the walk-through; its attributes
        (``output_shape``, ``carry_shape``, ``layers``, ``param_shapes``,
        ``total_params``, ...) hold the same numbers for programs. They are
        what ``jl.LSTM(units, num_layers=..., bidirectional=..., merge=...,
        return_sequences=...)`` does on an input of shape (B, T, D).

    Raises:
        TypeError, ValueError: for a non-integer or non-positive size, a
        non-bool flag, or an unknown merge mode.

    >>> import jaxlstm as jl
    >>> e = jl.explain(4, 10, 8, 32, num_layers=2, bidirectional=True)
    >>> e.output_shape, [layer.input_size for layer in e.layers], e.total_params
    ((4, 10, 64), [8, 64], 35328)
    >>> e.param_shapes["layer_1_reverse"]
    {'w_ih': (64, 128), 'w_hh': (32, 128), 'b': (128,)}
    """
    batch = _checks.positive_int(batch, "batch")
    time = _checks.positive_int(time, "time")
    input_size = _checks.positive_int(input_size, "input_size")
    units = _checks.positive_int(units, "units")
    num_layers = _checks.positive_int(num_layers, "num_layers")
    for value, name in ((bidirectional, "bidirectional"), (return_sequences, "return_sequences")):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    if not isinstance(merge, str):
        raise TypeError(f"merge must be a str, one of {', '.join(map(repr, MERGE_MODES))}, got {type(merge).__name__}")
    _checks.one_of(merge, MERGE_MODES, "merge")
    return Explanation(batch, time, input_size, units, num_layers, bidirectional, merge, return_sequences)


# ------------------------------------------------------------------------------------------ the text


def _heading(text: str) -> list[str]:
    return ["", text, "-" * len(text)]


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            # numbers (the last column) right-aligned, text left-aligned
            cells.append(cell.rjust(widths[i]) if i == len(row) - 1 and cell[:1].isdigit() else cell.ljust(widths[i]))
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _lines(e: Explanation) -> list[str]:
    b, t, d, h, f = e.batch, e.time, e.input_size, e.units, e.output_size
    bi, n_layers = e.bidirectional, e.num_layers
    s = _shape
    options = []
    if n_layers != 1:
        options.append(f"num_layers={n_layers}")
    if bi:
        options.append("bidirectional=True")
        if e.merge != "concat":
            options.append(f"merge={e.merge!r}")
    if not e.return_sequences:
        options.append("return_sequences=False")
    module = f"jl.LSTM({', '.join([str(h), *options])})"
    title = f"{module} on x of shape (batch, time, input) = {s(e.input_shape)}"
    n_cells = n_layers * e.num_directions
    f_name = "2H" if f == 2 * h else "H"

    out = [title, "=" * len(title), f"B = batch = {b}, T = time = {t}, D = input_size = {d}, H = units = {h}"]
    if bi or n_layers > 1:
        out[-1] += f", F = layer output size = {f}"
    out[-1] += "."

    out += _heading("The question")
    out += [
        f'"This LSTM has {h} units and each unit outputs a vector - how are the {h} vectors',
        ' combined into one for the next Dense layer?"',
        "",
        f"They are not combined, because there are not {h} vectors. There is ONE cell (one set",
        f"of weights) per layer and direction, applied {t} times, once per time step.",
        f'"units" = {h} is H, the size of that cell\'s state vector: at every step the cell turns',
        f"one input vector x_t ({d} numbers) into ONE output vector h_t ({h} numbers), for each of",
        f"the {b} sequences in the batch. {h} units = one {h}-vector per step, not {h} vectors.",
        "The layer's output is these vectors stacked along time"
        + (" (merged across the two directions)." if bi else "."),
    ]
    if n_cells > 1:
        out.append(
            f"This configuration has {n_cells} such cells: {_plural(n_layers, 'layer')} x "
            f"{_plural(e.num_directions, 'direction')}."
        )

    out += _heading("Step by step")
    rows = [
        ("1. input", "x", "(B, T, D)", f"= {s(e.input_shape)}", f"{b} sequences x {t} steps x {d} features"),
        ("2. one time step", "x_t = x[:, t, :]", "(B, D)", f"= {s(e.step_input_shape)}", f"t = 0 ... {t - 1}"),
        ("3. gates", "z = x_t @ w_ih + h @ w_hh + b", "(B, 4H)", f"= {s(e.gates_shape)}", "pre-activations"),
        ("", "i, f, g, o = split(z, 4)", "(B, H)", f"= {s(e.gate_shape)}", "each"),
        ("4. new carry", "c = sig(f)*c + sig(i)*tanh(g)", "(B, H)", f"= {s(e.carry_shape)}", "cell state"),
        ("", "h = sig(o)*tanh(c)", "(B, H)", f"= {s(e.carry_shape)}", "= this step's output h_t"),
        ("5. next step", "(h, c) -> step t+1", "", "", f"the SAME cell again: {t} steps"),
        ("6. layer output", "every h_t, stacked", "(B, T, H)", f"= {s((b, t, h))}", "return_sequences=True"),
        ("", "or the last h only", "(B, H)", f"= {s((b, h))}", "return_sequences=False"),
    ]
    step = 7
    if bi:
        rows.append(
            (
                f"{step}. bidirectional",
                f"merge={e.merge!r}",
                f"(B, T, {f_name})",
                f"= {s((b, t, f))}",
                "forward and backward h_t",
            )
        )
        step += 1
    if n_layers > 1:
        rows.append(
            (
                f"{step}. next layer",
                "reads all steps",
                f"(B, T, {f_name})",
                f"= {s((b, t, f))}",
                f"its input size is {f}, not D",
            )
        )
        step += 1
    rows.append(
        (
            f"{step}. model output",
            "returned",
            f"(B, T, {f_name})" if e.return_sequences else f"(B, {f_name})",
            f"= {s(e.output_shape)}",
            "every step" if e.return_sequences else "last step only",
        )
    )
    out += _table(rows)
    out += [
        "  (sig = sigmoid. The carry of every cell, h and c, is (B, H) = "
        f"{s(e.carry_shape)}" + (f"; {n_cells} cells, nested [layer][direction].)" if n_cells > 1 else ".)"),
    ]

    if bi:
        out += _heading(f"Bidirectional, merge={e.merge!r}")
        out += [
            "  Every layer has a second cell that reads each sequence backward, from step T-1 to 0.",
            f"  Each direction gives (B, T, H) = {s((b, t, h))}; at every step the two h_t are",
            f"  {_MERGE_WORDS[e.merge].format(f=f)}.",
        ]
        if not e.return_sequences:
            out.append(f"  Last step only: the forward h after step {t - 1} merged with the backward h after step 0")
            out.append(f"  (the backward cell ends at step 0): (B, F) = {s((b, f))}.")

    if n_layers > 1:
        out += _heading(f"Stacking {n_layers} layers")
        out += [
            f"  Layer 0 reads x ({d} features per step). Every later layer reads the previous layer's",
            f"  whole output sequence (B, T, F) = {s((b, t, f))}: its input size is F = {f}.",
            "  Only the last layer's output is returned"
            + ("." if e.return_sequences else f", its last step only: {s((b, f))}."),
        ]

    out += _heading("What a following Dense layer receives")
    if e.return_sequences:
        out += [
            f"  {s(e.output_shape)}. Dense(n) acts on the last axis only, at every step separately:",
            f"  kernel ({f}, n), output ({b}, {t}, n). For ONE prediction per sequence use",
            f"  return_sequences=False: ({b}, {f}), and Dense(n) gives ({b}, n).",
        ]
    else:
        out += [
            f"  {s(e.output_shape)}: one {f}-vector per sequence. Dense(n) has kernel ({f}, n) and bias (n,)",
            f"  and gives ({b}, n). Nothing needs flattening or combining.",
        ]

    out += _heading("Parameters (one cell per layer and direction, shared by all steps)")
    rows = []
    for cell in e.cells:
        dl = "D" if cell.layer == 0 else "F"
        shapes = cell.param_shapes
        rows.append(
            (
                f"{cell.name} ({cell.direction})",
                "w_ih",
                f"({dl}, 4H)",
                f"= {s(shapes['w_ih'])}",
                format_count(_size(shapes["w_ih"])),
            )
        )
        rows.append(("", "w_hh", "(H, 4H)", f"= {s(shapes['w_hh'])}", format_count(_size(shapes["w_hh"]))))
        rows.append(("", "b", "(4H,)", f"= {s(shapes['b'])}", format_count(_size(shapes["b"]))))
        rows.append(
            ("", "", f"4·(H·({dl}+H)+H)", f"= 4·({h}·({cell.input_size}+{h})+{h})", format_count(cell.num_params))
        )
    total = "total"
    if n_cells > 1:
        total += f" ({_plural(n_layers, 'layer')} x {_plural(e.num_directions, 'direction')})"
    rows.append((total, "", "", "", format_count(e.total_params)))
    out += _table(rows)
    out += [
        "  One bias b per cell (PyTorch keeps two, b_ih and b_hh: 4H more per cell).",
        "  Gate order along the 4H axis: i, f, g, o (as PyTorch and Keras).",
        "",
        f"More: {GUIDE}#units-cells-and-time-steps",
    ]
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n
