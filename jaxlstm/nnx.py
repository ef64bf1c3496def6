"""flax.nnx modules: ``LSTM`` (a whole layer stack) and ``LSTMCell`` (one step).

The same semantics and the same core as the linen modules in
``jaxlstm.linen``, in Flax's current object-style API: both are thin wrappers
of the Flax-free ``jaxlstm.layer`` (options, carries, casting, the rng rule,
the call). This module imports neither ``flax.linen`` nor ``jaxlstm.linen``.
Parameter names match linen's and PyTorch's: ``model.layer_0.w_ih`` (D, 4H),
``model.layer_0.w_hh`` (H, 4H), ``model.layer_0.b`` (4H,),
``model.layer_0_reverse`` for the backward direction. With an LSTM variant
(``variant=jl.LSTMVariant(...)``), each ``model.layer_*`` is a
``VariantWeights`` that adds the variant's weights (``w_hr``, ``w_peep``,
``ln_*``) under the same names as linen's.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from . import _checks
from .cell import Activation, LSTMCarry, LSTMParams, initial_carry, initializers, lstm_cell, module_input
from .gru_nnx import GRU as GRU  # noqa: E402  (the GRU's NNX modules, jl.nnx.GRU and jl.nnx.GRUCell)
from .gru_nnx import GRUCell as GRUCell  # noqa: E402
from .layer import (
    LayerConfig,
    LayerViews,
    cast,
    cell_name,
    check_input,
    draws_masks,
    dropout_key,
    fresh_carries,
    run,
)
from .nnx_layer import Carry as Carry
from .nnx_layer import call_dropout_key, check_rngs, dropout_stream, reset_kept_carry
from .options import check_call_data, takes_call_data
from .stack import StackCarry, StackParams
from .variants import LSTMVariant, VariantParams, check_variant, variant_initializers, variant_param_shapes

__all__ = ["LSTM", "LSTMCell", "VariantWeights", "Carry", "GRU", "GRUCell"]


class LSTMCell(nnx.Module):
    """One LSTM step as an NNX module; works inside ``flax.nnx.RNN``.

    Args:
        in_features: D, the size of one step's input.
        hidden_features: H, the size of the state vector (Flax's name).
        features: H too (jaxlstm's name, as ``jaxlstm.nnx.LSTM``): give
            exactly one of ``hidden_features`` and ``features``.
        init_scheme: ``"keras"``, ``"torch"`` or ``"flax"`` (see
            ``jaxlstm.init_params``).
        kernel_init, recurrent_kernel_init, bias_init: Flax's initializers
            ``(key, shape, dtype) -> array`` of the input kernels, the
            recurrent kernels and the bias; when given, they replace
            ``init_scheme``'s. Flax keeps one kernel per gate, jaxlstm packs
            the four: each is called once per gate with Flax's per-gate shape
            ((D, H), (H, H), (H,)) and the blocks concatenated in gate order
            i, f, g, o, so each block has the distribution Flax gives it.
        carry_init: the default carry initializer of ``initialize_carry``
            (``None``: zeros); Flax prefers it as ``initialize_carry``'s argument.
        dtype: computation dtype (``None``: from inputs and params).
        param_dtype: parameter dtype.
        gate_fn, activation_fn: the gates' and the candidate/cell-output
            activations (default sigmoid and tanh), see ``jaxlstm.lstm_cell``.
        learn_initial_carry: also hold trainable ``h0`` and ``c0`` (H,).
        rngs: ``nnx.Rngs`` for the parameters.

    Call ``cell(carry, x)``: ``carry`` an ``LSTMCarry`` of ``(*batch, H)``,
    ``x`` of shape ``(*batch, D)``; returns ``(new_carry, h)``, ``h`` ``(*batch, H)``.
    A bool or integer ``x`` is cast to the computation dtype (``dtype``, else
    the params' dtype), as Flax's cells cast it; the functional
    ``jaxlstm.lstm_cell`` refuses it. Unlike Flax's ``(c, h)`` tuple, the
    carry is ``LSTMCarry(h, c)``: read it by name, not by unpacking in Flax's order.

    >>> import jax.numpy as jnp, jaxlstm as jl
    >>> from flax import nnx
    >>> cell = jl.nnx.LSTMCell(in_features=3, hidden_features=4, init_scheme="flax", rngs=nnx.Rngs(0))
    >>> carry = cell.initialize_carry((2, 3), nnx.Rngs(1))
    >>> carry, h = cell(carry, jnp.ones((2, 3), jnp.int32))   # cast to float32, as Flax does
    >>> h.shape, h.dtype
    ((2, 4), dtype('float32'))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        *,
        features: int | None = None,
        init_scheme: str = "keras",
        kernel_init: Any = None,
        recurrent_kernel_init: Any = None,
        bias_init: Any = None,
        carry_init: Any = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        learn_initial_carry: bool = False,
        rngs: nnx.Rngs,
    ):
        in_features = _checks.positive_int(in_features, "in_features")
        features = _hidden_size(hidden_features, features)
        _checks.float_dtype(dtype, "dtype", allow_none=True)
        _checks.float_dtype(param_dtype, "param_dtype")
        _checks.activation(gate_fn, "gate_fn")
        _checks.activation(activation_fn, "activation_fn")
        learn_initial_carry = _checks.flag(learn_initial_carry, "learn_initial_carry")
        _checks.initializer(carry_init, "carry_init", "jax.nn.initializers.zeros")
        check_rngs(rngs)
        init_w_ih, init_w_hh, init_b = initializers(
            init_scheme,
            features,
            argument="init_scheme",
            kernel_init=kernel_init,
            recurrent_kernel_init=recurrent_kernel_init,
            bias_init=bias_init,
        )
        gates = 4 * features
        self.in_features, self.features, self.hidden_features = in_features, features, features
        self.dtype, self.param_dtype, self.carry_init = dtype, param_dtype, carry_init
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
        module_input(x, "x")
        params, x = cast(self.params, x, self.dtype)
        return lstm_cell(params, carry, x, gate_fn=self.gate_fn, activation_fn=self.activation_fn)

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: nnx.Rngs | nnx.RngStream | None = None, carry_init: Any = None
    ) -> LSTMCarry:
        """``h`` and ``c`` of shape ``(*input_shape[:-1], H)``: zeros, or drawn by ``carry_init`` (else the
        constructor's ``carry_init``) from ``rngs`` (its ``carry`` stream, as Flax; ``c`` first, then ``h``).
        ``h`` has the computation dtype, ``c`` at least float32."""
        shape = (*input_shape[:-1], self.features)
        dtype = self.w_hh[...].dtype if self.dtype is None else self.dtype
        keys = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
        if isinstance(keys, jax.Array):  # a plain key
            keys = iter(jax.random.split(keys)).__next__
        return initial_carry(shape, dtype, self.carry_init if carry_init is None else carry_init, keys)

    @property
    def num_feature_axes(self) -> int:
        return 1


class VariantWeights(nnx.Module):
    """The parameters of one variant cell (one layer, one direction) of ``jaxlstm.nnx.LSTM``.

    Holds ``w_ih``, ``w_hh`` (R, 4H), ``b`` and the variant's own weights
    (``w_hr``, ``w_peep``, ``ln_*``; see ``jaxlstm.VariantParams``) as
    ``nnx.Param``; ``params`` gives them as ``VariantParams``. The numerics
    are ``jaxlstm.stacked_lstm``'s with ``variant``.
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
        check_variant(variant)
        variant.check_hidden_size(features, "features")
        _checks.float_dtype(param_dtype, "param_dtype")
        learn_initial_carry = _checks.flag(learn_initial_carry, "learn_initial_carry")
        check_rngs(rngs)
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


class LSTM(LayerViews, nnx.Module):
    """An LSTM layer, or a stack of them, over whole sequences (batch-first).

    The NNX twin of ``jaxlstm.LSTM`` (linen): same options, same numbers.
    One cell per layer and direction is applied to every time step;
    ``features`` is the size H of its state vector.

    Args:
        in_features: D, the size of one step's input.
        features: H (Keras' ``units``, PyTorch's ``hidden_size``).
        deterministic: the default of the call's ``deterministic``:
            ``False`` (training) as ``nnx.Dropout``; ``model.eval()`` and
            ``model.train()`` set it. Why it differs from linen's: the
            docstring of ``jaxlstm.layer``, "Deterministic or random".
        rngs: required, as in Flax's own layers: ``nnx.Rngs`` for the parameters
            and (stream ``"dropout"``, falling back to ``"default"``) the dropout
            and zoneout masks.
        **options: the other options of ``jaxlstm.layer.LayerFields`` (``num_layers``,
            ``bidirectional``, ..., ``variant``, ``backend``), documented there once, as
            ``jaxlstm.LSTM``'s fields; an unknown name is a TypeError listing them.
            Each is kept as an attribute of the same name (``model.num_layers``),
            read at every call. ``stateful=True`` keeps the final carries
            in ``model.carry`` (a ``jaxlstm.nnx.Carry``, read with ``model.carry[...]``;
            a layer that is not stateful has none); ``model.reset_carry()`` starts
            afresh, ``model.reset_carry(batch_shape)`` puts the initial carry in place
            before the first call (for ``nnx.scan`` and checkpoint restores),
            ``reset_carry(rows=...)`` or ``resets[:, 0] = True`` restarts some rows.
            docs/nnx.md shows each with NNX's transforms.

    Call with ``x`` ``(*batch, T, D)``, optional ``seq_lengths`` ``(*batch,)``,
    ``mask`` and ``resets`` ``(*batch, T)``, ``initial_carry`` nested
    ``[layer][direction]``, ``deterministic`` and ``rngs`` (an ``nnx.Rngs``
    or a key, for this call's masks). Returns ``(*batch, T, F)`` with
    ``return_sequences``, else ``(*batch, F)``; F = 2R for bidirectional
    "concat", else R (R = H, or the variant's ``proj_size``).

    >>> import jax.numpy as jnp, jaxlstm as jl
    >>> from flax import nnx
    >>> layer = jl.nnx.LSTM(8, 32, num_layers=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 10, 8))).shape             # (batch, time, units)
    (4, 10, 32)
    >>> peepholes = jl.nnx.LSTM(8, 32, variant=jl.LSTMVariant(peepholes=True), rngs=nnx.Rngs(0))
    >>> peepholes.layer_0.w_peep[...].shape
    (3, 32)
    """

    if TYPE_CHECKING:  # __init__ sets the options (num_layers, ...) and the cells (layer_0, ...) by name

        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, in_features: int, features: int, *, deterministic: bool = False, rngs: nnx.Rngs, **options):
        config = LayerConfig.from_options(features, options, "jl.nnx.LSTM")
        self.in_features = _checks.positive_int(in_features, "in_features")
        deterministic = _checks.flag(deterministic, "deterministic")
        check_rngs(rngs)
        for name in LayerConfig.names():
            setattr(self, name, getattr(config, name))
        self.deterministic = deterministic
        if config.stateful:  # only a stateful layer keeps a carry (none in nnx.state or checkpoints otherwise)
            self.carry = Carry(None)
        for layer in range(config.num_layers):
            for direction in range(config.num_directions):
                cell = _make_cell(config, config.layer_input_size(layer, self.in_features), rngs)
                setattr(self, cell_name(layer, direction), cell)
        may_draw = draws_masks(config, deterministic=False)
        self.rngs = dropout_stream(rngs, may_draw)


    def _cells(self) -> list[list[LSTMCell | VariantWeights]]:
        return [
            [getattr(self, cell_name(layer, direction)) for direction in range(self.num_directions)]
            for layer in range(self.num_layers)
        ]

    def stack_params(self) -> StackParams:
        """All weights as the functional core's ``StackParams``, ``[layer][direction]``
        (``VariantParams`` with a variant)."""
        return self._stack_params()

    def _stack_params(self) -> StackParams:
        # Private, so nnx.tabulate doesn't record its NamedTuple output (Flax's table fails on NamedTuples).
        return tuple(tuple(cell.params for cell in row) for row in self._cells())

    def reset_carry(self, batch_shape: int | tuple[int, ...] | None = None, *, rows=None) -> None:
        """Restarts the carry kept by ``stateful=True``.

        Args:
            batch_shape: ``None`` (default): forget the carry, the next call starts afresh (the carry
                is ``None`` until then). A shape ``(*batch,)`` (or one int): put the initial carry
                for that batch in place now (zeros, or the learned ``h0``, ``c0``), so the carry
                has its final structure before the first call: what ``nnx.scan`` over chunks,
                restoring a checkpoint into a fresh model, and a single trace under ``nnx.jit`` need.
            rows: optional ``(*batch,)`` bools: restart only these rows of the kept carry (a new
                episode in some rows while the others go on); with no carry kept yet, ``batch_shape``
                says how many rows there are.
        """
        config = self.config

        def fresh(batch_shape):
            dtype = self._stack_params()[0][0].w_hh.dtype if config.dtype is None else jnp.dtype(config.dtype)
            return fresh_carries(config, self._learned(), batch_shape, dtype)

        reset_kept_carry(self, config.stateful, batch_shape, rows, fresh)

    def _learned(self) -> StackCarry | None:
        """The learned initial carries (``learn_initial_carry``), ``[layer][direction]``, else ``None``."""
        if not self.config.learn_initial_carry:
            return None
        return tuple(tuple(LSTMCarry(cell.h0[...], cell.c0[...]) for cell in row) for row in self._cells())

    @takes_call_data
    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        initial_carry: StackCarry | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
        **data: Any,
    ):
        """Runs the layer (or stack) over whole sequences.

        Args:
            x: the inputs, ``(*batch, T, D)``, batch-first: T time steps of D
                features each (one cell reads one ``(*batch, D)`` slice per
                step). Floating, or bool/integer (cast to the computation dtype,
                as Flax's modules cast them).
            seq_lengths, mask, resets: the call's sequences, ``(*batch,)`` and ``(*batch, T)``, as
                ``jaxlstm.engine.SequenceData`` documents them (``help`` shows each); the backward
                direction starts at each sequence's own last valid step.
            initial_carry: the carries to start from, nested
                ``[layer][direction]`` → ``LSTMCarry(h (*batch, R), c (*batch, H))``
                (what ``return_carry=True`` returns); by default a stateful
                layer's kept carry, else the learned (``learn_initial_carry``)
                or zero carry. ``resets`` restart from it if given, else from the
                learned or zero carry.
            deterministic: ``None`` (the default): the module's own
                ``deterministic`` (set by ``model.eval()`` / ``model.train()``).
                ``False`` draws the dropout and zoneout masks, from ``rngs``
                or the module's own dropout stream; ``True``: none (zoneout as
                its expectation).
            rngs: an ``nnx.Rngs`` with a ``dropout`` stream, or a key, for this
                call's masks; by default the ``rngs`` given to the constructor.

        Returns:
            With ``return_sequences`` (the default) every step's output
            ``(*batch, T, F)``, else the last step's ``(*batch, F)`` (for a row
            whose last steps are masked or padded: the h of its last kept
            step); F = 2R for bidirectional "concat", else R (R = ``features``,
            or ``proj_size`` with a projection). With ``return_carry``,
            ``(carries, output)``, ``carries`` nested ``[layer][direction]``.
        """
        config = self.config
        check_input(x, self.in_features)
        deterministic = self.deterministic if deterministic is None else deterministic
        if config.stateful and not hasattr(self, "carry"):  # made stateful after construction
            self.carry = Carry(None)
        carries, result = run(
            config,
            self._stack_params(),
            x,
            **check_call_data(data, "jl.nnx.LSTM"),
            initial_carry=initial_carry,
            learned=self._learned(),
            stored=self.carry.get_value() if config.stateful else None,
            dropout_key=dropout_key(config, deterministic, lambda: call_dropout_key(rngs, self.rngs)),
        )
        if config.stateful:
            self.carry.set_value(carries)
        return result


def _hidden_size(hidden_features, features) -> int:
    """H for ``LSTMCell``, given as exactly one of ``hidden_features`` (Flax's name) and ``features``."""
    if hidden_features is not None and features is not None:
        raise TypeError(
            f"jl.nnx.LSTMCell takes H once, as hidden_features (Flax's name) or features, "
            f"got both: hidden_features={hidden_features!r}, features={features!r}"
        )
    if hidden_features is None and features is None:
        raise TypeError(
            "jl.nnx.LSTMCell needs H, the size of the state: pass hidden_features (Flax's name) or features"
        )
    if hidden_features is not None:
        return _checks.positive_int(hidden_features, "hidden_features")
    return _checks.positive_int(features, "features")


def _make_cell(config: LayerConfig, input_size: int, rngs: nnx.Rngs) -> LSTMCell | VariantWeights:
    """One layer and direction's weights: the plain cell, or one holding a variant's extra weights."""
    if config.plain:
        return LSTMCell(
            input_size,
            config.features,
            init_scheme=config.init_scheme,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            gate_fn=config.gate_fn,
            activation_fn=config.activation_fn,
            learn_initial_carry=config.learn_initial_carry,
            rngs=rngs,
        )
    return VariantWeights(
        input_size,
        config.features,
        typing.cast(LSTMVariant, config.variant),  # not config.plain: a variant is set
        init_scheme=config.init_scheme,
        param_dtype=config.param_dtype,
        learn_initial_carry=config.learn_initial_carry,
        rngs=rngs,
    )
