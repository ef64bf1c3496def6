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

The variants that change shapes or parameter counts (``proj_size``,
``peepholes``, ``layer_norm``, ``cifg``) are options too; a projection makes
``h`` and the output P wide while ``c`` keeps H:

>>> e = jl.explain(4, 10, 8, 32, proj_size=16)
>>> e.output_shape, e.h_shape, e.c_shape, e.total_params
((4, 10, 16), (4, 16), (4, 32), 3712)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _checks
from ._text import format_count, format_shape
from .cell import LSTMCarry
from .stack import MERGE_MODES, merged_size
from .variants import LSTMVariant, variant_param_shapes

__all__ = ["explain", "Explanation", "CellInfo", "LayerInfo", "cell_params", "format_count"]

GUIDE = _checks.GUIDE
VARIANTS_GUIDE = "docs/variants.md"

_MERGE_WORDS = {
    "concat": "concatenated side by side: [h_forward, h_backward], 2{r} = {f} features",
    "sum": "added element-wise: h_forward + h_backward, {r} = {f} features",
    "mul": "multiplied element-wise: h_forward * h_backward, {r} = {f} features",
    "ave": "averaged element-wise: (h_forward + h_backward) / 2, {r} = {f} features",
}


def cell_params(
    input_size: int,
    hidden_size: int,
    *,
    proj_size: int | None = None,
    peepholes: bool = False,
    layer_norm: bool = False,
) -> int:
    """The parameters of one cell (one layer, one direction): 4·(H·(D+H)+H).

    ``w_ih`` (D, 4H) + ``w_hh`` (H, 4H) + ``b`` (4H,), one bias (PyTorch has
    two, ``b_ih`` and ``b_hh``, so 4H more per cell). The variants add:
    ``proj_size`` P: ``w_hh`` becomes (P, 4H) and ``w_hr`` (H, P) joins,
    4·(H·(D+P)+H) + H·P; ``peepholes``: 3·H; ``layer_norm``: 10·H
    (gains of 4H and 4H, gain and bias of H).

    >>> cell_params(8, 32), cell_params(8, 32, proj_size=16), cell_params(8, 32, peepholes=True, layer_norm=True)
    (5248, 3712, 5664)
    """
    d, h = input_size, hidden_size
    r = h if proj_size is None else proj_size
    count = 4 * (h * (d + r) + h)
    if proj_size is not None:
        count += h * proj_size
    if peepholes:
        count += 3 * h
    if layer_norm:
        count += 10 * h
    return count


