"""Exact weight conversion between Keras 3 ``GRU`` (``reset_after=True``) layers and a jaxlstm GRU stack.

A Keras ``GRU`` keeps ``kernel`` (D, 3H), ``recurrent_kernel`` (H, 3H) and,
with ``reset_after=True`` (Keras 3's default), ``bias`` (2, 3H): row 0 the
input bias, row 1 the recurrent bias. Its equations are ``torch.nn.GRU``'s,
and ``jaxlstm.cells.GRU``'s, but its gates are packed z, r, h where jaxlstm
packs r, z, n: the converters swap the first two H-wide blocks of every
array, which copies each value as it is.

``reset_after=False`` is another cell: its candidate applies the reset gate
before the recurrent matmul, ``h~ = tanh(x·W_h + b_h + (r ⊙ h)·U_h)``, which no
choice of ``GRUParams`` reproduces; it is refused.

``keras`` is imported inside the functions only, and must run on its JAX
backend (``export KERAS_BACKEND=jax`` before Python imports keras).
"""

from __future__ import annotations

import jax
import numpy as np

from .. import _checks
from ._common import check_finite, floating, read_gru_stack, require_keras, warn_if_x64_disabled
from .keras import _masked_output, _name, _numpy

__all__ = ["from_keras_gru", "to_keras_gru"]


def from_keras_gru(layer, *, ignore_dropout: bool = False, allow_nonfinite: bool = False) -> tuple[tuple, dict]:
    """The GRU stack and the ``jaxlstm.stacked_rnn`` options computing what a Keras 3 GRU layer computes.

    Args:
        layer: a built ``keras.layers.GRU(reset_after=True)`` or ``keras.layers.Bidirectional``
            over one (merge modes "concat", "sum", "mul", "ave").
        ignore_dropout: convert a layer with ``dropout`` or ``recurrent_dropout`` (a stack has no
            such dropout: equal at inference, it trains without them); otherwise refused.
        allow_nonfinite: load NaN or ±Inf weights instead of refusing them.

    Returns:
        ``(stack, options)``: ``stack`` is ``((GRUParams,),)`` for a ``GRU`` and
        ``((forward, backward),)`` for a ``Bidirectional``; ``options`` the keywords of
        ``jaxlstm.stacked_rnn`` that match the layer: ``merge`` (Bidirectional), ``reverse``
        (``go_backwards``) and ``masked_output`` (what Keras outputs at a masked step). Then::

            finals, hs = jaxlstm.stacked_rnn(jaxlstm.cells.GRU(), stack, x, mask=mask, **options)
            # hs == layer(x, mask=mask) with return_sequences=True; with go_backwards=True Keras
            #       returns it in reversed time order: hs[:, ::-1]
            # finals[0][0] == layer(x, mask=mask) with return_sequences=False (one direction)

    Raises:
        ImportError: Keras does not run on its JAX backend.
        TypeError: not a GRU or Bidirectional(GRU) layer.
        ValueError: ``reset_after=False`` (another cell, see the module docstring), activations
            other than tanh and sigmoid, dropout (see ``ignore_dropout``), ``stateful=True``,
            ``merge_mode=None``, a layer not built, or a weight holding NaN or ±Inf (named).
    """
    keras = require_keras("from_keras_gru")
    ignore_dropout = _checks.flag(ignore_dropout, "ignore_dropout")
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    layers = _gru_layers(keras, layer)
    for sub in layers:
        _check_cell(keras, sub, ignore_dropout)
    if not layer.built or any(getattr(sub.cell, "kernel", None) is None for sub in layers):
        raise ValueError(
            f"from_keras_gru: layer {layer.name!r} is not built, so it has no weights yet; "
            "call it on an input or call layer.build(input_shape) first"
        )
    options: dict = {"masked_output": _masked_output(layers, bidirectional=len(layers) == 2)}
    if len(layers) == 2:
        options["merge"] = layer.merge_mode
    elif layers[0].go_backwards:
        options["reverse"] = True
    return (tuple(_read_params(keras, sub, allow_nonfinite) for sub in layers),), options


def _gru_layers(keras, layer) -> tuple:
    """``(gru,)`` for a GRU layer, ``(forward, backward)`` for a Bidirectional one."""
    if isinstance(layer, keras.layers.Bidirectional):
        forward, backward = layer.forward_layer, layer.backward_layer
        for name, sub in (("forward_layer", forward), ("backward_layer", backward)):
            if not isinstance(sub, keras.layers.GRU):
                raise TypeError(
                    f"from_keras_gru: Bidirectional.{name} must be a keras.layers.GRU, got {type(sub).__name__}"
                )
        if layer.merge_mode is None:
            raise ValueError(
                "from_keras_gru: Bidirectional(merge_mode=None) returns the two directions separately; "
                "jaxlstm.stacked_rnn merges them — use merge_mode 'concat', 'sum', 'mul' or 'ave'"
            )
        if forward.go_backwards:
            raise ValueError(
                "from_keras_gru: Bidirectional over a GRU with go_backwards=True (its 'forward' layer reads "
                "backward) is not supported"
            )
        return forward, backward
    if isinstance(layer, keras.layers.GRU):
        return (layer,)
    raise TypeError(f"from_keras_gru converts keras.layers.GRU or Bidirectional(GRU), got {type(layer).__name__}")


