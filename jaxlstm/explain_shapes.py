"""The numbers behind ``jaxlstm.explain``: every shape and parameter count of one configuration.

``Configuration`` holds a configuration (sizes, stacking, the cell, an LSTM's
variant options) and derives each shape and count from it; ``jaxlstm.explain``'s
``Explanation`` is a ``Configuration`` that also prints itself (its text is in
``jaxlstm.explain_text``). Every count is the sum of the parameter shapes of one
cell: ``jaxlstm.variants.variant_param_shapes`` for the LSTM and its variants,
``gru_param_shapes`` for the GRU, so a count and its shapes cannot disagree.

Imports no Flax and makes no arrays: instant.

>>> gru_param_shapes(8, 32)
{'w_ih': (8, 96), 'w_hh': (32, 96), 'b_ih': (96,), 'b_hh': (96,)}
>>> cell_params(8, 32), cell_params(8, 32, cell="gru")
(5248, 4032)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._text import format_count
from .cell import LSTMCarry
from .rnn_stack import merged_size
from .variants import LSTMVariant, variant_param_shapes

__all__ = [
    "CELLS",
    "LSTM_ONLY_OPTIONS",
    "cell_params",
    "count_params",
    "gru_param_shapes",
    "param_shapes",
    "CellInfo",
    "LayerInfo",
    "Configuration",
]

CELLS = ("lstm", "gru")
"""The cells ``explain`` knows, by the name its ``cell`` argument takes."""

LSTM_ONLY_OPTIONS = ("proj_size", "peepholes", "layer_norm", "cifg")
"""``explain``'s options that only an LSTM has (``jaxlstm.LSTMVariant``'s that add weights or change shapes)."""

GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
"""Each cell's gates, in the order they are packed along the kernels' last axis (PyTorch's order)."""


def gru_param_shapes(input_size: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of one GRU cell's arrays, in ``jaxlstm.GRUParams`` order: gates packed r, z, n.

    ``w_ih`` (D, 3H), ``w_hh`` (H, 3H), ``b_ih`` (3H,), ``b_hh`` (3H,): the
    arrays of ``jl.GRU``'s ``params["layer_0"]`` and of ``jl.cells.GRU().init_params``.
    """
    d, h = input_size, hidden_size
    return {"w_ih": (d, 3 * h), "w_hh": (h, 3 * h), "b_ih": (3 * h,), "b_hh": (3 * h,)}


def param_shapes(cell: str, input_size: int, hidden_size: int, variant: LSTMVariant) -> dict[str, tuple[int, ...]]:
    """One cell's ``{name: shape}``: ``variant_param_shapes`` for ``"lstm"``, ``gru_param_shapes`` for ``"gru"``."""
    if cell == "gru":
        return gru_param_shapes(input_size, hidden_size)
    return variant_param_shapes(input_size, hidden_size, variant)


def cell_params(
    input_size: int,
    hidden_size: int,
    *,
    cell: str = "lstm",
    proj_size: int | None = None,
    peepholes: bool = False,
    layer_norm: bool = False,
) -> int:
    """The parameters of one cell (one layer, one direction): the sum of its arrays' sizes.

    LSTM: 4·(H·(D+H)+H), ``w_ih`` (D, 4H) + ``w_hh`` (H, 4H) + ``b`` (4H,), one
    bias (PyTorch has two, ``b_ih`` and ``b_hh``, so 4H more per cell). The
    variants add: ``proj_size`` P: ``w_hh`` becomes (P, 4H) and ``w_hr`` (H, P)
    joins, 4·(H·(D+P)+H) + H·P; ``peepholes``: 3·H; ``layer_norm``: 10·H (gains
    of 4H and 4H, gain and bias of H).

    GRU (``cell="gru"``): 3·(H·(D+H)+2·H), ``w_ih`` (D, 3H) + ``w_hh`` (H, 3H) +
    ``b_ih`` (3H,) + ``b_hh`` (3H,): ``torch.nn.GRU``'s count. The LSTM options
    are a ValueError with it.

    >>> cell_params(8, 32), cell_params(8, 32, proj_size=16), cell_params(8, 32, peepholes=True, layer_norm=True)
    (5248, 3712, 5664)
    """
    variant = LSTMVariant(proj_size=proj_size, peepholes=peepholes, layer_norm=layer_norm)
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    if cell == "gru":
        check_lstm_only(variant)
    return count_params(param_shapes(cell, input_size, hidden_size, variant))


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    """The number of parameters of one cell, from its ``{name: shape}``: every count ``explain`` shows."""
    return sum(math.prod(shape) for shape in shapes.values())


def check_lstm_only(variant: LSTMVariant) -> None:
    """A ValueError naming the first LSTM-only option ``variant`` sets: a GRU has none of them."""
    for name, value in variant.options.items():
        if name in LSTM_ONLY_OPTIONS:
            options = ", ".join(LSTM_ONLY_OPTIONS)
            raise ValueError(
                f"{name}={value!r} is an LSTM option: cell='gru' takes none of {options}; leave them unset "
                f"or choose cell='lstm' (cell is one of {', '.join(map(repr, CELLS))})"
            )


def formula_terms(cell: str, d, h, r, proj: bool = False, peepholes: bool = False, layer_norm: bool = False) -> str:
    """One cell's count as a formula, for symbols or numbers: ``4·(H·(D+H)+H)`` (with the variants' terms), or
    the GRU's ``3·(H·(D+H)+2·H)``."""
    if cell == "gru":
        return f"3·({h}·({d}+{h})+2·{h})"
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
        name: the parameter-tree key, as in ``jl.LSTM``'s and ``jl.GRU``'s
            params: ``"layer_0"``, ``"layer_0_reverse"``.
        input_size: D_l, the size of one step's input to this cell.
        hidden_size: H.
        param_shapes: LSTM: ``{"w_ih": (D_l, 4H), "w_hh": (H, 4H), "b": (4H,)}``,
            plus the variants' ``w_hr``, ``w_peep``, ``ln_*``; GRU:
            ``{"w_ih": (D_l, 3H), "w_hh": (H, 3H), "b_ih": (3H,), "b_hh": (3H,)}``.
        num_params: LSTM 4·(H·(D_l+H)+H), GRU 3·(H·(D_l+H)+2·H) (see ``cell_params``).
        proj_size, peepholes, layer_norm: the LSTM variant options that add weights.
        cell: ``"lstm"`` or ``"gru"``.
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
    cell: str = "lstm"

    @property
    def recurrent_size(self) -> int:
        """R, the size of ``h``: ``proj_size`` if set, else H."""
        return self.hidden_size if self.proj_size is None else self.proj_size

    @property
    def formula(self) -> str:
        """The count with the numbers substituted: ``"4·(32·(8+32)+32) = 5,248"``."""
        d, h, r = self.input_size, self.hidden_size, self.recurrent_size
        terms = formula_terms(self.cell, d, h, r, self.proj_size is not None, self.peepholes, self.layer_norm)
        return f"{terms} = {format_count(self.num_params)}"


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the stack: one cell per direction.

    Attributes:
        index: l.
        input_size: D_l — D for layer 0, F for later layers.
        output_size: F — 2H for bidirectional "concat", else H.
        cells: one ``CellInfo`` per direction (forward first).
        param_shapes: the shapes of one cell's arrays (the same for both directions).
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
class Configuration:
    """One configuration's shapes and parameters, without the text (``jaxlstm.explain.Explanation`` adds it).

    The fields and properties are documented on ``Explanation``.
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
    cell: str = "lstm"

    # ------------------------------------------------------------------ the cell

    @property
    def is_gru(self) -> bool:
        return self.cell == "gru"

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The gates in packing order: ``("i", "f", "g", "o")``, or the GRU's ``("r", "z", "n")``."""
        return GATES[self.cell]

    @property
    def num_gates(self) -> int:
        return len(self.gate_names)

    @property
    def variant(self) -> LSTMVariant:
        return LSTMVariant(
            proj_size=self.proj_size, peepholes=self.peepholes, layer_norm=self.layer_norm, cifg=self.cifg
        )

    @property
    def module_call(self) -> str:
        """The module this configuration is: ``jl.LSTM(32, variant=jl.LSTMVariant(proj_size=16))``, ``jl.GRU(32)``."""
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
        return f"jl.{self.cell.upper()}({', '.join([str(self.units), *options])})"

    # ------------------------------------------------------------------ shapes

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

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
    def input_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.time, self.input_size)

    @property
    def step_input_shape(self) -> tuple[int, int]:
        return (self.batch, self.input_size)

    @property
    def gates_shape(self) -> tuple[int, int]:
        return (self.batch, self.num_gates * self.units)

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
    def c_shape(self) -> tuple[int, int] | None:
        """c's (B, H); ``None`` for a GRU, whose carry is h alone."""
        return None if self.is_gru else (self.batch, self.units)

    @property
    def step_output_shape(self) -> tuple[int, int]:
        return self.h_shape

    @property
    def carry_shapes(self) -> tuple[tuple[LSTMCarry | tuple[int, int], ...], ...]:
        one = self.h_shape if self.is_gru else LSTMCarry._make((self.h_shape, self.c_shape))  # shapes, not arrays
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
            shapes = param_shapes(self.cell, d, h, variant)
            count = count_params(shapes)
            cells = tuple(
                CellInfo(
                    layer=layer,
                    direction=("forward", "backward")[direction],
                    name=f"layer_{layer}" + ("_reverse" if direction == 1 else ""),
                    input_size=d,
                    hidden_size=h,
                    param_shapes=dict(shapes),
                    num_params=count,
                    proj_size=self.proj_size,
                    peepholes=self.peepholes,
                    layer_norm=self.layer_norm,
                    cell=self.cell,
                )
                for direction in range(self.num_directions)
            )
            sequence_shape = (self.batch, self.time, f)
            out.append(LayerInfo(layer, d, f, cells, shapes, sum(c.num_params for c in cells), sequence_shape))
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
