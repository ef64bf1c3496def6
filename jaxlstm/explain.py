"""``explain``: every shape and parameter of an LSTM or GRU configuration, in words.

Answers the question every newcomer asks — "an LSTM layer has N units and each
unit outputs a vector: how are the N vectors combined for the next Dense
layer?" — for one concrete configuration, with the real numbers substituted:
there is one cell per layer and direction, applied once per time step, and
``units`` is the size H of its state vector, so each step makes one H-vector
(per sequence), not H vectors. Nothing is combined.

Imports no Flax and makes no arrays: it runs instantly. The numbers are
``jaxlstm.explain_shapes``'s, the words ``jaxlstm.explain_text``'s.

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

``cell="gru"`` (or ``cell=jl.cells.GRU()``) explains ``jl.GRU``: three gates
r, z, n, a carry of h alone, two biases per cell (``torch.nn.GRU``'s count):

>>> e = jl.explain(4, 10, 8, 32, cell="gru")
>>> e.gates_shape, e.carry_shape, e.c_shape, e.total_params
((4, 96), (4, 32), None, 4032)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _checks
from ._text import format_count
from .cells.base import Cell
from .cells.gru import GRU
from .explain_shapes import CELLS, CellInfo, Configuration, LayerInfo, cell_params, check_lstm_only
from .explain_text import lines
from .stack import MERGE_MODES
from .variants import LSTMVariant

__all__ = ["explain", "Explanation", "CellInfo", "LayerInfo", "cell_params", "format_count", "CELLS"]


@dataclass(frozen=True)
class Explanation(Configuration):
    """The shapes and parameters of one LSTM or GRU configuration; ``str()`` is the walk-through.

    Attributes (B = batch, T = time, D = input_size, H = units, F = output_size,
    P = proj_size, R = the size of h: P with a projection, else H; G = the
    number of gates: 4 for an LSTM, 3 for a GRU):
        batch, time, input_size, units, num_layers, bidirectional, merge,
        return_sequences, proj_size, peepholes, layer_norm, cifg: the configuration.
        cell: ``"lstm"`` or ``"gru"``.
        is_gru: ``cell == "gru"``.
        gate_names: ``("i", "f", "g", "o")``, or the GRU's ``("r", "z", "n")``,
            in the order they are packed along the kernels' G·H axis.
        num_gates: G.
        module_call: the module this is: ``jl.LSTM(32, ...)`` or ``jl.GRU(32, ...)``.
        num_directions: 1 or 2.
        recurrent_size: R.
        variant: the ``jaxlstm.LSTMVariant`` of the four variant options (plain for a GRU).
        output_size: F, the width of each layer's output (2R for bidirectional
            "concat", else R).
        input_shape: (B, T, D).
        step_input_shape: one step's input x_t, (B, D) (layer 0).
        gates_shape: the gate pre-activations, (B, G·H): (B, 4H) or (B, 3H).
        gate_shape: each gate, (B, H).
        carry_shape: h of one cell, (B, H); with a projection (B, P).
        h_shape, c_shape: h's (B, R) and c's (B, H); ``c_shape`` is ``None``
            for a GRU, whose carry is h alone.
        carry_shapes: all carries nested ``[layer][direction]``, the structure
            ``jl.LSTM`` / ``jl.GRU`` return with ``return_carry=True``: an
            LSTM's ``LSTMCarry(h=(B, R), c=(B, H))``, a GRU's h shape (B, H).
        step_output_shape: one step's output h_t of one cell, (B, R).
        output_shape: the whole model's output, (B, T, F) or (B, F).
        dense_input_size: F, the size a following Dense layer's kernel
            reads: ``nn.Dense(n)`` gets a kernel of shape (F, n).
        layers: one ``LayerInfo`` per layer.
        cells: every ``CellInfo``, layer by layer, forward before backward.
        param_shapes: ``{"layer_0": {"w_ih": ..., "w_hh": ..., "b": ...}, ...}``
            (a GRU's ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``), the same tree as
            ``jl.LSTM``'s / ``jl.GRU``'s ``params`` (and ``jl.nnx``'s).
        total_params: the sum over all layers and directions.
    """

    def __str__(self) -> str:
        return "\n".join(lines(self))

    def diagram(self, path=None, **kwargs):
        """Draws this configuration unrolled over time (needs matplotlib); see ``jaxlstm.diagram.draw``.

        LSTMs only so far: a GRU is a ValueError.
        """
        if self.is_gru:
            raise ValueError("diagram draws LSTM cells only, got cell='gru'; print the explanation instead")
        from .diagram import draw

        return draw(self, path, **kwargs)


def explain(
    batch: int,
    time: int,
    input_size: int,
    units: int,
    *,
    cell: str | Cell = "lstm",
    num_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "concat",
    return_sequences: bool = True,
    proj_size: int | None = None,
    peepholes: bool = False,
    layer_norm: bool = False,
    cifg: bool = False,
) -> Explanation:
    """Walks through every shape and parameter of an LSTM or a GRU, with your numbers.

    Args:
        batch: B, sequences per batch.
        time: T, steps per sequence.
        input_size: D, features per step.
        units: H, the size of the state vector (``features`` in
            ``jl.LSTM`` / ``jl.GRU``, ``hidden_size`` in PyTorch, ``units`` in Keras).
        cell: ``"lstm"`` (``jl.LSTM``) or ``"gru"`` (``jl.GRU``: gates r, z, n,
            carry h alone); ``jl.cells.GRU()`` means ``"gru"``.
        num_layers: stacked layers.
        bidirectional: add a backward direction to every layer.
        merge: how the directions combine: "concat", "sum", "mul", "ave".
        return_sequences: output every step (B, T, F), or only the last (B, F).
        proj_size: P < units: project h to P features (LSTMP; PyTorch's
            ``proj_size``): h, the output and the next layer's input get P
            (2P for bidirectional "concat"), c keeps H. LSTM only.
        peepholes, layer_norm, cifg: the LSTM variants that add weights or
            change the equations (see ``jaxlstm.LSTMVariant`` and docs/variants.md).

    Returns:
        an ``Explanation``: ``print`` it for the walk-through; its attributes
        (``output_shape``, ``carry_shape``, ``layers``, ``param_shapes``,
        ``total_params``, ...) hold the same numbers for programs. They are
        what ``jl.LSTM(units, num_layers=..., bidirectional=..., merge=...,
        return_sequences=..., variant=...)`` (or ``jl.GRU(units, ...)``) does
        on an input of shape (B, T, D).

    Raises:
        TypeError, ValueError: for a non-integer or non-positive size, a
        non-bool flag, an unknown merge mode or cell, ``proj_size >= units``,
        or an LSTM-only option (``proj_size``, ``peepholes``, ``layer_norm``,
        ``cifg``) with ``cell="gru"``.

    >>> import jaxlstm as jl
    >>> e = jl.explain(4, 10, 8, 32, num_layers=2, bidirectional=True)
    >>> e.output_shape, [layer.input_size for layer in e.layers], e.total_params
    ((4, 10, 64), [8, 64], 35328)
    >>> e.param_shapes["layer_1_reverse"]
    {'w_ih': (64, 128), 'w_hh': (32, 128), 'b': (128,)}
    >>> jl.explain(4, 10, 8, 32, cell="gru", num_layers=2).param_shapes["layer_1"]
    {'w_ih': (32, 96), 'w_hh': (32, 96), 'b_ih': (96,), 'b_hh': (96,)}
    """
    batch = _checks.positive_int(batch, "batch")
    time = _checks.positive_int(time, "time")
    input_size = _checks.positive_int(input_size, "input_size")
    units = _checks.positive_int(units, "units")
    num_layers = _checks.positive_int(num_layers, "num_layers")
    bidirectional = _checks.flag(bidirectional, "bidirectional")
    return_sequences = _checks.flag(return_sequences, "return_sequences")
    _checks.one_of(merge, MERGE_MODES, "merge")
    cell_name = _cell_name(cell)
    variant = LSTMVariant(proj_size=proj_size, peepholes=peepholes, layer_norm=layer_norm, cifg=cifg)
    if cell_name == "gru":
        check_lstm_only(variant)
    variant.check_hidden_size(units, "units")
    sizes = (batch, time, input_size, units, num_layers, bidirectional, merge, return_sequences)
    options = (variant.proj_size, variant.peepholes, variant.layer_norm, variant.cifg)
    return Explanation(*sizes, *options, cell_name)


def _cell_name(cell) -> str:
    """``cell`` as one of ``CELLS``: a name, or ``jl.cells.GRU()`` for ``"gru"``."""
    choices = f"one of {', '.join(map(repr, CELLS))} or a jl.cells.GRU()"
    if isinstance(cell, GRU):
        return "gru"
    if isinstance(cell, Cell):
        raise TypeError(
            f"cell must be {choices}, got {_checks.described(cell)}: explain knows the cells jaxlstm ships"
        )
    if not isinstance(cell, str):
        raise TypeError(f"cell must be {choices}, got {_checks.described(cell)}")
    if cell not in CELLS:
        raise ValueError(f"cell must be {choices}, got {cell!r}")
    return cell