def _check_cell(keras, sub, ignore_dropout: bool) -> None:
    """Refuses what ``jaxlstm.cells.GRU`` does not compute: ``reset_after=False``, other activations,
    dropout (unless ignored) and a stateful layer's hidden states."""
    if not sub.cell.reset_after:
        raise ValueError(
            f"from_keras_gru: {sub.name!r} has reset_after=False, a different cell: its candidate applies the "
            "reset gate before the recurrent matmul, tanh(x·W_h + b_h + (r * h)·U_h), where jaxlstm's GRU "
            "(and torch.nn.GRU, Keras' default reset_after=True) computes tanh(x·W_h + b_h + r * (h·U_h + b_hh)); "
            "no weights convert one into the other. Retrain with reset_after=True"
        )
    for option, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        name = _name(keras.activations, getattr(sub.cell, option))
        if name != expected:
            raise ValueError(
                f"from_keras_gru: {sub.name!r} has {option}={name!r}; jaxlstm's GRU cell uses {expected}"
            )
    rates = float(sub.cell.dropout), float(sub.cell.recurrent_dropout)
    if any(rates) and not ignore_dropout:
        raise ValueError(
            f"from_keras_gru: {sub.name!r} has dropout={rates[0]}, recurrent_dropout={rates[1]}, which a GRU "
            "stack does not apply; pass ignore_dropout=True to convert it (equal at inference)"
        )
    if sub.stateful:
        raise ValueError(
            f"from_keras_gru: {sub.name!r} is stateful; convert a stateful=False copy of it and pass its states "
            "to jaxlstm.stacked_rnn as carries"
        )


def _read_params(keras, sub, allow_nonfinite: bool):
    """One Keras GRU layer's weights as ``GRUParams``, the gate blocks reordered z, r, h → r, z, n."""
    import jax.numpy as jnp

    from ..cells.gru import GRUParams

    arrays = {}
    for field in ("kernel", "recurrent_kernel", "bias"):
        if field == "bias" and not sub.cell.use_bias:
            continue
        where = f"from_keras_gru: {sub.name}.{field}"
        arrays[field] = check_finite(floating(_numpy(keras, getattr(sub.cell, field)), where), where, allow_nonfinite)
    kernel, recurrent = arrays["kernel"], arrays["recurrent_kernel"]
    warn_if_x64_disabled(kernel.dtype, f"layer {sub.name!r}")
    bias = arrays.get("bias", np.zeros((2, kernel.shape[-1]), kernel.dtype))
    return GRUParams(*(jnp.asarray(_swap_rz(a)) for a in (kernel, recurrent, bias[0], bias[1])))


def _swap_rz(array: np.ndarray) -> np.ndarray:
    """Swaps the first two of three blocks along the last axis: Keras' z, r, h ↔ jaxlstm's r, z, n."""
    first, second, third = np.split(array, 3, axis=-1)
    return np.concatenate([second, first, third], axis=-1)


def to_keras_gru(stack, *, merge: str = "concat", return_sequences: bool = True):
    """A built Keras 3 ``GRU(reset_after=True)`` (or ``Bidirectional`` over one) holding a one-layer stack.

    Args:
        stack: ``((GRUParams,),)`` or ``((forward, backward),)``: one layer (one Keras layer is one
            layer: convert a deeper stack layer by layer).
        merge: the ``merge_mode`` of a ``Bidirectional`` ("concat", "sum", "mul", "ave").
        return_sequences: the layer's ``return_sequences``.

    Returns:
        A built layer in the parameters' dtype whose ``layer(x)`` equals
        ``jaxlstm.stacked_rnn(jaxlstm.cells.GRU(), stack, x, merge=merge)``'s outputs (or, with
        ``return_sequences=False``, the last step: the final carry of one direction).
        ``from_keras_gru`` of it gives every array back bit for bit.
    """
    keras = require_keras("to_keras_gru")
    from ..stack import MERGE_MODES

    return_sequences = _checks.flag(return_sequences, "return_sequences")
    _checks.one_of(merge, MERGE_MODES, "merge")
    cells = read_gru_stack(stack, "to_keras_gru")
    if len(cells) != 1:
        raise ValueError(f"to_keras_gru: a Keras GRU layer is one layer; this stack has {len(cells)} layers")
    input_size, units = cells[0][0][0].shape[0], cells[0][0][1].shape[0]
    dtype = np.dtype(cells[0][0][0].dtype).name
    gru = keras.layers.GRU(units, reset_after=True, return_sequences=return_sequences, dtype=dtype)
    layer = keras.layers.Bidirectional(gru, merge_mode=merge, dtype=dtype) if len(cells[0]) == 2 else gru
    weights = [
        _swap_rz(array) for w_ih, w_hh, b_ih, b_hh in cells[0] for array in (w_ih, w_hh, np.stack([b_ih, b_hh]))
    ]
    # Keras' initializers (run by build, then overwritten) rely on implicit rank and dtype promotion
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        layer.build((None, None, input_size))
        layer.set_weights(weights)
    return layer