def _formula_terms(d, h, r, proj: bool, peepholes: bool, layer_norm: bool) -> str:
    """``4·(H·(D+H)+H)`` with the variants' terms, for symbols or numbers."""
    text = f"4·({h}·({d}+{r})+{h})"
    if proj:
        text += f" + {h}·{r}"
    if peepholes:
        text += f" + 3·{h}"
    if layer_norm:
        text += f" + 10·{h}"
    return text


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
        param_shapes: ``{"w_ih": (D_l, 4H), "w_hh": (H, 4H), "b": (4H,)}``,
            plus the variants' ``w_hr``, ``w_peep``, ``ln_*``.
        num_params: 4·(H·(D_l+H)+H) (see ``cell_params`` for the variants).
        proj_size, peepholes, layer_norm: the variant options that add weights.
    """

    layer: int
    direction: str
    name: str
    input_size: int
    hidden_size: int
    param_shapes: dict
    num_params: int
    proj_size: int | None = None
    peepholes: bool = False
    layer_norm: bool = False

    @property
    def recurrent_size(self) -> int:
        """R, the size of ``h``: ``proj_size`` if set, else H."""
        return self.hidden_size if self.proj_size is None else self.proj_size

    @property
    def formula(self) -> str:
        """The count with the numbers substituted: ``"4·(32·(8+32)+32) = 5,248"``."""
        d, h, r = self.input_size, self.hidden_size, self.recurrent_size
        terms = _formula_terms(d, h, r, self.proj_size is not None, self.peepholes, self.layer_norm)
        return f"{terms} = {format_count(self.num_params)}"


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the stack: one cell per direction.

    Attributes:
        index: l.
        input_size: D_l — D for layer 0, F for later layers.
        output_size: F — 2H for bidirectional "concat", else H.
        cells: one ``CellInfo`` per direction (forward first).
        param_shapes: the shapes of one cell's ``w_ih``, ``w_hh``, ``b``
            (and a variant's weights; the same for both directions).
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

    Attributes (B = batch, T = time, D = input_size, H = units, F = output_size,
    P = proj_size, R = the size of h: P with a projection, else H):
        batch, time, input_size, units, num_layers, bidirectional, merge,
        return_sequences, proj_size, peepholes, layer_norm, cifg: the configuration.
        num_directions: 1 or 2.
        recurrent_size: R.
        variant: the ``jaxlstm.LSTMVariant`` of the four variant options.
        output_size: F, the width of each layer's output (2R for bidirectional
            "concat", else R).
        input_shape: (B, T, D).
        step_input_shape: one step's input x_t, (B, D) (layer 0).
        gates_shape: the gate pre-activations z, (B, 4H).
        gate_shape: each of i, f, g, o, (B, H).
        carry_shape: h and c of one cell, (B, H); with a projection, h's (B, P).
        h_shape, c_shape: h's (B, R) and c's (B, H).
        carry_shapes: all carries nested ``[layer][direction]`` →
            ``LSTMCarry(h=(B, R), c=(B, H))``, the structure ``jl.LSTM``
            returns with ``return_carry=True``.
        step_output_shape: one step's output h_t of one cell, (B, R).
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
    proj_size: int | None = None
    peepholes: bool = False
    layer_norm: bool = False
    cifg: bool = False

    # ------------------------------------------------------------------ shapes

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def variant(self) -> LSTMVariant:
        return LSTMVariant(
            proj_size=self.proj_size, peepholes=self.peepholes, layer_norm=self.layer_norm, cifg=self.cifg
        )

    @property
    def recurrent_size(self) -> int:
        return self.units if self.proj_size is None else self.proj_size

    @property
    def output_size(self) -> int:
        return merged_size(self.recurrent_size, self.num_directions, self.merge)

    @property
    def output_size_symbol(self) -> str:
        """F in symbols: "H" ("P" with a projection), doubled for a bidirectional "concat"."""
        r = "P" if self.proj_size is not None else "H"
        return "2" + r if self.num_directions == 2 and self.merge == "concat" else r

    @property
    def module_call(self) -> str:
        """The module this configuration is, e.g. ``jl.LSTM(32, variant=jl.LSTMVariant(proj_size=16))``."""
        options = []
        if self.num_layers != 1:
            options.append(f"num_layers={self.num_layers}")
        if self.bidirectional:
            options.append("bidirectional=True")
            if self.merge != "concat":
                options.append(f"merge={self.merge!r}")
        if not self.return_sequences:
            options.append("return_sequences=False")
        if not self.variant.is_plain:
            variant_options = ", ".join(f"{name}={value!r}" for name, value in self.variant.options.items())
            options.append(f"variant=jl.LSTMVariant({variant_options})")
        return f"jl.LSTM({', '.join([str(self.units), *options])})"

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
        return self.h_shape

    @property
    def h_shape(self) -> tuple[int, int]:
        return (self.batch, self.recurrent_size)

    @property
    def c_shape(self) -> tuple[int, int]:
        return (self.batch, self.units)

    @property
    def step_output_shape(self) -> tuple[int, int]:
        return self.h_shape

    @property
    def carry_shapes(self) -> tuple[tuple[LSTMCarry, ...], ...]:
        one = LSTMCarry._make((self.h_shape, self.c_shape))  # a carry's structure, holding shapes, not arrays
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
        h, f, variant = self.units, self.output_size, self.variant
        out = []
        for layer in range(self.num_layers):
            d = self.input_size if layer == 0 else f
            shapes = variant_param_shapes(d, h, variant)
            p, peep, norm = self.proj_size, self.peepholes, self.layer_norm
            cells = tuple(
                CellInfo(
                    layer=layer,
                    direction=("forward", "backward")[direction],
                    name=f"layer_{layer}" + ("_reverse" if direction == 1 else ""),
                    input_size=d,
                    hidden_size=h,
                    param_shapes=dict(shapes),
                    num_params=cell_params(d, h, proj_size=p, peepholes=peep, layer_norm=norm),
                    proj_size=p,
                    peepholes=peep,
                    layer_norm=norm,
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
    proj_size: int | None = None,
    peepholes: bool = False,
    layer_norm: bool = False,
    cifg: bool = False,
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
        proj_size: P < units: project h to P features (LSTMP; PyTorch's
            ``proj_size``): h, the output and the next layer's input get P
            (2P for bidirectional "concat"), c keeps H.
        peepholes, layer_norm, cifg: the variants that add weights or change
            the equations (see ``jaxlstm.LSTMVariant`` and docs/variants.md).

    Returns:
        an ``Explanation``: ``print`` it for the walk-through; its attributes
        (``output_shape``, ``carry_shape``, ``layers``, ``param_shapes``,
        ``total_params``, ...) hold the same numbers for programs. They are
        what ``jl.LSTM(units, num_layers=..., bidirectional=..., merge=...,
        return_sequences=..., proj_size=..., ...)`` does on an input of shape (B, T, D).

    Raises:
        TypeError, ValueError: for a non-integer or non-positive size, a
        non-bool flag, an unknown merge mode, or ``proj_size >= units``.

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
    bidirectional = _checks.flag(bidirectional, "bidirectional")
    return_sequences = _checks.flag(return_sequences, "return_sequences")
    _checks.one_of(merge, MERGE_MODES, "merge")
    variant = LSTMVariant(proj_size=proj_size, peepholes=peepholes, layer_norm=layer_norm, cifg=cifg)
    variant.check_hidden_size(units, "units")
    return Explanation(
        batch,
        time,
        input_size,
        units,
        num_layers,
        bidirectional,
        merge,
        return_sequences,
        variant.proj_size,
        variant.peepholes,
        variant.layer_norm,
        variant.cifg,
    )


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
    """The walk-through, section by section (``str(e)``)."""
    out = _title_lines(e)
    out += _heading("The question") + _question_lines(e)
    out += _heading("Step by step") + _table(_step_rows(e)) + _carry_note(e)
    if e.bidirectional:
        out += _heading(f"Bidirectional, merge={e.merge!r}") + _bidirectional_lines(e)
    if e.num_layers > 1:
        out += _heading(f"Stacking {e.num_layers} layers") + _stacking_lines(e)
    out += _heading("What a following Dense layer receives") + _dense_lines(e)
    if not e.variant.is_plain:
        out += _heading("Variant") + _variant_lines(e)
    out += _heading("Parameters (one cell per layer and direction, shared by all steps)") + _parameter_lines(e)
    out += ["", f"More: {GUIDE}#units-cells-and-time-steps (jaxlstm docs shapes#units-cells-and-time-steps)"]
    if not e.variant.is_plain:
        out.append(f"Variants: {VARIANTS_GUIDE} (jaxlstm docs variants)")
    return out


def _h_symbol(e: Explanation) -> str:
    """The size of h in symbols: "P" with a projection, else "H"."""
    return "P" if e.proj_size is not None else "H"


def _title_lines(e: Explanation) -> list[str]:
    """The module call and the input shape, underlined, then what each letter stands for."""
    title = f"{e.module_call} on x of shape (batch, time, input) = {format_shape(e.input_shape)}"
    sizes = f"B = batch = {e.batch}, T = time = {e.time}, D = input_size = {e.input_size}, H = units = {e.units}"
    if e.proj_size is not None:
        sizes += f", P = proj_size = {e.recurrent_size}"
    if e.bidirectional or e.num_layers > 1:
        sizes += f", F = layer output size = {e.output_size}"
    return [title, "=" * len(title), sizes + "."]


def _question_lines(e: Explanation) -> list[str]:
    """Why an LSTM of H units makes one H-vector per step, not H vectors."""
    b, t, d, h, r = e.batch, e.time, e.input_size, e.units, e.recurrent_size
    n_cells = e.num_layers * e.num_directions
    out = [
        f'"This LSTM has {h} units and each unit outputs a vector - how are the {h} vectors',
        ' combined into one for the next Dense layer?"',
        "",
        f"They are not combined, because there are not {h} vectors. There is ONE cell (one set",
        f"of weights) per layer and direction, applied {t} times, once per time step.",
        f'"units" = {h} is H, the size of that cell\'s state vector: at every step the cell turns',
        f"one input vector x_t ({d} numbers) into ONE output vector h_t ({r} numbers), for each of",
        f"the {b} sequences in the batch. {h} units = one {r}-vector per step, not {h} vectors.",
        "The layer's output is these vectors stacked along time"
        + (" (merged across the two directions)." if e.bidirectional else "."),
    ]
    if e.proj_size is not None:
        out.append(
            f"With proj_size={r} the cell keeps its state c at H = {h} numbers but projects its output h_t to P = {r}."
        )
    if n_cells > 1:
        out.append(
            f"This configuration has {n_cells} such cells: {_plural(e.num_layers, 'layer')} x "
            f"{_plural(e.num_directions, 'direction')}."
        )
    return out


def _step_rows(e: Explanation) -> list[tuple[str, ...]]:
    """The table of one step's computation, then what the steps and layers make of it."""
    b, t, d, r, f = e.batch, e.time, e.input_size, e.recurrent_size, e.output_size
    s, r_name, f_name = format_shape, _h_symbol(e), e.output_size_symbol
    gates = "z = LN(x_t @ w_ih) + LN(h @ w_hh) + b" if e.layer_norm else "z = x_t @ w_ih + h @ w_hh + b"
    rows = [
        ("1. input", "x", "(B, T, D)", f"= {s(e.input_shape)}", f"{b} sequences x {t} steps x {d} features"),
        ("2. one time step", "x_t = x[:, t, :]", "(B, D)", f"= {s(e.step_input_shape)}", f"t = 0 ... {t - 1}"),
        ("3. gates", gates, "(B, 4H)", f"= {s(e.gates_shape)}", "pre-activations"),
        ("", "i, f, g, o = split(z, 4)", "(B, H)", f"= {s(e.gate_shape)}", "each"),
    ]
    if e.peepholes:
        rows.append(("", "i += p_i*c, f += p_f*c", "(B, H)", f"= {s(e.gate_shape)}", "peepholes (previous c)"))
    new_c = "c = (1-sig(i))*c + sig(i)*tanh(g)" if e.cifg else "c = sig(f)*c + sig(i)*tanh(g)"
    rows.append(("4. new carry", new_c, "(B, H)", f"= {s(e.c_shape)}", "cell state"))
    if e.peepholes:
        rows.append(("", "o += p_o*c", "(B, H)", f"= {s(e.gate_shape)}", "peephole (new c)"))
    cell_output = "sig(o)*tanh(LN(c))" if e.layer_norm else "sig(o)*tanh(c)"
    if e.proj_size is not None:
        rows.append(("", f"m = {cell_output}", "(B, H)", f"= {s(e.c_shape)}", ""))
        rows.append(("", "h = m @ w_hr", "(B, P)", f"= {s(e.h_shape)}", "= this step's output h_t (projected)"))
    else:
        rows.append(("", f"h = {cell_output}", "(B, H)", f"= {s(e.h_shape)}", "= this step's output h_t"))
    rows += [
        ("5. next step", "(h, c) -> step t+1", "", "", f"the SAME cell again: {t} steps"),
        ("6. layer output", "every h_t, stacked", f"(B, T, {r_name})", f"= {s((b, t, r))}", "return_sequences=True"),
        ("", "or the last h only", f"(B, {r_name})", f"= {s((b, r))}", "return_sequences=False"),
    ]
    later = []  # numbered from 7 on, as they apply
    sequence = (f"(B, T, {f_name})", f"= {s((b, t, f))}")
    if e.bidirectional:
        later.append(("bidirectional", f"merge={e.merge!r}", *sequence, "forward and backward h_t"))
    if e.num_layers > 1:
        later.append(("next layer", "reads all steps", *sequence, f"its input size is {f}, not D"))
    later.append(
        (
            "model output",
            "returned",
            f"(B, T, {f_name})" if e.return_sequences else f"(B, {f_name})",
            f"= {s(e.output_shape)}",
            "every step" if e.return_sequences else "last step only",
        )
    )
    rows += [(f"{step}. {what}", *rest) for step, (what, *rest) in enumerate(later, start=7)]
    return rows


