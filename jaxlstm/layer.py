"""The LSTM layer that both Flax modules are, without Flax: its options, carries, casting, names, rng rule and call.

``jl.LSTM`` (flax.linen) and ``jl.nnx.LSTM`` (flax.nnx) differ only in how
they hold parameters, carries and randomness. Everything else is here, once:

* ``LayerFields`` and ``LayerConfig``: every option of the layer, declared
  and documented once (``LayerFields``, which ``jl.LSTM`` inherits too) and
  validated in one frozen dataclass (``LayerConfig``), the options it hands
  to ``jaxlstm.stacked_lstm`` by their own record,
  ``jaxlstm.options.StackOptions`` (the LSTM variants as one ``variant``, a
  ``jaxlstm.LSTMVariant``);
* ``cell_name``: the parameter-tree key of a layer and direction;
* ``start_carries``: the carries a call starts from and resets restart from;
* ``cast``: the computation dtype of parameters and inputs;
* ``draws_masks`` and ``dropout_key``: whether a call needs a ``'dropout'``
  rng, and the error when it has none;
* ``run``: the call into ``jaxlstm.stacked_lstm`` with the module's stack of
  parameters, its carries and a key.

Deterministic or random
-----------------------
A call is *random* when it draws masks: PyTorch-style ``dropout`` between
layers (``num_layers > 1``), or a ``variant`` with ``input_dropout``,
``recurrent_dropout``, ``zoneout_h`` or ``zoneout_c`` (``draws_masks`` is the
rule). A deterministic call draws nothing: dropout is off and zoneout uses its
expectation. Each API keeps the default of its framework's own dropout:

======================== ======================== ==========================================================
API                      ``deterministic``        why, and how to train
======================== ======================== ==========================================================
functional:              ``None``: random exactly As ``jax.random``: no key, no randomness. ``True``: never
``jl.lstm``,             when a ``dropout_key``   random, even with a key; ``False``: a key is required.
``jl.stacked_lstm``,     is given
``jl.lstm_variant``
linen ``jl.LSTM``        ``True`` (a call         linen's ``apply`` is a pure function with no training
                         argument)                mode, so a bare ``apply`` is inference, as with
                                                  ``flax.linen.Dropout(deterministic=True)``. Train with
                                                  ``layer.apply(variables, x, deterministic=False,
                                                  rngs={"dropout": key})``.
NNX ``jl.nnx.LSTM``      ``False`` (constructor;  As ``nnx.Dropout``: a module starts in training mode;
                         the call's overrides)    ``model.eval()`` / ``model.train()`` switch it. Masks
                                                  come from the call's ``rngs``, else from the
                                                  constructor's (stream ``'dropout'``, else ``'default'``).
======================== ======================== ==========================================================

A random module call without an rng raises the ``ValueError`` of
``dropout_key``, the same for linen and NNX.

>>> import jax, jax.numpy as jnp, jaxlstm as jl
>>> from jaxlstm.layer import LayerConfig, draws_masks
>>> config = LayerConfig(32, num_layers=2, variant=jl.LSTMVariant(recurrent_dropout=0.25))
>>> config.output_size, draws_masks(config, deterministic=False), draws_masks(config, deterministic=True)
(32, True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from .cell import INIT_SCHEMES, LSTMCarry, LSTMParams, state_dtype
from .cells.gru import GRUParams
from .engine import SequenceSettings
from .options import LSTMSettings, StackOptions, StackSettings, check_names, option_names
from .rnn_stack import check_reverse, merged_size
from .stack import StackCarry, StackParams, check_stack_carry, last_output, stacked_lstm
from .variants import RATES, LSTMVariant, VariantParams, is_training

__all__ = [
    "LayerConfig",
    "LayerViews",
    "cell_name",
    "cast",
    "computation_dtype",
    "check_input",
    "fresh_carries",
    "start_carries",
    "check_stateful_carry",
    "draws_masks",
    "dropout_key",
    "run",
]


# The layer's own boolean options, checked by _checks.flag (reverse is the stack's: StackOptions checks it).
_FLAGS = ("bidirectional", "return_sequences", "return_carry", "learn_initial_carry", "stateful")


def cell_name(layer: int, direction: int) -> str:
    """The parameter-tree key of one layer and direction: ``layer_0``, ``layer_0_reverse``."""
    return f"layer_{layer}" + ("_reverse" if direction == 1 else "")


# ----------------------------------------------------------------------------- the options


@dataclass
class _LayerSize:
    """The layer's size, its first two fields (``features`` positional, as Keras' ``units``)."""

    features: int
    num_layers: int = 1


@dataclass
class RecurrentLayerFields(StackSettings, SequenceSettings, _LayerSize):
    """The options of a recurrent layer of any cell (a stack of them): ``LayerFields`` adds the LSTM's;
    ``jl.GRU`` (linen) inherits these as its fields, ``jl.nnx.GRU`` takes them as keywords.

    The settings a layer hands to its stack are inherited, not declared again: ``jaxlstm.engine.SequenceSettings``'
    (``masked_output``, ``reverse`` (for a single direction), ``unroll``, ``gradient``, ``checkpoint_every``)
    and ``jaxlstm.options.StackSettings``' (``merge``, ``dropout``, whose randomness follows "Deterministic or
    random" above), each documented there and checked by its record. A non-frozen dataclass, since linen's
    modules (non-frozen dataclasses) can't inherit a frozen one.

    Attributes:
        features: H (Keras' ``units``, PyTorch's ``hidden_size``), the size of
            each cell's state vector.
        num_layers: stacked layers; layer l + 1 reads layer l's output sequence.
        bidirectional: add a backward direction to every layer.
        return_sequences: output every step ``(*batch, T, F)``; ``False``
            gives each sequence's last valid step ``(*batch, F)`` (for
            bidirectional: forward final h merged with backward final h, the
            one at step 0 — torch's ``h_n``).
        return_carry: return ``(carries, output)``, ``carries`` nested
            ``[layer][direction]`` → the cell's carry (``LSTMCarry`` of ``(*batch, R)`` and
            ``(*batch, H)``; a GRU's ``h`` ``(*batch, H)``).
        dtype: computation dtype (``None``: the wider of the input's and the
            parameters'); with bfloat16 or float16 the matmuls run in that
            dtype, accumulated in float32, and an LSTM's cell state c stays float32 (mixed precision).
        param_dtype: the parameters' dtype.
        learn_initial_carry: a trainable initial carry (``h0`` (R,) and, for an LSTM, ``c0`` (H,)) for
            every layer and direction (``params["layer_0"]["h0"]``), zeros at first,
            broadcast over the batch; an ``initial_carry`` given to the call
            still wins. Resets restart from them too.
        stateful: keep each layer's final carry and start the next call from
            it, to feed a long sequence chunk by chunk (linen: the variable
            collection ``"carry"``; NNX: ``model.carry``). ``resets[:, 0] =
            True`` restarts a row's stream. Forward only.
    """

    bidirectional: bool = False
    return_sequences: bool = True
    return_carry: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    learn_initial_carry: bool = False
    stateful: bool = False


@dataclass
class LayerFields(LSTMSettings, RecurrentLayerFields):
    """Every option of an LSTM layer (a stack of them): ``RecurrentLayerFields``' and the LSTM's own,
    declared once: ``LayerConfig`` (validated, frozen) and ``jl.LSTM`` (linen, as its fields) inherit
    them, ``jl.nnx.LSTM`` takes them as keywords. ``gate_fn``, ``activation_fn``, ``variant``,
    ``backend`` and ``cudnn_precision`` are inherited from ``jaxlstm.options.LSTMSettings`` (documented there).

    Attributes:
        init_scheme: ``"keras"``, ``"torch"`` or ``"flax"`` initialisation (see
            ``jaxlstm.init_params``; not ``init``, which is linen's method).

    With a projection (``variant=jl.LSTMVariant(proj_size=P)``), R = P; else R = H.
    """

    init_scheme: str = "keras"


@dataclass(frozen=True)
class _Frozen:
    """A frozen base: a dataclass may be frozen over non-frozen bases only when one of them is frozen."""


class LayerViews:
    """The sizes an LSTM layer module (``jl.LSTM``, ``jl.nnx.LSTM``) derives from its options, read through
    ``config``: written once for both."""

    @property
    def config(self) -> LayerConfig:
        """This module's options (its attributes of those names) as a validated ``LayerConfig``."""
        return LayerConfig.of(self)

    @property
    def num_directions(self) -> int:
        return self.config.num_directions

    @property
    def recurrent_size(self) -> int:
        """R, the size of each direction's ``h`` and output: ``variant.proj_size`` if set, else ``features``."""
        return self.config.recurrent_size

    @property
    def output_size(self) -> int:
        """F, the width of the output: 2·R for bidirectional "concat", else R."""
        return self.config.output_size


# The layer's options that are jl.stacked_lstm's (jaxlstm.options.StackOptions), checked there.
_STACK_OPTIONS = tuple(name for name in option_names(StackOptions) if name in LayerFields.__dataclass_fields__)


# Frozen over the non-frozen LayerFields: allowed at run time because _Frozen is frozen; pyright refuses it.
@dataclass(frozen=True)  # pyright: ignore[reportGeneralTypeIssues]
class LayerConfig(LayerFields, _Frozen):
    """Every option of an LSTM layer (``LayerFields``, documented there), validated on construction.

    ``jl.LSTM`` has these as its fields and ``jl.nnx.LSTM`` as its keyword
    arguments; both build a ``LayerConfig`` from them (``module.config``).

    >>> import jaxlstm as jl
    >>> config = LayerConfig(32, bidirectional=True, variant=jl.LSTMVariant(proj_size=16))
    >>> config.recurrent_size, config.output_size, config.num_directions
    (16, 32, 2)
    """

    def __post_init__(self):
        _checks.positive_int(self.features, "features")
        _checks.positive_int(self.num_layers, "num_layers")
        for name in _FLAGS:  # np.True_ is True here, as everywhere; "no" or 1 is refused
            object.__setattr__(self, name, _checks.flag(getattr(self, name), name))
        _checks.float_dtype(self.dtype, "dtype", allow_none=True)
        _checks.float_dtype(self.param_dtype, "param_dtype")
        _checks.one_of(self.init_scheme, INIT_SCHEMES, "init_scheme")
        checked = self.stack_options()  # the stack's options, checked by their own record
        for name in _STACK_OPTIONS:
            object.__setattr__(self, name, getattr(checked, name))
        if self.variant is not None:
            self.variant.check_hidden_size(self.features, "features")
        check_reverse(self.reverse, self.num_directions, "a single direction")
        if self.stateful and (self.bidirectional or self.reverse):
            given = "bidirectional=True" if self.bidirectional else "reverse=True"
            raise ValueError(
                f"stateful=True streams a sequence forward chunk by chunk; it can't be combined with {given}, "
                "which needs the whole sequence"
            )

    def stack_options(self, **call: Any) -> StackOptions:
        """The ``jaxlstm.options.StackOptions`` of a ``jl.stacked_lstm`` call of this layer: its
        options of that record, and ``call``'s (``seq_lengths``, ``mask``, ``resets``, ...)."""
        return StackOptions(**{name: getattr(self, name) for name in _STACK_OPTIONS}, **call)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return option_names(cls)

    @classmethod
    def of(cls, module) -> LayerConfig:
        """The config of a module (or any object) holding every option as an attribute of the same name."""
        return cls(**{name: getattr(module, name) for name in cls.names()})

    @classmethod
    def from_options(cls, features: int, options: dict, where: str) -> LayerConfig:
        """``LayerConfig(features, **options)``, with ``check_names``' TypeError for an unknown option."""
        cls.check_names(options, where)
        return cls(features, **options)

    @classmethod
    def check_names(cls, options: dict, where: str) -> None:
        """``jaxlstm.options.check_names``: a TypeError naming an option that is not one and listing them
        (a variant option given flat, ``peepholes=True``, is pointed to ``variant=jl.LSTMVariant(...)``)."""
        check_names(cls, options, where)

    # ------------------------------------------------------------------ what follows from them

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def plain(self) -> bool:
        """Whether every cell is the plain LSTM (no variant, or one with every option off)."""
        return self.variant is None or self.variant.is_plain

    @property
    def cell_variant(self) -> LSTMVariant:
        """The ``LSTMVariant`` every cell is: ``variant``, or ``LSTMVariant()`` (plain) when it is ``None``."""
        return LSTMVariant() if self.variant is None else self.variant

    @property
    def recurrent_size(self) -> int:
        """R, the size of each direction's ``h`` and output: the variant's ``proj_size`` if set, else ``features``."""
        return self.cell_variant.recurrent_size(self.features)

    @property
    def output_size(self) -> int:
        """F, the width of the output: 2·R for bidirectional "concat", else R."""
        return merged_size(self.recurrent_size, self.num_directions, self.merge)

    def layer_input_size(self, layer: int, input_size: int) -> int:
        """What layer ``layer`` reads: D for the first, F (the previous layer's merged output) after."""
        return input_size if layer == 0 else self.output_size


# ----------------------------------------------------------------------------- inputs and dtypes


def check_input(x, input_size: int | None = None) -> None:
    """Checks a layer's input ``x``: ``(*batch, T, D)``, D = ``input_size`` when given; floating, or
    bool/integer, which ``cast`` turns into the computation dtype as Flax's modules do."""
    _checks.inputs(x, input_size, "x", min_rank=2, layout="(*batch, time, input)", allow_integers=True)


_Params = TypeVar("_Params", bound="LSTMParams | VariantParams | GRUParams")


def computation_dtype(dtype, x, params_dtype):
    """The rule, once, for the LSTM and GRU modules: ``dtype`` if given, else the wider of ``x``'s and the
    parameters' dtypes (Flax's ``dtype`` convention): float32 inputs to bfloat16 parameters compute in float32."""
    if dtype is not None:
        return jnp.dtype(dtype)
    with jax.numpy_dtype_promotion("standard"):  # the wider of the two, whatever the user's promotion mode
        return jnp.promote_types(jnp.asarray(x).dtype, params_dtype)


def cast(params: _Params, xs: Array, dtype) -> tuple[_Params, Array]:
    """Casts params and inputs to the computation dtype (``computation_dtype`` of ``xs`` and ``params.w_ih``).

    Works for ``VariantParams`` and ``GRUParams`` too (``None`` fields stay ``None``); bool and integer
    inputs are cast as well.
    """
    dtype = computation_dtype(dtype, xs, params.w_ih.dtype)
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params), jnp.asarray(xs, dtype)


# ----------------------------------------------------------------------------- carries


def fresh_carries(
    config: LayerConfig,
    learned: StackCarry | None,
    batch_shape: tuple[int, ...],
    dtype,
) -> StackCarry:
    """The carries a sequence starts (and a reset restarts) from: the learned
    ``h0`` (R,) and ``c0`` (H,) broadcast over the batch, or zeros; nested
    ``[layer][direction]``. ``h`` has the computation dtype ``dtype``, ``c``
    the state dtype (float32 at least)."""
    c_shape, c_dtype = (*batch_shape, config.features), state_dtype(dtype)
    h_shape = (*batch_shape, config.recurrent_size)
    if learned is None:
        zeros = LSTMCarry(jnp.zeros(h_shape, dtype), jnp.zeros(c_shape, c_dtype))
        return tuple(tuple(zeros for _ in range(config.num_directions)) for _ in range(config.num_layers))
    return tuple(
        tuple(
            LSTMCarry(
                jnp.broadcast_to(carry.h.astype(dtype), h_shape),
                jnp.broadcast_to(carry.c.astype(c_dtype), c_shape),
            )
            for carry in layer
        )
        for layer in learned
    )


def start_carries(
    config: LayerConfig,
    *,
    learned: StackCarry | None,
    initial_carry: StackCarry | None,
    stored: StackCarry | None,
    batch_shape: tuple[int, ...],
    dtype,
) -> tuple[StackCarry, StackCarry]:
    """``(start, fresh)``: the carries a call starts from, and those a reset restarts from.

    Start: a given ``initial_carry``, else the carry a stateful layer kept
    (``stored``), else the learned or zero one. Resets restart from the given
    ``initial_carry``, else from the learned or zero one.
    """
    fresh = fresh_carries(config, learned, batch_shape, dtype)
    if initial_carry is not None:
        check_stack_carry(
            initial_carry,
            config.num_layers,
            config.num_directions,
            batch_shape,
            config.features,
            "initial_carry",
            None if config.plain else config.recurrent_size,
        )
        return initial_carry, initial_carry
    if stored is not None:
        check_stateful_carry(stored, batch_shape)
        return stored, fresh
    return fresh, fresh


def check_stateful_carry(state: StackCarry, batch_shape: tuple[int, ...]) -> None:
    """Refuses a kept carry (any cell's, nested ``[layer][direction]``) whose batch shape differs from the input's."""
    stored = tuple(jax.tree.leaves(state[0][0])[0].shape[:-1])
    if stored != tuple(batch_shape):
        raise ValueError(
            f"stateful=True keeps one carry per sequence: the stored carry has batch shape {stored} but x has "
            f"batch shape {tuple(batch_shape)}; start afresh (linen: drop the 'carry' collection; "
            f"NNX: model.reset_carry())" + _checks._see("stateful-streaming")
        )


# ----------------------------------------------------------------------------- the rng rule


def draws_masks(config: LayerConfig, deterministic: bool) -> bool:
    """Whether a call draws random masks: not ``deterministic``, and dropout between
    layers (``dropout > 0`` with ``num_layers > 1``) or a variant that regularizes
    (input or recurrent dropout, zoneout)."""
    between_layers = config.dropout > 0.0 and config.num_layers > 1
    return is_training(None, deterministic) and (between_layers or config.cell_variant.regularizes)


def dropout_key(
    config: LayerConfig, deterministic: bool, draw: Callable[[], PRNGKeyArray | None]
) -> PRNGKeyArray | None:
    """The key a call's masks come from: ``None`` when ``draws_masks`` says the call
    draws none, else ``draw()`` — the module's ``'dropout'`` rng, ``None`` if it has
    none, which is a ValueError naming what needs it and how to give it."""
    if not draws_masks(config, _checks.flag(deterministic, "deterministic")):
        return None
    key = draw()
    if key is None:
        needs = [f"{name}={value!r}" for name, value in config.cell_variant.options.items() if name in RATES]
        if config.dropout > 0.0 and config.num_layers > 1:
            needs.insert(0, f"dropout={config.dropout!r} between {config.num_layers} layers")
        raise ValueError(
            f"deterministic=False with {', '.join(needs)} draws random masks and needs a 'dropout' rng: "
            "linen: layer.apply(variables, x, deterministic=False, rngs={'dropout': key}); "
            "NNX: nnx.Rngs(dropout=seed) to the constructor or rngs= to the call. "
            "For inference pass deterministic=True (see help(jaxlstm.layer))"
        )
    return key


# ----------------------------------------------------------------------------- the call


def run(
    config: LayerConfig,
    stack: StackParams,
    x: Float[Array, "*batch time input"],
    *,
    initial_carry: StackCarry | None = None,
    learned: StackCarry | None = None,
    stored: StackCarry | None = None,
    dropout_key: PRNGKeyArray | None = None,
    **options: Any,
) -> tuple[StackCarry, Any]:
    """Runs the layer ``config`` describes with the module's parameters.

    Args:
        config: the layer's options.
        stack: the module's weights, ``[layer][direction]`` → ``LSTMParams``
            (``VariantParams`` with a variant), in the parameter dtype.
        x: ``(*batch, T, D)``.
        initial_carry: the call's initial carries, nested ``[layer][direction]``.
        learned: the learned ``h0`` (R,) and ``c0`` (H,) per layer and
            direction (``learn_initial_carry``), else ``None``.
        stored: the carry a stateful module kept from its last call, else ``None``.
        dropout_key: from ``dropout_key``; ``None``: a deterministic call.
        **options: the call's own options of ``jaxlstm.options.StackOptions``
            (the modules': ``seq_lengths`` ``(*batch,)``, ``mask`` and ``resets`` ``(*batch, T)``).

    Returns:
        ``(final_carries, result)``: the final carries (for a stateful module
        to keep) and what the module returns — ``(*batch, T, F)`` or, without
        ``return_sequences``, ``(*batch, F)``; ``(carries, output)`` with
        ``return_carry``.
    """
    stack = tuple(tuple(cast(params, x, config.dtype)[0] for params in row) for row in stack)
    xs = cast(stack[0][0], x, config.dtype)[1]
    start, fresh = start_carries(
        config,
        learned=learned,
        initial_carry=initial_carry,
        stored=stored,
        batch_shape=tuple(x.shape[:-2]),
        dtype=xs.dtype,
    )
    check_names(StackOptions, options, "jaxlstm.layer.run")
    call = config.stack_options(reset_carries=fresh, dropout_key=dropout_key, **options)
    carries, hs = stacked_lstm(stack, xs, start, **call.fields_of(StackOptions))
    output = hs if config.return_sequences else last_output(carries, config.merge)
    return carries, ((carries, output) if config.return_carry else output)
