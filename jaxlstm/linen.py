"""flax.linen modules: ``LSTM`` (a whole layer stack) and ``LSTMCell`` (one step).

Thin wrappers: they create the parameters and call the functional core
(``jaxlstm.stacked_lstm`` / ``jaxlstm.lstm_cell``); all the numerics live there.

Parameter names follow PyTorch's: ``params["layer_0"]`` holds the first layer's
forward ``w_ih`` (D, 4H), ``w_hh`` (H, 4H) and ``b`` (4H,);
``params["layer_0_reverse"]`` its backward direction. The LSTM variants
(``proj_size``, ``peepholes``, ``layer_norm``, ...) add their weights next to
them: ``w_hr``, ``w_peep``, ``ln_ih_scale``, ... (see ``jaxlstm.VariantParams``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from . import _checks
from .cell import INIT_SCHEMES, Activation, LSTMCarry, LSTMParams, initializers, lstm_cell, state_dtype
from .scan import GRADIENTS, MASKED_OUTPUTS
from .stack import MERGE_MODES, StackCarry, check_stack_carry, last_output, merged_size, stacked_lstm
from .variants import LSTMVariant, VariantParams, variant_initializers, variant_param_shapes

__all__ = ["LSTM", "LSTMCell", "VariantWeights", "cell_name"]


def cell_name(layer: int, direction: int) -> str:
    """The parameter-tree key of one layer and direction: ``layer_0``, ``layer_0_reverse``."""
    return f"layer_{layer}" + ("_reverse" if direction == 1 else "")


def fresh_carries(
    learned: tuple[tuple[LSTMCarry, ...], ...] | None,
    num_layers: int,
    num_directions: int,
    batch_shape: tuple[int, ...],
    hidden_size: int,
    dtype,
    recurrent_size: int | None = None,
) -> StackCarry:
    """The carries a sequence starts (and a reset restarts) from: the learned
    ``(H,)`` ones broadcast over the batch, or zeros; nested ``[layer][direction]``.
    ``h`` has the computation dtype, ``c`` the state dtype (float32 at least).
    With ``recurrent_size`` R (a projection's P), ``h`` is ``(*batch, R)``."""
    shape, c_dtype = (*batch_shape, hidden_size), state_dtype(dtype)
    h_shape = shape if recurrent_size is None else (*batch_shape, recurrent_size)
    if learned is None:
        zeros = LSTMCarry(jnp.zeros(h_shape, dtype), jnp.zeros(shape, c_dtype))
        return tuple(tuple(zeros for _ in range(num_directions)) for _ in range(num_layers))
    return tuple(
        tuple(
            LSTMCarry(
                jnp.broadcast_to(carry.h.astype(dtype), h_shape), jnp.broadcast_to(carry.c.astype(c_dtype), shape)
            )
            for carry in layer
        )
        for layer in learned
    )


def start_carries(
    *,
    learned,
    initial_carry,
    stored,
    num_layers: int,
    num_directions: int,
    batch_shape: tuple[int, ...],
    hidden_size: int,
    dtype,
    recurrent_size: int | None,
) -> tuple[StackCarry, StackCarry]:
    """``(start, fresh)``: the carries a call starts from, and those a reset restarts from.

    Start: a given ``initial_carry``, else the carry a stateful layer kept
    (``stored``), else the learned or zero one. Resets restart from the given
    ``initial_carry``, else from the learned or zero one.
    """
    fresh = fresh_carries(learned, num_layers, num_directions, batch_shape, hidden_size, dtype, recurrent_size)
    if initial_carry is not None:
        check_stack_carry(
            initial_carry, num_layers, num_directions, batch_shape, hidden_size, "initial_carry", recurrent_size
        )
        return initial_carry, initial_carry
    if stored is not None:
        check_stateful_carry(stored, batch_shape)
        return stored, fresh
    return fresh, fresh


def check_stateful_carry(state: StackCarry, batch_shape: tuple[int, ...]) -> None:
    stored = tuple(state[0][0].h.shape[:-1])
    if stored != tuple(batch_shape):
        raise ValueError(
            f"stateful=True keeps one carry per sequence: the stored carry has batch shape {stored} but x has "
            f"batch shape {tuple(batch_shape)}; start afresh (linen: drop the 'carry' collection; "
            f"NNX: model.reset_carry())" + _checks._see("stateful-streaming")
        )


def _cast(params: LSTMParams, xs: Array, dtype) -> tuple[LSTMParams, Array]:
    """Casts params and inputs to the computation dtype (Flax's ``dtype`` convention)."""
    if dtype is None:
        with jax.numpy_dtype_promotion("standard"):  # the wider of the two, whatever the user's promotion mode
            dtype = jnp.promote_types(xs.dtype, params.w_ih.dtype)
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params), jnp.asarray(xs, dtype)