def _carry_note(e: Explanation) -> list[str]:
    """The carry's shapes, under the step table."""
    s, n_cells = format_shape, e.num_layers * e.num_directions
    if e.proj_size is not None:
        carry_words = f"h is (B, P) = {s(e.h_shape)} and c is (B, H) = {s(e.c_shape)}"
    else:
        carry_words = f"h and c, is (B, H) = {s(e.carry_shape)}"
    return [
        f"  (sig = sigmoid{', LN = layer norm' if e.layer_norm else ''}. The carry of every cell, {carry_words}"
        + (f"; {n_cells} cells, nested [layer][direction].)" if n_cells > 1 else ".)"),
    ]


def _bidirectional_lines(e: Explanation) -> list[str]:
    """How the two directions' h_t merge."""
    b, t, f, r, s = e.batch, e.time, e.output_size, e.recurrent_size, format_shape
    out = [
        "  Every layer has a second cell that reads each sequence backward, from step T-1 to 0.",
        f"  Each direction gives (B, T, {_h_symbol(e)}) = {s((b, t, r))}; at every step the two h_t are",
        f"  {_MERGE_WORDS[e.merge].format(f=f, r=_h_symbol(e))}.",
    ]
    if not e.return_sequences:
        out.append(f"  Last step only: the forward h after step {t - 1} merged with the backward h after step 0")
        out.append(f"  (the backward cell ends at step 0): (B, F) = {s((b, f))}.")
    return out


