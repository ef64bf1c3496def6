"""Exact weight conversion between Keras 3 LSTM layers and ``jaxlstm.LSTM``.

A Keras ``LSTM`` keeps ``kernel`` (D, 4H), ``recurrent_kernel`` (H, 4H) and
``bias`` (4H,), gates in the order i, f, c(=g), o: jaxlstm's ``w_ih``,
``w_hh`` and ``b`` as they are (``unit_forget_bias`` only changes how the
bias is initialised). ``Bidirectional(LSTM(...))`` holds a forward and a
backward layer: jaxlstm's ``layer_0`` and ``layer_0_reverse``.

Two Keras conventions differ from ``jaxlstm.LSTM``'s, so ``from_keras``
returns a ``KerasLSTM`` wrapper (same variables) when they apply:

* ``go_backwards=True`` with ``return_sequences=True``: Keras returns the
  outputs in reversed time order (``y[:, 0]`` belongs to the last input
  step), ``jl.LSTM(reverse=True)`` keeps them aligned with the inputs;
* ``return_state=True``: Keras returns ``[output, h, c]`` (``Bidirectional``:
  ``[output, h_fw, c_fw, h_bw, c_bw]``), ``jl.LSTM(return_carry=True)``
  returns ``(carries, output)``.

``keras`` is imported inside the functions only: ``jaxlstm.interop``
imports without it (``pip install jaxlstm[keras]`` adds it; set
``KERAS_BACKEND`` before importing keras, as Keras requires).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..linen import LSTM, cell_name
from ._common import floating, lstm_module, read_stack, require, warn_if_x64_disabled

__all__ = ["KerasLSTM", "from_keras", "to_keras"]


class KerasLSTM(nn.Module):
    """A ``jl.LSTM`` whose outputs are formatted as a Keras LSTM layer's.

    Its variables are ``lstm``'s own (same tree, no extra nesting), so
    ``KerasLSTM(lstm).apply(variables, x)`` and ``lstm.apply(variables, x)``
    take the same ``variables``.

    Attributes:
        lstm: the ``jaxlstm.LSTM`` computing the layer (with
            ``return_carry=True`` when ``return_state``).
        flip_outputs: reverse the time axis of the output sequence, as Keras
            does for ``go_backwards=True, return_sequences=True``.
        return_state: return a tuple ``(output, h, c)`` for one direction,
            ``(output, h_fw, c_fw, h_bw, c_bw)`` for ``Bidirectional`` (the
            last layer's final states), as Keras' ``return_state=True``.

    Called like ``jl.LSTM``: ``x`` (B, T, D), optional ``seq_lengths`` (B,)
    (Keras' mask ``mask.sum(-1)`` for right-padded sequences),
    ``initial_carry`` and ``deterministic``.
    """

    lstm: LSTM
    flip_outputs: bool = False
    return_state: bool = False

    def setup(self):
        nn.share_scope(self, self.lstm)

    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        seq_lengths: Int[Array, "*batch"] | None = None,
        initial_carry=None,
        deterministic: bool = True,
    ):
        if self.return_state and not self.lstm.return_carry:
            raise ValueError("KerasLSTM(return_state=True) needs lstm.return_carry=True")
        if self.flip_outputs and not self.lstm.return_sequences:
            raise ValueError("KerasLSTM(flip_outputs=True) needs lstm.return_sequences=True")
        out = self.lstm(x, seq_lengths=seq_lengths, initial_carry=initial_carry, deterministic=deterministic)
        carries, y = out if self.lstm.return_carry else (None, out)
        if self.flip_outputs:
            y = jnp.flip(y, axis=-2)
        if not self.return_state:
            return (carries, y) if self.lstm.return_carry else y
        return (y, *(array for carry in carries[-1] for array in (carry.h, carry.c)))


def from_keras(layer, *, ignore_dropout: bool = False):
    """A jaxlstm module and variables computing what a Keras 3 LSTM layer computes.

    Args:
        layer: a built ``keras.layers.LSTM`` or ``keras.layers.Bidirectional``
            wrapping one (merge modes "concat", "sum", "mul", "ave").
        ignore_dropout: Keras' ``dropout`` (on the inputs) and
            ``recurrent_dropout`` act only in training and jaxlstm has no
            equivalent; by default a layer using them is refused, ``True``
            converts it for inference (without them).

    Returns:
        ``(module, variables)``. ``module`` is a ``jaxlstm.LSTM`` with
        ``features=units``, ``return_sequences``, ``bidirectional`` and
        ``merge`` as the layer (``reverse`` for ``go_backwards``), or a
        ``KerasLSTM`` holding one when the layer has ``return_state=True`` or
        ``go_backwards=True, return_sequences=True`` (see ``KerasLSTM``).
        ``module.apply(variables, x)`` equals ``layer(x)``.

    Masks: ``module.apply(variables, x, seq_lengths=mask.sum(-1))`` equals
    ``layer(x, mask=mask)`` for right-padded masks at the valid steps and in
    the final states / ``return_sequences=False`` output. At masked steps
    jaxlstm outputs zeros; Keras outputs zeros (``Bidirectional``, or
    ``zero_output_for_mask=True``) or repeats the previous output (a plain
    ``LSTM``; any layer with ``unroll=True``), so compare valid steps only.

    Raises:
        TypeError: not an LSTM or Bidirectional(LSTM) layer.
        ValueError: the layer is not built, or uses an activation other than
            tanh / a recurrent activation other than sigmoid, or dropout
            (see ``ignore_dropout``).
        NotImplementedError: ``stateful=True``, ``Bidirectional`` with
            ``merge_mode=None`` or over a ``go_backwards=True`` layer.

    ``use_bias=False`` converts to a zero bias; ``unroll``, ``use_cudnn``,
    initializers, regularizers and constraints do not change the function
    and are not carried over.
    """
    keras = require("keras", "keras", "from_keras")

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
        layers = (forward, backward)
    elif isinstance(layer, keras.layers.LSTM):
        layers = (layer,)
    else:
        raise TypeError(
            f"from_keras converts keras.layers.LSTM or keras.layers.Bidirectional(LSTM), got {type(layer).__name__}"
        )
    for sub in layers:
        _check_supported(keras, sub, ignore_dropout)
    if not layer.built or any(getattr(sub.cell, "kernel", None) is None for sub in layers):
        raise ValueError(
            f"from_keras: layer {layer.name!r} is not built, so it has no weights yet; "
            "call it on an input or call layer.build(input_shape) first"
        )

    first = layers[0]
    units = first.units
    params = {}
    for direction, sub in enumerate(layers):
        kernel = floating(_numpy(keras, sub.cell.kernel), f"{sub.name}.kernel")
        recurrent = floating(_numpy(keras, sub.cell.recurrent_kernel), f"{sub.name}.recurrent_kernel")
        if sub.cell.use_bias:
            bias = _numpy(keras, sub.cell.bias)
        else:
            bias = np.zeros((4 * units,), kernel.dtype)
        warn_if_x64_disabled(kernel.dtype, f"layer {sub.name!r}")
        params[cell_name(0, direction)] = {
            "w_ih": jnp.asarray(kernel),
            "w_hh": jnp.asarray(recurrent),
            "b": jnp.asarray(bias),
        }

    variable_dtype = params["layer_0"]["w_ih"].dtype
    compute_dtype = jnp.dtype(first.compute_dtype)
    bidirectional = len(layers) == 2
    go_backwards = bool(first.go_backwards) and not bidirectional
    return_sequences = bool(first.return_sequences)
    return_state = bool(first.return_state)
    module = LSTM(
        features=units,
        bidirectional=bidirectional,
        merge=layer.merge_mode if bidirectional else "concat",
        return_sequences=return_sequences,
        return_carry=return_state,
        reverse=go_backwards,
        init_scheme="keras",
        param_dtype=variable_dtype,
        dtype=None if compute_dtype == variable_dtype else compute_dtype,
    )
    module._check_config()
    flip = go_backwards and return_sequences
    if flip or return_state:
        module = KerasLSTM(module, flip_outputs=flip, return_state=return_state)
    return module, {"params": params}


def _check_supported(keras, layer, ignore_dropout: bool) -> None:
    activations = keras.activations
    tanh = {activations.tanh, keras.ops.tanh, jnp.tanh}
    sigmoid = {activations.sigmoid, keras.ops.sigmoid}
    cell = layer.cell
    if cell.activation not in tanh:
        raise ValueError(
            f"from_keras: {layer.name!r} has activation={_name(activations, cell.activation)!r}; "
            "jaxlstm's cell uses tanh"
        )
    if cell.recurrent_activation not in sigmoid:
        raise ValueError(
            f"from_keras: {layer.name!r} has recurrent_activation={_name(activations, cell.recurrent_activation)!r}; "
            "jaxlstm's cell uses sigmoid"
        )
    if layer.stateful:
        raise NotImplementedError(
            f"from_keras: {layer.name!r} has stateful=True; jaxlstm modules keep no state between calls "
            "(pass initial_carry and use return_carry=True instead)"
        )
    for option in ("dropout", "recurrent_dropout"):
        rate = getattr(cell, option)
        if rate and not ignore_dropout:
            raise ValueError(
                f"from_keras: {layer.name!r} has {option}={rate}; jaxlstm has no such dropout. It acts only in "
                "training: pass ignore_dropout=True to convert the layer for inference without it"
            )


def _numpy(keras, variable) -> np.ndarray:
    """A Keras variable's value as a NumPy array, bits unchanged, on any backend."""
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def _name(activations, fn) -> str:
    try:
        return activations.serialize(fn)
    except Exception:  # an arbitrary callable
        return getattr(fn, "__name__", repr(fn))


def to_keras(module, variables):
    """A Keras 3 layer computing what ``module.apply(variables, x)`` computes.

    Args:
        module: a one-layer ``jaxlstm.LSTM`` (or a ``KerasLSTM``).
        variables: its variables, ``{"params": ...}``.

    Returns:
        A built ``keras.layers.LSTM`` (one direction) or
        ``keras.layers.Bidirectional(LSTM, merge_mode=module.merge)`` with
        the module's weights, ``units=features``, ``return_sequences``,
        ``return_state`` (from ``return_carry``; Keras then returns
        ``[output, h, c]``), ``go_backwards`` (from ``reverse``), in the
        parameter dtype.

    Raises:
        ValueError: ``num_layers > 1`` (one Keras layer is one layer: convert
            each), or ``reverse=True`` with ``return_sequences=True`` on a
            bare ``jl.LSTM`` (Keras' ``go_backwards`` returns the sequence in
            reversed time order; wrap it as
            ``KerasLSTM(lstm, flip_outputs=True)`` to accept that).
    """
    keras = require("keras", "keras", "to_keras")

    flip = None
    return_state = None
    if isinstance(module, KerasLSTM):
        flip, return_state = module.flip_outputs, module.return_state
        module = module.lstm
    module = lstm_module(module)
    if module.num_layers != 1:
        raise ValueError(f"to_keras: a Keras LSTM layer is one layer; this module has num_layers={module.num_layers}")
    if module.reverse and module.return_sequences and not flip:
        raise ValueError(
            "to_keras: Keras' go_backwards=True returns the output sequence in reversed time order, "
            "jaxlstm's reverse=True keeps it aligned with the inputs; pass KerasLSTM(module, flip_outputs=True) "
            "to convert to the Keras behaviour"
        )
    stack = read_stack(module, variables)
    input_size = stack[0][0][0].shape[0]
    dtype = np.dtype(stack[0][0][0].dtype).name
    lstm = keras.layers.LSTM(
        module.features,
        return_sequences=module.return_sequences,
        return_state=bool(module.return_carry if return_state is None else return_state),
        go_backwards=bool(module.reverse),
        dtype=dtype,
    )
    layer = keras.layers.Bidirectional(lstm, merge_mode=module.merge, dtype=dtype) if module.bidirectional else lstm
    # Keras' initializers (run by build, then overwritten) rely on implicit rank and dtype promotion
    # under its jax backend; allow it here so that to_keras works under strict JAX settings too.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        layer.build((None, None, input_size))
        layer.set_weights([array for w_ih, w_hh, b in stack[0] for array in (w_ih, w_hh, b)])
    return layer
