"""flax.nnx modules: ``LSTM`` (a whole layer stack) and ``LSTMCell`` (one step).

The same semantics and the same core as the linen modules in
``jaxlstm.linen``, in Flax's current object-style API. Parameter names match
linen's and PyTorch's: ``model.layer_0.w_ih`` (D, 4H), ``model.layer_0.w_hh``
(H, 4H), ``model.layer_0.b`` (4H,), ``model.layer_0_reverse`` for the backward
direction. With a variant option on, each ``model.layer_*`` is a
``VariantWeights`` that adds the variant's weights (``w_hr``, ``w_peep``,
``ln_*``) under the same names as linen's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from . import _checks
from .cell import INIT_SCHEMES, Activation, LSTMCarry, LSTMParams, initializers, lstm_cell, state_dtype
from .linen import _cast, cell_name, start_carries
from .scan import GRADIENTS, MASKED_OUTPUTS
from .stack import MERGE_MODES, StackCarry, last_output, merged_size, stacked_lstm
from .variants import LSTMVariant, VariantParams, variant_initializers, variant_param_shapes

__all__ = ["LSTM", "LSTMCell", "VariantWeights", "Carry"]


class Carry(nnx.Variable):
    """The carry a ``stateful=True`` LSTM keeps between calls (``[layer][direction]`` → ``LSTMCarry``)."""


class LSTMCell(nnx.Module):
    """One LSTM step as an NNX module; works inside ``flax.nnx.RNN``.

    Args:
        in_features: D, the size of one step's input.
        features: H, the size of the state vector (``units``).
        init_scheme: ``"keras"`` or ``"torch"`` (see ``jaxlstm.init_params``).
        dtype: computation dtype (``None``: from inputs and params).
        param_dtype: parameter dtype.
        gate_fn, activation_fn: the gates' and the candidate/cell-output
            activations (default sigmoid and tanh), see ``jaxlstm.lstm_cell``.
        learn_initial_carry: also hold trainable ``h0`` and ``c0`` (H,).
        rngs: ``nnx.Rngs`` for the parameters.

    Call ``cell(carry, x)``: ``carry`` an ``LSTMCarry`` of ``(*batch, H)``,
    ``x`` of shape ``(*batch, D)``; returns ``(new_carry, h)``, ``h`` ``(*batch, H)``.
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        init_scheme: str = "keras",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        learn_initial_carry: bool = False,
        rngs: nnx.Rngs,
    ):
        in_features = _checks.positive_int(in_features, "in_features")
        features = _checks.positive_int(features, "features")
        _checks.activation(gate_fn, "gate_fn")
        _checks.activation(activation_fn, "activation_fn")
        init_w_ih, init_w_hh, init_b = initializers(init_scheme, features, argument="init_scheme")
        gates = 4 * features
        self.in_features, self.features, self.dtype = in_features, features, dtype
        self.gate_fn, self.activation_fn = gate_fn, activation_fn
        if learn_initial_carry:
            self.h0 = nnx.Param(jnp.zeros((features,), param_dtype))
            self.c0 = nnx.Param(jnp.zeros((features,), param_dtype))
        self.w_ih = nnx.Param(init_w_ih(rngs.params(), (in_features, gates), param_dtype))
        self.w_hh = nnx.Param(init_w_hh(rngs.params(), (features, gates), param_dtype))
        self.b = nnx.Param(init_b(rngs.params(), (gates,), param_dtype))

    @property
    def params(self) -> LSTMParams:
        """The weights as the functional core's ``LSTMParams``."""
        return LSTMParams(self.w_ih[...], self.w_hh[...], self.b[...])

    def __call__(self, carry: LSTMCarry, x: Float[Array, "*batch input"]) -> tuple[LSTMCarry, Array]:
        _checks.floating(x, "x")
        params, x = _cast(self.params, x, self.dtype)
        return lstm_cell(params, carry, x, gate_fn=self.gate_fn, activation_fn=self.activation_fn)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | None = None) -> LSTMCarry:
        """Zeros of shape ``(*input_shape[:-1], H)`` for ``h`` and ``c``."""
        shape = (*input_shape[:-1], self.features)
        dtype = self.w_hh[...].dtype if self.dtype is None else self.dtype
        return LSTMCarry(jnp.zeros(shape, dtype), jnp.zeros(shape, state_dtype(dtype)))

    @property
    def num_feature_axes(self) -> int:
        return 1