def _stacking_lines(e: Explanation) -> list[str]:
    """What each layer after the first reads."""
    b, t, f, s = e.batch, e.time, e.output_size, format_shape
    return [
        f"  Layer 0 reads x ({e.input_size} features per step). Every later layer reads the previous layer's",
        f"  whole output sequence (B, T, F) = {s((b, t, f))}: its input size is F = {f}.",
        "  Only the last layer's output is returned"
        + ("." if e.return_sequences else f", its last step only: {s((b, f))}."),
    ]


def _dense_lines(e: Explanation) -> list[str]:
    """The shape a following Dense layer receives, and its kernel."""
    b, t, f, s = e.batch, e.time, e.output_size, format_shape
    if e.return_sequences:
        return [
            f"  {s(e.output_shape)}. Dense(n) acts on the last axis only, at every step separately:",
            f"  kernel ({f}, n), output ({b}, {t}, n). For ONE prediction per sequence use",
            f"  return_sequences=False: ({b}, {f}), and Dense(n) gives ({b}, n).",
        ]
    return [
        f"  {s(e.output_shape)}: one {f}-vector per sequence. Dense(n) has kernel ({f}, n) and bias (n,)",
        f"  and gives ({b}, n). Nothing needs flattening or combining.",
    ]


# The variants' weights, in symbols, in the order the parameter table lists them.
_VARIANT_WEIGHT_SYMBOLS = {
    "w_hr": "(H, P)",
    "w_peep": "(3, H)",
    "ln_ih_scale": "(4H,)",
    "ln_hh_scale": "(4H,)",
    "ln_c_scale": "(H,)",
    "ln_c_bias": "(H,)",
}


