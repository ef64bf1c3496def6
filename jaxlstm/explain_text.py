"""The walk-through that ``print(jl.explain(...))`` shows: one function per section.

``lines(e)`` renders a ``jaxlstm.explain_shapes.Configuration`` (an
``Explanation``) section by section: the question, the step table, the
bidirectional merge, stacking, the following Dense layer, an LSTM's variant or
the GRU's equations, and the parameter table. Numbers come from ``e``; this
module only words them.
"""

from __future__ import annotations

import math

from . import _checks
from ._text import format_count, format_shape
from .explain_shapes import CellInfo, Configuration, formula_terms

__all__ = ["lines", "GUIDE", "VARIANTS_GUIDE", "GRU_GUIDE"]

GUIDE = _checks.GUIDE
VARIANTS_GUIDE = "docs/variants.md"
GRU_GUIDE = "docs/cells.md#the-gru"

_MERGE_WORDS = {
    "concat": "concatenated side by side: [h_forward, h_backward], 2{r} = {f} features",
    "sum": "added element-wise: h_forward + h_backward, {r} = {f} features",
    "mul": "multiplied element-wise: h_forward * h_backward, {r} = {f} features",
    "ave": "averaged element-wise: (h_forward + h_backward) / 2, {r} = {f} features",
}


def _heading(text: str) -> list[str]:
    return ["", text, "-" * len(text)]


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            # numbers (the last column) right-aligned, text left-aligned
            cells.append(cell.rjust(widths[i]) if i == len(row) - 1 and cell[:1].isdigit() else cell.ljust(widths[i]))
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def lines(e: Configuration) -> list[str]:
    """The walk-through, section by section (``str(e)``)."""
    out = _title_lines(e)
    out += _heading("The question") + _question_lines(e)
    out += _heading("Step by step") + _table(_step_rows(e)) + _carry_note(e)
    if e.is_gru:
        out += _heading("The step as torch.nn.GRU writes it") + _gru_lines(e)
    if e.bidirectional:
        out += _heading(f"Bidirectional, merge={e.merge!r}") + _bidirectional_lines(e)
    if e.num_layers > 1:
        out += _heading(f"Stacking {e.num_layers} layers") + _stacking_lines(e)
    out += _heading("What a following Dense layer receives") + _dense_lines(e)
    if not e.variant.is_plain:
        out += _heading("Variant") + _variant_lines(e)
    out += _heading("Parameters (one cell per layer and direction, shared by all steps)") + _parameter_lines(e)
    out += ["", f"More: {GUIDE}#units-cells-and-time-steps (jaxlstm docs shapes#units-cells-and-time-steps)"]
    if e.is_gru:
        out.append(f"The GRU: {GRU_GUIDE} (jaxlstm docs cells#the-gru)")
    if not e.variant.is_plain:
        out.append(f"Variants: {VARIANTS_GUIDE} (jaxlstm docs variants)")
    return out


def _h_symbol(e: Configuration) -> str:
    """The size of h in symbols: "P" with a projection, else "H"."""
    return "P" if e.proj_size is not None else "H"


def _title_lines(e: Configuration) -> list[str]:
    """The module call and the input shape, underlined, then what each letter stands for."""
    title = f"{e.module_call} on x of shape (batch, time, input) = {format_shape(e.input_shape)}"
    sizes = f"B = batch = {e.batch}, T = time = {e.time}, D = input_size = {e.input_size}, H = units = {e.units}"
    if e.proj_size is not None:
        sizes += f", P = proj_size = {e.recurrent_size}"
    if e.bidirectional or e.num_layers > 1:
        sizes += f", F = layer output size = {e.output_size}"
    return [title, "=" * len(title), sizes + "."]