class VariantWeights(nnx.Module):
    """The parameters of one variant cell (one layer, one direction) of ``jaxlstm.nnx.LSTM``.

    Holds ``w_ih``, ``w_hh`` (R, 4H), ``b`` and the variant's own weights
    (``w_hr``, ``w_peep``, ``ln_*``; see ``jaxlstm.VariantParams``) as
    ``nnx.Param``; ``params`` gives them as ``VariantParams``. The numerics
    are ``jaxlstm.lstm_variant``'s.
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        variant: LSTMVariant,
        *,
        init_scheme: str = "keras",
        param_dtype: Any = jnp.float32,
        learn_initial_carry: bool = False,
        rngs: nnx.Rngs,
    ):
        in_features = _checks.positive_int(in_features, "in_features")
        features = _checks.positive_int(features, "features")
        variant.check_hidden_size(features, "features")
        inits = variant_initializers(init_scheme, features, argument="init_scheme")
        self.in_features, self.features, self.variant = in_features, features, variant
        if learn_initial_carry:
            self.h0 = nnx.Param(jnp.zeros((variant.recurrent_size(features),), param_dtype))
            self.c0 = nnx.Param(jnp.zeros((features,), param_dtype))
        for name, shape in variant_param_shapes(in_features, features, variant).items():
            setattr(self, name, nnx.Param(inits[name](rngs.params(), shape, param_dtype)))

    @property
    def params(self) -> VariantParams:
        """The weights as the functional core's ``VariantParams`` (``None`` for those the variant lacks)."""
        names = variant_param_shapes(self.in_features, self.features, self.variant)
        return VariantParams(**{name: getattr(self, name)[...] for name in names})