def _parameter_lines(e: Explanation) -> list[str]:
    """Every cell's weights with their shapes and counts, the total, and the conventions."""
    rows = [row for cell in e.cells for row in _cell_rows(e, cell)]
    total = "total"
    if e.num_layers * e.num_directions > 1:
        total += f" ({_plural(e.num_layers, 'layer')} x {_plural(e.num_directions, 'direction')})"
    rows.append((total, "", "", "", format_count(e.total_params)))
    out = _table(rows)
    out += [
        "  One bias b per cell (PyTorch keeps two, b_ih and b_hh: 4H more per cell).",
        "  Gate order along the 4H axis: i, f, g, o (as PyTorch and Keras).",
    ]
    if e.cifg:
        out.append(
            f"  cifg: the forget gate's H = {e.units} columns of w_ih, w_hh and b are kept (4H layout) but unused."
        )
    return out


def _cell_rows(e: Explanation, cell: CellInfo) -> list[tuple[str, ...]]:
    """One cell's rows of the parameter table: each weight, then the count's formula."""
    s, shapes, r_name = format_shape, cell.param_shapes, _h_symbol(e)
    dl = "D" if cell.layer == 0 else "F"

    def weight(label: str, name: str, symbol: str) -> tuple[str, ...]:
        return (label, name, symbol, f"= {s(shapes[name])}", format_count(_size(shapes[name])))

    rows = [
        weight(f"{cell.name} ({cell.direction})", "w_ih", f"({dl}, 4H)"),
        weight("", "w_hh", f"({r_name}, 4H)"),
        weight("", "b", "(4H,)"),
    ]
    rows += [weight("", name, symbol) for name, symbol in _VARIANT_WEIGHT_SYMBOLS.items() if name in shapes]
    terms = (e.proj_size is not None, e.peepholes, e.layer_norm)
    rows.append(
        (
            "",
            "",
            _formula_terms(dl, "H", r_name, *terms),
            f"= {_formula_terms(cell.input_size, e.units, e.recurrent_size, *terms)}",
            format_count(cell.num_params),
        )
    )
    return rows