def _check_trained_input_size(cell: nn.Module, input_size: int) -> None:
    """Refuses an input whose feature count D differs from the cell's existing ``w_ih`` (D, 4H)."""
    if cell.has_variable("params", "w_ih"):
        shape = cell.get_variable("params", "w_ih").shape
        if shape[0] != input_size:
            raise ValueError(
                f"{cell.name}: the input has {input_size} features but the params expect "
                f"input_size={shape[0]} (params['{cell.name}']['w_ih'] has shape {shape})" + _checks._see("inputs")
            )


class LSTMCell(nn.RNNCellBase):
    """One LSTM step as a linen module; works inside ``flax.linen.RNN``.

    Attributes:
        features: H, the size of the state vector (``units``, ``hidden_size``).
        init_scheme: ``"keras"`` or ``"torch"`` initialisation (see
            ``jaxlstm.init_params``; not ``init``, which is linen's method).
        dtype: computation dtype (``None``: from inputs and params).
        param_dtype: parameter dtype.
        gate_fn, activation_fn: the gates' and the candidate/cell-output
            activations (default sigmoid and tanh), see ``jaxlstm.lstm_cell``.
        learn_initial_carry: also create trainable ``h0`` and ``c0`` (H,)
            (used by ``jaxlstm.LSTM``).

    Call ``cell(carry, x)`` with ``carry`` an ``LSTMCarry`` of ``(*batch, H)``
    arrays and ``x`` of shape ``(*batch, D)``; returns ``(new_carry, h)`` with
    ``h`` of shape ``(*batch, H)``.

    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxlstm as jl
    >>> rnn = nn.RNN(jl.LSTMCell(features=32))
    >>> variables = rnn.init(jax.random.key(0), jnp.ones((4, 10, 8)))
    >>> rnn.apply(variables, jnp.ones((4, 10, 8))).shape
    (4, 10, 32)
    """

    features: int
    init_scheme: str = "keras"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    gate_fn: Activation = jax.nn.sigmoid
    activation_fn: Activation = jnp.tanh
    learn_initial_carry: bool = False

    @nn.compact
    def weights(self, input_size: int) -> LSTMParams:
        """This cell's ``LSTMParams`` for ``input_size`` D, created on first use."""
        features = _checks.positive_int(self.features, "features")
        _check_trained_input_size(self, input_size)
        init_w_ih, init_w_hh, init_b = initializers(self.init_scheme, features, argument="init_scheme")
        gates = 4 * features
        if self.learn_initial_carry:
            self.param("h0", nn.initializers.zeros_init(), (features,), self.param_dtype)
            self.param("c0", nn.initializers.zeros_init(), (features,), self.param_dtype)
        return LSTMParams(
            self.param("w_ih", init_w_ih, (input_size, gates), self.param_dtype),
            self.param("w_hh", init_w_hh, (features, gates), self.param_dtype),
            self.param("b", init_b, (gates,), self.param_dtype),
        )

    def learned_carry(self) -> LSTMCarry:
        """The trainable initial ``h0`` and ``c0``, each ``(H,)`` (after ``weights``)."""
        return LSTMCarry(self.get_variable("params", "h0"), self.get_variable("params", "c0"))

    def __call__(self, carry: LSTMCarry, x: Float[Array, "*batch input"]) -> tuple[LSTMCarry, Array]:
        _checks.floating(x, "x")
        params, x = _cast(self.weights(x.shape[-1]), x, self.dtype)
        return lstm_cell(params, carry, x, gate_fn=self.gate_fn, activation_fn=self.activation_fn)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]) -> LSTMCarry:
        """Zeros of shape ``(*input_shape[:-1], H)`` for ``h`` and ``c``."""
        shape = (*input_shape[:-1], self.features)
        dtype = self.param_dtype if self.dtype is None else self.dtype
        return LSTMCarry(jnp.zeros(shape, dtype), jnp.zeros(shape, state_dtype(dtype)))

    @property
    def num_feature_axes(self) -> int:
        return 1