def _question_lines(e: Configuration) -> list[str]:
    """Why a layer of H units makes one H-vector per step, not H vectors."""
    b, t, d, h, r = e.batch, e.time, e.input_size, e.units, e.recurrent_size
    n_cells = e.num_layers * e.num_directions
    out = [
        f'"This {e.cell.upper()} has {h} units and each unit outputs a vector - how are the {h} vectors',
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
    if e.is_gru:
        out.append(f"A GRU's state is h alone (no cell state c): the output h_t is the state it carries, {h} numbers.")
    if n_cells > 1:
        out.append(
            f"This configuration has {n_cells} such cells: {_plural(e.num_layers, 'layer')} x "
            f"{_plural(e.num_directions, 'direction')}."
        )
    return out


def _step_rows(e: Configuration) -> list[tuple[str, ...]]:
    """The table of one step's computation, then what the steps and layers make of it."""
    b, t, d, r, f = e.batch, e.time, e.input_size, e.recurrent_size, e.output_size
    s, r_name, f_name = format_shape, _h_symbol(e), e.output_size_symbol
    rows = [
        ("1. input", "x", "(B, T, D)", f"= {s(e.input_shape)}", f"{b} sequences x {t} steps x {d} features"),
        ("2. one time step", "x_t = x[:, t, :]", "(B, D)", f"= {s(e.step_input_shape)}", f"t = 0 ... {t - 1}"),
    ]
    rows += _gru_step_rows(e) if e.is_gru else _lstm_step_rows(e)
    carry = "h" if e.is_gru else "(h, c)"
    rows += [
        ("5. next step", f"{carry} -> step t+1", "", "", f"the SAME cell again: {t} steps"),
        ("6. layer output", "every h_t, stacked", f"(B, T, {r_name})", f"= {s((b, t, r))}", "return_sequences=True"),
        ("", "or the last h only", f"(B, {r_name})", f"= {s((b, r))}", "return_sequences=False"),
    ]
    later = []  # numbered from 7 on, as they apply
    sequence = (f"(B, T, {f_name})", f"= {s((b, t, f))}")
    if e.bidirectional:
        later.append(("bidirectional", f"merge={e.merge!r}", *sequence, "forward and backward h_t"))
    if e.num_layers > 1:
        later.append(("next layer", "reads all steps", *sequence, f"its input size is {f}, not D"))
    output = f"(B, T, {f_name})" if e.return_sequences else f"(B, {f_name})"
    every = "every step" if e.return_sequences else "last step only"
    later.append(("model output", "returned", output, f"= {s(e.output_shape)}", every))
    rows += [(f"{step}. {what}", *rest) for step, (what, *rest) in enumerate(later, start=7)]
    return rows


def _lstm_step_rows(e: Configuration) -> list[tuple[str, ...]]:
    """Steps 3 and 4 of an LSTM: the gates, then the new c and h."""
    s, gate, c = format_shape, f"= {format_shape(e.gate_shape)}", f"= {format_shape(e.c_shape)}"
    gates = "z = LN(x_t @ w_ih) + LN(h @ w_hh) + b" if e.layer_norm else "z = x_t @ w_ih + h @ w_hh + b"
    rows = [
        ("3. gates", gates, "(B, 4H)", f"= {s(e.gates_shape)}", "pre-activations"),
        ("", "i, f, g, o = split(z, 4)", "(B, H)", gate, "each"),
    ]
    if e.peepholes:
        rows.append(("", "i += p_i*c, f += p_f*c", "(B, H)", gate, "peepholes (previous c)"))
    new_c = "c = (1-sig(i))*c + sig(i)*tanh(g)" if e.cifg else "c = sig(f)*c + sig(i)*tanh(g)"
    rows.append(("4. new carry", new_c, "(B, H)", c, "cell state"))
    if e.peepholes:
        rows.append(("", "o += p_o*c", "(B, H)", gate, "peephole (new c)"))
    cell_output = "sig(o)*tanh(LN(c))" if e.layer_norm else "sig(o)*tanh(c)"
    if e.proj_size is not None:
        rows.append(("", f"m = {cell_output}", "(B, H)", c, ""))
        rows.append(("", "h = m @ w_hr", "(B, P)", f"= {s(e.h_shape)}", "= this step's output h_t (projected)"))
    else:
        rows.append(("", f"h = {cell_output}", "(B, H)", f"= {s(e.h_shape)}", "= this step's output h_t"))
    return rows


def _gru_step_rows(e: Configuration) -> list[tuple[str, ...]]:
    """Steps 3 and 4 of a GRU: the input and recurrent parts, the gates r, z, n, then the new h."""
    gates, gate = f"= {format_shape(e.gates_shape)}", f"= {format_shape(e.gate_shape)}"
    return [
        ("3. gates", "a = x_t @ w_ih + b_ih", "(B, 3H)", gates, "input part, [a_r, a_z, a_n]"),
        ("", "u = h @ w_hh + b_hh", "(B, 3H)", gates, "recurrent part, [u_r, u_z, u_n]"),
        ("", "r = sig(a_r + u_r)", "(B, H)", gate, "reset gate"),
        ("", "z = sig(a_z + u_z)", "(B, H)", gate, "update gate"),
        ("", "n = tanh(a_n + r*u_n)", "(B, H)", gate, "candidate state"),
        ("4. new carry", "h = (1-z)*n + z*h", "(B, H)", f"= {format_shape(e.h_shape)}", "= this step's output h_t"),
    ]


def _gru_lines(e: Configuration) -> list[str]:
    """The GRU's step in PyTorch's notation, and where its weights sit in w_ih and w_hh."""
    d, h = e.input_size, e.units
    return [
        "  r_t = sig(W_ir x_t + b_ir + W_hr h_(t-1) + b_hr)",
        "  z_t = sig(W_iz x_t + b_iz + W_hz h_(t-1) + b_hz)",
        "  n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_(t-1) + b_hn))",
        "  h_t = (1 - z_t) * n_t + z_t * h_(t-1)",
        f"  w_ih (D, 3H) = ({d}, {3 * h}) is [W_ir | W_iz | W_in] transposed (PyTorch's weight_ih_l0 is (3H, D));",
        f"  w_hh (H, 3H) = ({h}, {3 * h}) is [W_hr | W_hz | W_hn] transposed; b_ih = [b_ir, b_iz, b_in],",
        "  b_hh = [b_hr, b_hz, b_hn]. b_hn sits inside r_t * (...), so the two biases do not merge into one.",
    ]


def _carry_note(e: Configuration) -> list[str]:
    """The carry's shapes, under the step table."""
    s, n_cells = format_shape, e.num_layers * e.num_directions
    if e.is_gru:
        carry_words = f"h alone (there is no c), is (B, H) = {s(e.carry_shape)}"
    elif e.proj_size is not None:
        carry_words = f"h is (B, P) = {s(e.h_shape)} and c is (B, H) = {s(e.c_shape)}"
    else:
        carry_words = f"h and c, is (B, H) = {s(e.carry_shape)}"
    return [
        f"  (sig = sigmoid{', LN = layer norm' if e.layer_norm else ''}. The carry of every cell, {carry_words}"
        + (f"; {n_cells} cells, nested [layer][direction].)" if n_cells > 1 else ".)"),
    ]


def _bidirectional_lines(e: Configuration) -> list[str]:
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


def _stacking_lines(e: Configuration) -> list[str]:
    """What each layer after the first reads."""
    b, t, f, s = e.batch, e.time, e.output_size, format_shape
    return [
        f"  Layer 0 reads x ({e.input_size} features per step). Every later layer reads the previous layer's",
        f"  whole output sequence (B, T, F) = {s((b, t, f))}: its input size is F = {f}.",
        "  Only the last layer's output is returned"
        + ("." if e.return_sequences else f", its last step only: {s((b, f))}."),
    ]


def _dense_lines(e: Configuration) -> list[str]:
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


# Every weight in symbols, in the order the parameter table lists them (the input kernel's D is F past layer 0).
_WEIGHT_SYMBOLS = {
    "w_ih": "({d}, {g}H)",
    "w_hh": "({r}, {g}H)",
    "b": "({g}H,)",
    "b_ih": "({g}H,)",
    "b_hh": "({g}H,)",
    "w_hr": "(H, P)",
    "w_peep": "(3, H)",
    "ln_ih_scale": "(4H,)",
    "ln_hh_scale": "(4H,)",
    "ln_c_scale": "(H,)",
    "ln_c_bias": "(H,)",
}


def _parameter_lines(e: Configuration) -> list[str]:
    """Every cell's weights with their shapes and counts, the total, and the conventions."""
    rows = [row for cell in e.cells for row in _cell_rows(e, cell)]
    total = "total"
    if e.num_layers * e.num_directions > 1:
        total += f" ({_plural(e.num_layers, 'layer')} x {_plural(e.num_directions, 'direction')})"
    rows.append((total, "", "", "", format_count(e.total_params)))
    out = _table(rows)
    if e.is_gru:
        return out + [
            "  Two biases per cell, b_ih and b_hh, as PyTorch: the count equals torch.nn.GRU's.",
            "  Gate order along the 3H axis: r, z, n (as PyTorch and Keras' GRU(reset_after=True)).",
        ]
    out += [
        "  One bias b per cell (PyTorch keeps two, b_ih and b_hh: 4H more per cell).",
        "  Gate order along the 4H axis: i, f, g, o (as PyTorch and Keras).",
    ]
    if e.cifg:
        out.append(
            f"  cifg: the forget gate's H = {e.units} columns of w_ih, w_hh and b are kept (4H layout) but unused."
        )
    return out


def _cell_rows(e: Configuration, cell: CellInfo) -> list[tuple[str, ...]]:
    """One cell's rows of the parameter table: each weight, then the count's formula."""
    shapes, r_name, dl = cell.param_shapes, _h_symbol(e), "D" if cell.layer == 0 else "F"
    rows = []
    for name, shape in shapes.items():
        symbol = _WEIGHT_SYMBOLS[name].format(d=dl, r=r_name, g=e.num_gates)
        label = f"{cell.name} ({cell.direction})" if not rows else ""
        rows.append((label, name, symbol, f"= {format_shape(shape)}", format_count(math.prod(shape))))
    terms = (e.proj_size is not None, e.peepholes, e.layer_norm)
    in_symbols = formula_terms(e.cell, dl, "H", r_name, *terms)
    in_numbers = formula_terms(e.cell, cell.input_size, e.units, e.recurrent_size, *terms)
    rows.append(("", "", in_symbols, f"= {in_numbers}", format_count(cell.num_params)))
    return rows


def _variant_lines(e: Configuration) -> list[str]:
    """The equations the variant options change, one line each."""
    h, r = e.units, e.recurrent_size
    out = []
    if e.proj_size is not None:
        out += [
            f"  proj_size={r} (LSTMP, Sak et al. 2014): h = (sig(o)*tanh(c)) @ w_hr, w_hr (H, P) = ({h}, {r}).",
            f"    h, each step's output and the next layer's input have P = {r} features; c keeps H = {h};",
            f"    the recurrent kernel reads the projected h: w_hh (P, 4H) = ({r}, {4 * h}).",
        ]
    if e.peepholes:
        out += [
            "  peepholes=True (Gers & Schmidhuber 2000): z_i += p_i*c, z_f += p_f*c (previous c),",
            f"    z_o += p_o*c (new c); w_peep (3, H) = (3, {h}) holds p_i, p_f, p_o.",
        ]
    if e.layer_norm:
        out += [
            "  layer_norm=True (Ba et al. 2016): LN over the 4H input and the 4H recurrent pre-activations,",
            "    each with a gain (4H,), and over c before the output tanh, with a gain and a bias (H,).",
        ]
    if e.cifg:
        out.append("  cifg=True: coupled input-forget gate, f = 1 - i (no forget gate of its own).")
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