def _variant_lines(e: Explanation) -> list[str]:
    """The equations the variant options change, one line each."""
    h, r = e.units, e.recurrent_size
    lines = []
    if e.proj_size is not None:
        lines += [
            f"  proj_size={r} (LSTMP, Sak et al. 2014): h = (sig(o)*tanh(c)) @ w_hr, w_hr (H, P) = ({h}, {r}).",
            f"    h, each step's output and the next layer's input have P = {r} features; c keeps H = {h};",
            f"    the recurrent kernel reads the projected h: w_hh (P, 4H) = ({r}, {4 * h}).",
        ]
    if e.peepholes:
        lines += [
            "  peepholes=True (Gers & Schmidhuber 2000): z_i += p_i*c, z_f += p_f*c (previous c),",
            f"    z_o += p_o*c (new c); w_peep (3, H) = (3, {h}) holds p_i, p_f, p_o.",
        ]
    if e.layer_norm:
        lines += [
            "  layer_norm=True (Ba et al. 2016): LN over the 4H input and the 4H recurrent pre-activations,",
            "    each with a gain (4H,), and over c before the output tanh, with a gain and a bias (H,).",
        ]
    if e.cifg:
        lines.append("  cifg=True: coupled input-forget gate, f = 1 - i (no forget gate of its own).")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n
