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

Dropout: Keras' ``dropout`` (on the inputs) and ``recurrent_dropout`` are
jaxlstm's ``LSTMVariant(input_dropout=..., recurrent_dropout=...)``, one mask
per sequence in both; ``from_keras`` and ``to_keras`` carry them. Keras' LSTM
has none of jaxlstm's other variants.

Masks: Keras skips a masked step (the states stay as they were) and, at that
step, outputs

* the previous output (its ``h`` state) in a plain ``LSTM``:
  ``masked_output="previous"``;
* zeros inside ``Bidirectional`` (which forces ``zero_output_for_mask``
  when it returns sequences) or with ``zero_output_for_mask=True``:
  ``masked_output="zeros"``;
* the previous output with ``unroll=True`` whatever ``zero_output_for_mask``
  says (Keras' unrolled loop ignores it): ``masked_output="previous"``.

``from_keras`` sets ``masked_output`` to match. Two Keras corners that the
module does not reproduce:

* ``unroll=True`` with a non-zero ``initial_state``: before a row's first
  unmasked step (or in an all-masked row) Keras' unrolled loop outputs
  zeros where its scan, and the module, output the initial ``h``.
  Without an initial state (or with ``unroll=False``) they agree.
* ``zero_output_for_mask=True`` with ``return_sequences=False`` (a plain
  ``LSTM``; ``Bidirectional`` does not set it then): Keras returns its
  last output, zeros for a row whose last step (first step with
  ``go_backwards``) is masked; the module returns the last unmasked
  step's ``h`` (the final state Keras returns with ``return_state``).
Activations: ``activation`` and ``recurrent_activation`` may be any
elementwise Keras activation in ``KERAS_ACTIVATIONS`` (by name, as
``keras.activations.get(name)`` returns it, or the ``keras.ops`` function of
that name); they become the module's ``activation_fn`` and ``gate_fn``, JAX
functions computing exactly what Keras computes with its default arguments
(``hard_sigmoid`` is ``relu6(x + 3) / 6``, ``gelu`` the exact erf form,
``leaky_relu`` slope 0.2). Other callables are refused: pass your own
``gate_fn``/``activation_fn`` to ``jl.LSTM``.

``keras`` is imported inside the functions only: ``jaxlstm.interop``
imports without it (``pip install jaxlstm[keras]`` adds it). The
converters need Keras on its JAX backend: ``export KERAS_BACKEND=jax``
before Python imports keras (unset, Keras takes the backend from its
``keras.json``, ``"tensorflow"`` by default); on another backend they
raise an ImportError that says so.

This module holds ``KerasLSTM``, ``from_keras`` and ``to_keras``; what they read
of a Keras layer lives in ``_keras_layers``, the activations in
``_keras_activations``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..cell import LSTMCarry
from ..linen import LSTM
from ..options import check_call_data, takes_call_data
from ._common import check_finite, lstm_module, read_stack, refuse_variant_options, require_keras
# What from_keras reads and to_keras writes; keras_gru imports _masked_output, _name and _numpy from here.
from ._keras_activations import KERAS_ACTIVATIONS as KERAS_ACTIVATIONS
from ._keras_activations import activation_name as _name
from ._keras_activations import activation_names as _activation_names
from ._keras_activations import read_activations as _activations
from ._keras_layers import dropout_variant as _variant
from ._keras_layers import lstm_layers as _lstm_layers
from ._keras_layers import masked_output as _masked_output
from ._keras_layers import numpy_value as _numpy
from ._keras_layers import read_params as _read_params

__all__ = ["KerasLSTM", "from_keras", "to_keras"]

# The variant options keras.layers.LSTM has (as dropout and recurrent_dropout); layer_norm_epsilon only
# matters with layer_norm.
KERAS_VARIANT_OPTIONS = ("input_dropout", "recurrent_dropout", "layer_norm_epsilon")


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

    Called like ``jl.LSTM``: ``x`` (B, T, D), optional ``seq_lengths`` (B,),
    ``mask`` (B, T) bools (Keras' ``mask``), ``resets`` (B, T) bools,
    ``initial_carry`` and ``deterministic``.
    """

    lstm: LSTM
    flip_outputs: bool = False
    return_state: bool = False

    def setup(self):
        nn.share_scope(self, self.lstm)

    @takes_call_data
    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        initial_carry=None,
        deterministic: bool = True,
        **data: Any,
    ):
        _checks.flag(self.return_state, "KerasLSTM.return_state")
        _checks.flag(self.flip_outputs, "KerasLSTM.flip_outputs")
        if self.return_state and not self.lstm.return_carry:
            raise ValueError("KerasLSTM(return_state=True) needs lstm.return_carry=True")
        if self.flip_outputs and not self.lstm.return_sequences:
            raise ValueError("KerasLSTM(flip_outputs=True) needs lstm.return_sequences=True")
        out = self.lstm(
            x, initial_carry=initial_carry, deterministic=deterministic, **check_call_data(data, "KerasLSTM")
        )
        carries, y = out if self.lstm.return_carry else (None, out)
        if self.flip_outputs:
            y = jnp.flip(jnp.asarray(y), axis=-2)
        if carries is None:
            return y
        if not self.return_state:
            return carries, y
        return (y, *(array for carry in carries[-1] for array in (carry.h, carry.c)))


def from_keras(layer, *, ignore_dropout: bool = False, allow_nonfinite: bool = False):
    """A jaxlstm module and variables computing what a Keras 3 LSTM layer computes.

    Args:
        layer: a built ``keras.layers.LSTM`` or ``keras.layers.Bidirectional``
            wrapping one (merge modes "concat", "sum", "mul", "ave").
        ignore_dropout: Keras' ``dropout`` (on the inputs) and
            ``recurrent_dropout`` become the module's
            ``variant=LSTMVariant(input_dropout=..., recurrent_dropout=...)``
            (the same masks: one per sequence, constant over time), so the
            module trains with them and, like Keras, uses none at inference.
            ``True`` drops them: a plain module, equal at inference, that
            trains without them.
        allow_nonfinite: load NaN or ±Inf weights (or ``stateful`` states)
            instead of refusing them.

    Returns:
        ``(module, variables)``. ``module`` is a ``jaxlstm.LSTM`` with
        ``features=units``, ``return_sequences``, ``bidirectional`` and
        ``merge`` as the layer (``reverse`` for ``go_backwards``), or a
        ``KerasLSTM`` holding one when the layer has ``return_state=True`` or
        ``go_backwards=True, return_sequences=True`` (see ``KerasLSTM``).
        ``module.apply(variables, x)`` equals ``layer(x)`` (inference), and
        ``module.apply(variables, x, mask=mask)`` equals
        ``layer(x, mask=mask)`` for any boolean mask (B, T), masks that begin
        with ``False`` and all-``False`` rows included; how masked steps map
        to ``masked_output``, and the two corners that differ: this module's
        docstring, "Masks". Training draws its own masks from the module's
        ``'dropout'`` rng, not from Keras' ``seed``. ``activation`` and
        ``recurrent_activation`` become ``activation_fn`` and ``gate_fn``
        (this module's docstring, "Activations").

    ``stateful=True`` converts to ``jl.LSTM(stateful=True)``, and the layer's
    current states to the ``"carry"`` collection of ``variables``, so
    ``y, state = module.apply(variables, chunk, mutable=["carry"])`` (then
    ``variables = {**variables, **state}``) continues where the Keras layer
    stands; Keras' ``layer.reset_state()`` is dropping that collection.

    ``use_bias=False`` converts to a zero bias; ``unroll``, ``use_cudnn``,
    ``seed``, initializers, regularizers and constraints do not change the
    function and are not carried over (``unroll`` only through ``masked_output``).

    Raises:
        ImportError: Keras does not run on its JAX backend (see this module's docstring).
        TypeError: not an LSTM or Bidirectional(LSTM) layer.
        ValueError: a weight holds NaN or ±Inf (named, with the count; see
            ``allow_nonfinite``), the layer is not built, or uses an activation that is not
            an elementwise Keras activation, or its two directions differ in
            activations or dropout rates (a ``jaxlstm.LSTM`` has one cell
            variant for both).
        NotImplementedError: ``stateful=True`` with ``go_backwards=True`` or
            in a ``Bidirectional``; ``Bidirectional`` with ``merge_mode=None``
            or over a ``go_backwards=True`` layer, or whose two layers treat
            masked steps differently.
    """
    keras = require_keras("from_keras")
    ignore_dropout = _checks.flag(ignore_dropout, "ignore_dropout")
    allow_nonfinite = _checks.flag(allow_nonfinite, "allow_nonfinite")
    layers = _lstm_layers(keras, layer)
    gate_fn, activation_fn = _activations(keras, layers)
    options = dict(
        masked_output=_masked_output(layers, bidirectional=len(layers) == 2),
        gate_fn=gate_fn,
        activation_fn=activation_fn,
        variant=_variant(layers, ignore_dropout),
    )
    params = _read_params(keras, layer, layers, allow_nonfinite)
    module = _module(layer, layers, params["layer_0"]["w_ih"].dtype, **options)
    variables = {"params": params}
    first = layers[0]
    if first.stateful and first.states is not None:
        h, c = (
            jnp.asarray(check_finite(_numpy(keras, state), f"from_keras: {first.name}.states[{i}]", allow_nonfinite))
            for i, state in enumerate(first.states)
        )
        variables["carry"] = {"state": ((LSTMCarry(h, c),),)}
    return module, variables


def _module(layer, layers, variable_dtype, **options) -> LSTM | KerasLSTM:
    """The ``jl.LSTM`` with the layer's structure and ``options``, wrapped in a ``KerasLSTM`` where Keras'
    conventions differ (``go_backwards`` with ``return_sequences``, ``return_state``)."""
    first = layers[0]
    compute_dtype = jnp.dtype(first.compute_dtype)
    bidirectional = len(layers) == 2
    go_backwards = bool(first.go_backwards) and not bidirectional
    return_sequences, return_state = bool(first.return_sequences), bool(first.return_state)
    module = LSTM(
        features=first.units,
        bidirectional=bidirectional,
        merge=layer.merge_mode if bidirectional else "concat",
        return_sequences=return_sequences,
        return_carry=return_state,
        reverse=go_backwards,
        init_scheme="keras",
        param_dtype=variable_dtype,
        dtype=None if compute_dtype == variable_dtype else compute_dtype,
        stateful=bool(first.stateful),
        **options,
    )
    flip = go_backwards and return_sequences
    if flip or return_state:
        return KerasLSTM(module, flip_outputs=flip, return_state=return_state)
    return module


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
        parameter dtype; ``activation`` and ``recurrent_activation`` named
        after ``activation_fn`` and ``gate_fn`` (see ``KERAS_ACTIVATIONS``);
        ``dropout`` and ``recurrent_dropout`` from the variant's
        ``input_dropout`` and ``recurrent_dropout``.
        Masked steps as ``masked_output``: a one-direction layer gets
        ``zero_output_for_mask=True`` for ``"zeros"`` (when it returns
        sequences); a ``Bidirectional`` one always writes zeros there
        (Keras forces it), so ``"previous"`` with ``return_sequences`` builds
        its layers with ``unroll=True``, the Keras loop that repeats the
        previous output (it needs a fixed number of time steps).

    Raises:
        ImportError: Keras does not run on its JAX backend (see this module's docstring).
        ValueError: ``num_layers > 1`` (one Keras layer is one layer: convert
            each), ``reverse=True`` with ``return_sequences=True`` on a
            bare ``jl.LSTM`` (Keras' ``go_backwards`` returns the sequence in
            reversed time order; wrap it as
            ``KerasLSTM(lstm, flip_outputs=True)`` to accept that), an
            activation Keras has no name for, ``learn_initial_carry=True``
            (Keras has no learnable initial state), ``stateful=True``, an
            LSTM variant other than input and recurrent dropout (peepholes,
            a projection, ...), or any other option Keras' LSTM lacks.
    """
    keras = require_keras("to_keras")

    flip = None
    return_state = None
    if isinstance(module, KerasLSTM):
        flip, return_state = module.flip_outputs, module.return_state
        module = module.lstm
    module = lstm_module(module)
    _check_keras_has(module, flip)
    names = _activation_names(module)
    variant = module.config.cell_variant
    stack = read_stack(module, variables)
    input_size = stack[0][0][0].shape[0]
    dtype = np.dtype(stack[0][0][0].dtype).name
    zeros_at_masked = module.masked_output == "zeros" and module.return_sequences
    lstm = keras.layers.LSTM(
        module.features,
        activation=names["activation_fn"],
        recurrent_activation=names["gate_fn"],
        return_sequences=module.return_sequences,
        return_state=bool(module.return_carry if return_state is None else return_state),
        go_backwards=bool(module.reverse),
        zero_output_for_mask=zeros_at_masked,
        unroll=module.bidirectional and module.return_sequences and not zeros_at_masked,
        dropout=variant.input_dropout,
        recurrent_dropout=variant.recurrent_dropout,
        dtype=dtype,
    )
    layer = keras.layers.Bidirectional(lstm, merge_mode=module.merge, dtype=dtype) if module.bidirectional else lstm
    # Keras' initializers (run by build, then overwritten) rely on implicit rank and dtype promotion
    # under its jax backend; allow it here so that to_keras works under strict JAX settings too.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        layer.build((None, None, input_size))
        layer.set_weights([array for w_ih, w_hh, b in stack[0] for array in (w_ih, w_hh, b)])
    return layer


def _check_keras_has(module: LSTM, flip: bool | None) -> None:
    """Refuses a module that one ``keras.layers.LSTM`` (or ``Bidirectional`` of one) cannot compute."""
    if module.num_layers != 1:
        raise ValueError(f"to_keras: a Keras LSTM layer is one layer; this module has num_layers={module.num_layers}")
    if module.reverse and module.return_sequences and not flip:
        raise ValueError(
            "to_keras: Keras' go_backwards=True returns the output sequence in reversed time order, "
            "jaxlstm's reverse=True keeps it aligned with the inputs; pass KerasLSTM(module, flip_outputs=True) "
            "to convert to the Keras behaviour"
        )
    # Options to_keras carries over (or that change nothing in one layer); any other option set away from its
    # default has no keras.layers.LSTM equivalent and must not be dropped silently.
    handled = {
        "features", "num_layers", "bidirectional", "merge", "return_sequences", "return_carry", "dropout", "dtype",
        "param_dtype", "init_scheme", "unroll", "reverse", "masked_output", "gradient", "gate_fn", "activation_fn",
        "learn_initial_carry", "stateful", "variant", "parent", "name",
    }  # fmt: skip
    default = LSTM(module.features)
    for field in dataclasses.fields(module):
        if field.name not in handled and getattr(module, field.name) != getattr(default, field.name):
            raise ValueError(
                f"to_keras: {field.name}={getattr(module, field.name)!r} has no keras.layers.LSTM equivalent"
            )
    has = "input_dropout (its dropout) and recurrent_dropout only"
    refuse_variant_options(module, KERAS_VARIANT_OPTIONS, "to_keras: keras.layers.LSTM", has)
    if module.learn_initial_carry:
        raise ValueError(
            "to_keras: Keras' LSTM has no learnable initial state; a module with learn_initial_carry=True "
            "does not convert (pass its h0, c0 to the Keras layer as initial_state yourself)"
        )
    if module.stateful:
        raise ValueError(
            "to_keras: stateful=True does not convert (a stateful Keras layer needs a fixed batch size); "
            "convert the module with stateful=False and pass initial_state to the Keras layer"
        )
