"""What a Keras 3 ``LSTM`` (or ``Bidirectional(LSTM)``) layer holds, read for ``from_keras``.

``lstm_layers`` checks the layer converts and returns its one or two LSTM layers;
``read_params`` their weights as jaxlstm params (Keras' layout is jaxlstm's);
``dropout_variant`` their dropout rates as an ``LSTMVariant``; ``masked_output`` what
Keras writes at a masked step; ``numpy_value`` a Keras variable's value. ``keras_gru``
reads its GRU layers with the last two as well.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..layer import cell_name
from ..variants import LSTMVariant
from ._common import check_finite, floating, warn_if_x64_disabled

__all__ = ["dropout_variant", "lstm_layers", "masked_output", "numpy_value", "read_params"]


def lstm_layers(keras, layer) -> tuple:
    """``(lstm,)`` for an LSTM layer, ``(forward, backward)`` for a Bidirectional one, checked for what converts."""
    if isinstance(layer, keras.layers.Bidirectional):
        forward, backward = layer.forward_layer, layer.backward_layer
        for name, sub in (("forward_layer", forward), ("backward_layer", backward)):
            if not isinstance(sub, keras.layers.LSTM):
                raise TypeError(
                    f"from_keras: Bidirectional.{name} must be a keras.layers.LSTM, got {type(sub).__name__}"
                )
        if layer.merge_mode is None:
            raise NotImplementedError(
                "from_keras: Bidirectional(merge_mode=None) returns the two directions separately; "
                "jaxlstm merges them — use merge_mode 'concat', 'sum', 'mul' or 'ave'"
            )
        if layer.stateful:
            raise NotImplementedError(
                "from_keras: a stateful Bidirectional layer is not supported; jaxlstm streams forward only "
                "(a backward direction needs the whole sequence)"
            )
        if forward.go_backwards:
            raise NotImplementedError(
                "from_keras: Bidirectional over an LSTM with go_backwards=True (its 'forward' layer reads backward) "
                "is not supported"
            )
        if forward.units != backward.units:
            raise ValueError(
                f"from_keras: Bidirectional layers with different units ({forward.units} forward, "
                f"{backward.units} backward) are not supported"
            )
        return forward, backward
    if isinstance(layer, keras.layers.LSTM):
        if layer.stateful and layer.go_backwards:
            raise NotImplementedError(
                f"from_keras: {layer.name!r} has stateful=True with go_backwards=True; jaxlstm streams forward only"
            )
        return (layer,)
    raise TypeError(
        f"from_keras converts keras.layers.LSTM or keras.layers.Bidirectional(LSTM), got {type(layer).__name__}"
    )


def dropout_variant(layers, ignore_dropout: bool) -> LSTMVariant | None:
    """Keras' ``dropout`` and ``recurrent_dropout`` as the variant's ``input_dropout`` and
    ``recurrent_dropout`` (Keras and jaxlstm both draw one mask per sequence, scaled by
    1 / (1 - rate)); ``None`` when the layer has neither or ``ignore_dropout``."""
    rates = {(float(sub.cell.dropout), float(sub.cell.recurrent_dropout)) for sub in layers}
    if len(rates) > 1:
        shown = "; ".join(
            f"{sub.name!r}: dropout={sub.cell.dropout}, recurrent_dropout={sub.cell.recurrent_dropout}"
            for sub in layers
        )
        raise ValueError(
            f"from_keras: the forward and backward layers have different dropout rates ({shown}); "
            "a jaxlstm.LSTM uses one variant for both directions"
        )
    input_dropout, recurrent_dropout = rates.pop()
    if ignore_dropout or (input_dropout == 0.0 and recurrent_dropout == 0.0):
        return None
    return LSTMVariant(input_dropout=input_dropout, recurrent_dropout=recurrent_dropout)


def read_params(keras, layer, layers, allow_nonfinite: bool) -> dict:
    """The layers' weights as ``{"layer_0": {"w_ih", "w_hh", "b"}, "layer_0_reverse": ...}`` (Keras' layout)."""
    if not layer.built or any(getattr(sub.cell, "kernel", None) is None for sub in layers):
        raise ValueError(
            f"from_keras: layer {layer.name!r} is not built, so it has no weights yet; "
            "call it on an input or call layer.build(input_shape) first"
        )
    params = {}
    for direction, sub in enumerate(layers):
        kernel = _weight(keras, sub, "kernel", allow_nonfinite)
        recurrent = _weight(keras, sub, "recurrent_kernel", allow_nonfinite)
        if sub.cell.use_bias:
            bias = _weight(keras, sub, "bias", allow_nonfinite)
        else:
            bias = np.zeros((4 * sub.units,), kernel.dtype)
        warn_if_x64_disabled(kernel.dtype, f"layer {sub.name!r}")
        params[cell_name(0, direction)] = {
            "w_ih": jnp.asarray(kernel),
            "w_hh": jnp.asarray(recurrent),
            "b": jnp.asarray(bias),
        }
    return params


def _weight(keras, sub, field: str, allow_nonfinite: bool) -> np.ndarray:
    """The layer's cell weight ``field`` (``kernel``, ...) as NumPy, checked to be floating and finite."""
    where = f"from_keras: {sub.name}.{field}"
    return check_finite(floating(numpy_value(keras, getattr(sub.cell, field)), where), where, allow_nonfinite)


def masked_output(layers, *, bidirectional: bool) -> str:
    """What Keras writes at a masked step, as ``masked_output``.

    Keras' scan (``unroll=False``) writes zeros when ``zero_output_for_mask``
    (which ``Bidirectional`` forces on when it returns sequences; when it
    doesn't, masked outputs are never returned) and else the ``h`` state, the
    previous output. Its unrolled loop always writes the previous output.
    """
    modes = {
        "previous" if sub.unroll else ("zeros" if bidirectional or sub.zero_output_for_mask else "previous")
        for sub in layers
    }
    if len(modes) > 1:
        raise NotImplementedError(
            "from_keras: the forward and backward layers treat masked steps differently "
            "(one has unroll=True, the other not); a jaxlstm.LSTM uses one masked_output for both"
        )
    return modes.pop()


def numpy_value(keras, variable) -> np.ndarray:
    """A Keras variable's value as a NumPy array, bits unchanged, on any backend."""
    return np.asarray(keras.ops.convert_to_numpy(variable.value))