class VariantWeights(nn.Module):
    """The parameters of one variant cell (one layer, one direction) of ``jaxlstm.LSTM``.

    ``jl.LSTM`` uses it in place of ``LSTMCell`` when a variant option is on;
    it creates ``w_ih``, ``w_hh`` (R, 4H), ``b`` and the variant's own
    weights (``w_hr``, ``w_peep``, ``ln_*``; see ``jaxlstm.VariantParams``),
    under the same names ``layer_0``, ``layer_0_reverse``, ... The numerics
    are ``jaxlstm.lstm_variant``'s.
    """

    features: int
    variant: LSTMVariant
    init_scheme: str = "keras"
    param_dtype: Any = jnp.float32
    learn_initial_carry: bool = False

    @nn.compact
    def weights(self, input_size: int) -> VariantParams:
        """This cell's ``VariantParams`` for ``input_size`` D, created on first use."""
        _check_trained_input_size(self, input_size)
        inits = variant_initializers(self.init_scheme, self.features, argument="init_scheme")
        if self.learn_initial_carry:
            self.param(
                "h0", nn.initializers.zeros_init(), (self.variant.recurrent_size(self.features),), self.param_dtype
            )
            self.param("c0", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        shapes = variant_param_shapes(input_size, self.features, self.variant)
        return VariantParams(
            **{name: self.param(name, inits[name], shape, self.param_dtype) for name, shape in shapes.items()}
        )

    def learned_carry(self) -> LSTMCarry:
        """The trainable initial ``h0`` (R,) and ``c0`` (H,) (after ``weights``)."""
        return LSTMCarry(self.get_variable("params", "h0"), self.get_variable("params", "c0"))


class LSTM(nn.Module):
    """An LSTM layer, or a stack of them, over whole sequences (batch-first).

    There is one cell per layer and direction, applied to every time step;
    ``features`` is the size H of its state vector.

    Attributes:
        features: H (Keras' ``units``, PyTorch's ``hidden_size``).
        num_layers: stacked layers; layer l + 1 reads layer l's output sequence.
        bidirectional: add a backward direction to every layer.
        merge: how directions combine: ``"concat"`` (F = 2H), ``"sum"``,
            ``"mul"``, ``"ave"`` (F = H), as Keras' ``Bidirectional``.
        return_sequences: output every step ``(*batch, T, F)``; ``False``
            gives each sequence's last valid step ``(*batch, F)`` (for
            bidirectional: forward final h merged with backward final h, the
            one at step 0 — torch's ``h_n``).
        return_carry: return ``(carries, output)``, ``carries`` nested
            ``[layer][direction]`` → ``LSTMCarry`` of ``(*batch, H)``.
        dropout: dropout rate on every layer's output but the last (PyTorch's
            ``dropout``); active with ``deterministic=False`` and a
            ``'dropout'`` rng.
        dtype: computation dtype (``None``: inferred); with bfloat16 or float16
            the matmuls run in that dtype while the cell state c stays float32
            (mixed precision). param_dtype: the parameters' dtype.
        init_scheme: ``"keras"`` or ``"torch"`` initialisation (named so because
            ``init`` is linen's own method).
        unroll: ``lax.scan`` unroll (speed only).
        reverse: a single direction that reads each sequence from its last
            valid step back to step 0 (outputs stay aligned with the inputs);
            not with ``bidirectional``, which already has such a direction.
        masked_output: what steps outside ``mask`` output: ``"zeros"`` or
            ``"previous"`` (the last counted step's output), as ``jaxlstm.lstm``.
        gradient: ``"fused"`` (default) or ``"autodiff"``, as ``jaxlstm.lstm``.
        gate_fn, activation_fn: the gates' (sigmoid) and the candidate and
            cell output's (tanh) activations — Keras' ``recurrent_activation``
            and ``activation``.
        learn_initial_carry: trainable ``h0`` and ``c0`` of shape (H,) for
            every layer and direction (``params["layer_0"]["h0"]``), zeros at
            first, broadcast over the batch; an ``initial_carry`` given to the
            call still wins. Resets restart from them too.
        stateful: keep each layer's final carry in the variable collection
            ``"carry"`` and start the next call from it, to feed a long
            sequence chunk by chunk: ``y, state = layer.apply(variables, chunk,
            mutable=["carry"])``, then ``variables = {**variables, **state}``.
            ``resets[:, 0] = True`` restarts a row's stream. Forward only.
        checkpoint_every: for very long sequences, keep only every K-th carry
            of each layer for the backward pass and recompute the rest (see
            ``jaxlstm.lstm``); values and gradients do not change.

    The LSTM variants (equations and references in ``jaxlstm.LSTMVariant``
    and docs/variants.md); with every one off (the default) the layer is the
    plain LSTM on its fused fast path.

    Variant attributes:
        proj_size: P < H: project ``h`` to P features (LSTMP, PyTorch's
            ``proj_size``); ``w_hr`` (H, P), ``w_hh`` (P, 4H); the output,
            ``h`` and the next layer's input have P (2P for bidirectional
            "concat") features, ``c`` keeps H.
        peepholes: peephole connections ``w_peep`` (3, H) from c to the i, f, o gates.
        layer_norm: layer norm of the input and recurrent pre-activations
            (gains ``ln_ih_scale``, ``ln_hh_scale`` (4H,)) and of c before the
            output tanh (``ln_c_scale``, ``ln_c_bias`` (H,)); ε is
            ``layer_norm_epsilon``.
        cifg: coupled input-forget gate, f = 1 − i (the f columns stay in
            the 4H layout, unused).
        forget_bias: a constant added to the forget gate's pre-activation.
        cell_clip: clip c to [−cell_clip, cell_clip].
        input_dropout, recurrent_dropout: Keras' ``dropout`` and
            ``recurrent_dropout`` (one mask per sequence, constant over time);
            ``dropout`` above is PyTorch's, between layers.
        zoneout_h, zoneout_c: zoneout probabilities of h and c.

    Dropout and zoneout draw from the ``'dropout'`` rng with
    ``deterministic=False``; with ``deterministic=True`` dropout is off and
    zoneout uses its expectation.

    Call with ``x`` ``(*batch, T, D)``, optional ``seq_lengths`` ``(*batch,)``
    ints, ``mask`` and ``resets`` ``(*batch, T)`` bools (see ``jaxlstm.lstm``),
    ``initial_carry`` nested like the returned carries, and ``deterministic``.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> layer = jl.LSTM(features=32)                   # 32 units: one 32-vector per step
    >>> x = jnp.ones((4, 10, 8))                       # (batch, time, input)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape                # (batch, time, units)
    (4, 10, 32)
    >>> jl.LSTM(32, return_sequences=False).apply(variables, x).shape   # (batch, units)
    (4, 32)
    """

    features: int
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = "concat"
    return_sequences: bool = True
    return_carry: bool = False
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    init_scheme: str = "keras"
    unroll: int = 1
    reverse: bool = False
    masked_output: str = "zeros"
    gradient: str = "fused"
    gate_fn: Activation = jax.nn.sigmoid
    activation_fn: Activation = jnp.tanh
    learn_initial_carry: bool = False
    stateful: bool = False
    checkpoint_every: int | None = None
    proj_size: int | None = None
    peepholes: bool = False
    layer_norm: bool = False
    cifg: bool = False
    forget_bias: float = 0.0
    cell_clip: float | None = None
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    layer_norm_epsilon: float = 1e-5

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def variant(self) -> LSTMVariant:
        """The variant options as a ``jaxlstm.LSTMVariant`` (``.is_plain`` when all are off)."""
        return LSTMVariant(**{field.name: getattr(self, field.name) for field in dataclasses.fields(LSTMVariant)})

    @property
    def recurrent_size(self) -> int:
        """R, the size of each direction's ``h`` and output: ``proj_size`` if set, else ``features``."""
        return self.features if self.proj_size is None else self.proj_size

    @property
    def output_size(self) -> int:
        """F, the width of the output: 2·R for bidirectional "concat", else R (R = proj_size or features)."""
        return merged_size(self.recurrent_size, self.num_directions, self.merge)

    def _check_config(self) -> None:
        _checks.positive_int(self.features, "features")
        _checks.positive_int(self.num_layers, "num_layers")
        _checks.one_of(self.merge, MERGE_MODES, "merge")
        _checks.one_of(self.init_scheme, INIT_SCHEMES, "init_scheme")
        _checks.rate(self.dropout, "dropout")
        _checks.one_of(self.masked_output, MASKED_OUTPUTS, "masked_output")
        _checks.one_of(self.gradient, GRADIENTS, "gradient")
        _checks.activation(self.gate_fn, "gate_fn")
        _checks.activation(self.activation_fn, "activation_fn")
        self.variant.check_hidden_size(self.features, "features")
        if self.reverse and self.bidirectional:
            raise ValueError("reverse=True is for a single direction; bidirectional=True already reads backward too")
        if self.stateful and (self.bidirectional or self.reverse):
            raise ValueError(
                "stateful=True streams a sequence forward chunk by chunk; it can't be combined with "
                f"bidirectional={self.bidirectional} or reverse={self.reverse}, which need the whole sequence"
            )

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        seq_lengths: Int[Array, "*batch"] | None = None,
        mask: Bool[Array, "*batch time"] | None = None,
        resets: Bool[Array, "*batch time"] | None = None,
        initial_carry: StackCarry | None = None,
        deterministic: bool = True,
    ):
        self._check_config()
        _checks.inputs(x, None, "x", min_rank=2, layout="(*batch, time, input)")
        batch_shape = tuple(x.shape[:-2])
        variant = self.variant
        # One weights module per layer and direction: the plain cell, or one holding a variant's extra weights.
        if variant.is_plain:
            make_cell = functools.partial(LSTMCell, self.features, self.init_scheme, self.dtype, self.param_dtype)
        else:
            make_cell = functools.partial(VariantWeights, self.features, variant, self.init_scheme, self.param_dtype)
        cells = [
            [
                make_cell(learn_initial_carry=self.learn_initial_carry, name=cell_name(layer, direction))
                for direction in range(self.num_directions)
            ]
            for layer in range(self.num_layers)
        ]
        recurrent_size = None if variant.is_plain else self.recurrent_size
        stack = tuple(
            tuple(
                _cast(cell.weights(x.shape[-1] if layer == 0 else self.output_size), x, self.dtype)[0] for cell in row
            )
            for layer, row in enumerate(cells)
        )
        xs = _cast(stack[0][0], x, self.dtype)[1]
        learned = (
            tuple(tuple(cell.learned_carry() for cell in row) for row in cells) if self.learn_initial_carry else None
        )
        stored = self.get_variable("carry", "state") if self.stateful and self.has_variable("carry", "state") else None
        start, fresh = start_carries(
            learned=learned,
            initial_carry=initial_carry,
            stored=stored,
            num_layers=self.num_layers,
            num_directions=self.num_directions,
            batch_shape=batch_shape,
            hidden_size=self.features,
            dtype=xs.dtype,
            recurrent_size=recurrent_size,
        )
        use_dropout = not deterministic and (self.dropout > 0.0 and self.num_layers > 1 or variant.regularizes)
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
            dropout_key=self.make_rng("dropout") if use_dropout else None,
            unroll=self.unroll,
            reverse=self.reverse,
            gradient=self.gradient,
            gate_fn=self.gate_fn,
            activation_fn=self.activation_fn,
            variant=None if variant.is_plain else variant,
            checkpoint_every=self.checkpoint_every,
        )
        if self.stateful and not self.is_initializing() and self.is_mutable_collection("carry"):
            self.put_variable("carry", "state", carries)
        output = hs if self.return_sequences else last_output(carries, self.merge)
        return (carries, output) if self.return_carry else output