class LSTM(nnx.Module):
    """An LSTM layer, or a stack of them, over whole sequences (batch-first).

    The NNX twin of ``jaxlstm.LSTM`` (linen): same options, same numbers.
    One cell per layer and direction is applied to every time step;
    ``features`` is the size H of its state vector.

    Args:
        in_features: D, the size of one step's input.
        features: H (Keras' ``units``, PyTorch's ``hidden_size``).
        num_layers, bidirectional, merge, return_sequences, return_carry,
        dropout, dtype, param_dtype, init_scheme, unroll, reverse,
        masked_output, gradient, gate_fn, activation_fn,
        learn_initial_carry: as ``jaxlstm.LSTM``.
        proj_size, peepholes, layer_norm, cifg, forget_bias, cell_clip,
        input_dropout, recurrent_dropout, zoneout_h, zoneout_c,
        layer_norm_epsilon: the LSTM variants, as ``jaxlstm.LSTM``
            (``jaxlstm.LSTMVariant``); all off by default.
        stateful: keep each layer's final carry in ``model.carry`` (a
            ``jaxlstm.nnx.Carry`` variable) and start the next call from it,
            to feed a long sequence chunk by chunk; ``model.reset_carry()``
            starts afresh, ``resets[:, 0] = True`` restarts one row.
        checkpoint_every: as ``jaxlstm.LSTM``: keep only every K-th carry for
            the backward pass of very long sequences.
        deterministic: default for the call's ``deterministic``; ``False``
            (dropout active, when ``dropout > 0``) as ``nnx.Dropout``, and set
            by ``model.eval()`` / ``model.train()``. Also switches the
            variants' dropout and zoneout draws (zoneout is its expectation
            when deterministic).
        rngs: ``nnx.Rngs`` for the parameters and (stream ``"dropout"``,
            falling back to ``"default"``) the dropout masks.

    Call with ``x`` ``(*batch, T, D)``, optional ``seq_lengths`` ``(*batch,)``,
    ``mask`` and ``resets`` ``(*batch, T)``, ``initial_carry`` nested ``[layer][direction]``, ``deterministic`` and
    ``rngs``. Returns ``(*batch, T, F)`` with ``return_sequences``, else
    ``(*batch, F)``; F = 2H for bidirectional "concat", else H.

    >>> import jax.numpy as jnp, jaxlstm as jl
    >>> from flax import nnx
    >>> layer = jl.nnx.LSTM(8, 32, num_layers=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 10, 8))).shape             # (batch, time, units)
    (4, 10, 32)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        merge: str = "concat",
        return_sequences: bool = True,
        return_carry: bool = False,
        dropout: float = 0.0,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        init_scheme: str = "keras",
        unroll: int = 1,
        reverse: bool = False,
        masked_output: str = "zeros",
        gradient: str = "fused",
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        learn_initial_carry: bool = False,
        stateful: bool = False,
        checkpoint_every: int | None = None,
        deterministic: bool = False,
        proj_size: int | None = None,
        peepholes: bool = False,
        layer_norm: bool = False,
        cifg: bool = False,
        forget_bias: float = 0.0,
        cell_clip: float | None = None,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        rngs: nnx.Rngs,
    ):
        in_features = _checks.positive_int(in_features, "in_features")
        features = _checks.positive_int(features, "features")
        num_layers = _checks.positive_int(num_layers, "num_layers")
        _checks.one_of(merge, MERGE_MODES, "merge")
        _checks.one_of(init_scheme, INIT_SCHEMES, "init_scheme")
        self.in_features, self.features, self.num_layers = in_features, features, num_layers
        self.bidirectional, self.merge = bool(bidirectional), merge
        self.return_sequences, self.return_carry = bool(return_sequences), bool(return_carry)
        self.dropout = _checks.rate(dropout, "dropout")
        self.dtype, self.unroll, self.deterministic = dtype, _checks.positive_int(unroll, "unroll"), deterministic
        if reverse and bidirectional:
            raise ValueError("reverse=True is for a single direction; bidirectional=True already reads backward too")
        self.reverse = bool(reverse)
        if stateful and (bidirectional or reverse):
            raise ValueError(
                "stateful=True streams a sequence forward chunk by chunk; it can't be combined with "
                f"bidirectional={bidirectional} or reverse={reverse}, which need the whole sequence"
            )
        self.stateful, self.learn_initial_carry = bool(stateful), bool(learn_initial_carry)
        if checkpoint_every is not None:
            _checks.positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoint_every = checkpoint_every
        self.gate_fn, self.activation_fn = gate_fn, activation_fn
        self.carry = Carry(None)
        self.masked_output = _checks.one_of(masked_output, MASKED_OUTPUTS, "masked_output")
        self.gradient = _checks.one_of(gradient, GRADIENTS, "gradient")
        self.variant = LSTMVariant(
            proj_size=proj_size,
            peepholes=peepholes,
            layer_norm=layer_norm,
            cifg=cifg,
            forget_bias=forget_bias,
            cell_clip=cell_clip,
            input_dropout=input_dropout,
            recurrent_dropout=recurrent_dropout,
            zoneout_h=zoneout_h,
            zoneout_c=zoneout_c,
            layer_norm_epsilon=layer_norm_epsilon,
        )
        self.variant.check_hidden_size(features, "features")
        self.recurrent_size = self.variant.recurrent_size(features)
        num_directions = 2 if bidirectional else 1
        self.output_size = merged_size(self.recurrent_size, num_directions, merge)
        for layer in range(num_layers):
            for direction in range(num_directions):
                if self.variant.is_plain:
                    cell = LSTMCell(
                        in_features if layer == 0 else self.output_size,
                        features,
                        init_scheme=init_scheme,
                        dtype=dtype,
                        param_dtype=param_dtype,
                        gate_fn=gate_fn,
                        activation_fn=activation_fn,
                        learn_initial_carry=learn_initial_carry,
                        rngs=rngs,
                    )
                else:
                    cell = VariantWeights(
                        in_features if layer == 0 else self.output_size,
                        features,
                        self.variant,
                        init_scheme=init_scheme,
                        param_dtype=param_dtype,
                        learn_initial_carry=learn_initial_carry,
                        rngs=rngs,
                    )
                setattr(self, cell_name(layer, direction), cell)
        draws = (self.dropout > 0.0 and num_layers > 1) or self.variant.regularizes
        self.rngs = rngs["dropout"].fork() if draws else nnx.data(None)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def stack_params(self) -> tuple[tuple[LSTMParams, ...], ...]:
        """All weights as the functional core's ``StackParams``, ``[layer][direction]``
        (``VariantParams`` when a variant option is on)."""
        return tuple(
            tuple(getattr(self, cell_name(layer, direction)).params for direction in range(self.num_directions))
            for layer in range(self.num_layers)
        )

    def reset_carry(self) -> None:
        """Forgets the carry kept by ``stateful=True``: the next call starts afresh."""
        self.carry.set_value(None)

    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        seq_lengths: Int[Array, "*batch"] | None = None,
        mask: Bool[Array, "*batch time"] | None = None,
        resets: Bool[Array, "*batch time"] | None = None,
        initial_carry: StackCarry | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
    ):
        _checks.inputs(x, self.in_features, "x", min_rank=2, layout="(*batch, time, input)")
        batch_shape = tuple(x.shape[:-2])
        deterministic = self.deterministic if deterministic is None else deterministic
        stack = tuple(tuple(_cast(p, x, self.dtype)[0] for p in layer) for layer in self.stack_params())
        xs = _cast(stack[0][0], x, self.dtype)[1]
        learned = None
        if self.learn_initial_carry:
            learned = tuple(
                tuple(
                    LSTMCarry(cell.h0[...], cell.c0[...])
                    for cell in (getattr(self, cell_name(layer, d)) for d in range(self.num_directions))
                )
                for layer in range(self.num_layers)
            )
        recurrent_size = None if self.variant.is_plain else self.recurrent_size
        start, fresh = start_carries(
            learned=learned,
            initial_carry=initial_carry,
            stored=self.carry.get_value() if self.stateful else None,
            num_layers=self.num_layers,
            num_directions=self.num_directions,
            batch_shape=batch_shape,
            hidden_size=self.features,
            dtype=xs.dtype,
            recurrent_size=recurrent_size,
        )
        dropout_key = None
        if ((self.dropout > 0.0 and self.num_layers > 1) or self.variant.regularizes) and not deterministic:
            if rngs is None:
                if self.rngs is None:
                    raise ValueError("dropout needs rngs: pass rngs=nnx.Rngs(...) to the constructor or the call")
                dropout_key = self.rngs()
            elif isinstance(rngs, nnx.Rngs):
                dropout_key = rngs.dropout()
            else:
                dropout_key = rngs
        carries, hs = stacked_lstm(
            stack,
            xs,
            start,
            reset_carries=fresh,
            seq_lengths=seq_lengths,
            mask=mask,
            resets=resets,
            masked_output=self.masked_output,
            merge=self.merge,
            dropout=self.dropout,
            dropout_key=dropout_key,
            unroll=self.unroll,
            reverse=self.reverse,
            gradient=self.gradient,
            gate_fn=self.gate_fn,
            activation_fn=self.activation_fn,
            variant=None if self.variant.is_plain else self.variant,
            checkpoint_every=self.checkpoint_every,
        )
        if self.stateful:
            self.carry.set_value(carries)
        output = hs if self.return_sequences else last_output(carries, self.merge)
        return (carries, output) if self.return_carry else output
