"""flax.linen modules: ``LSTM`` (a whole layer stack) and ``LSTMCell`` (one step).

Thin wrappers: they create the parameters and call the Flax-free layer core
``jaxlstm.layer`` (options, carries, casting, the rng rule), which calls the
functional core (``jaxlstm.stacked_lstm`` / ``jaxlstm.lstm_cell``); all the
numerics live there.

Parameter names follow PyTorch's: ``params["layer_0"]`` holds the first layer's
forward ``w_ih`` (D, 4H), ``w_hh`` (H, 4H) and ``b`` (4H,);
``params["layer_0_reverse"]`` its backward direction. An LSTM variant
(``variant=jl.LSTMVariant(proj_size=..., peepholes=..., ...)``) adds its
weights next to them: ``w_hr``, ``w_peep``, ``ln_ih_scale``, ... (see
``jaxlstm.VariantParams``).
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _checks
from .cell import INIT_SCHEMES, Activation, LSTMCarry, LSTMParams, initial_carry, initializers, lstm_cell, module_input
from .layer import LayerConfig, LayerFields, LayerViews, cast, check_input, dropout_key, run
from .layer import cell_name as cell_name
from .options import check_call_data, takes_call_data
from .stack import StackCarry
from .variants import LSTMVariant, VariantParams, variant_initializers, variant_param_shapes

__all__ = ["LSTM", "LSTMCell", "VariantWeights", "cell_name"]


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
        features: H, the size of the state vector (``units``, ``hidden_size``;
            Flax's ``LSTMCell(features)`` too).
        init_scheme: ``"keras"``, ``"torch"`` or ``"flax"`` initialisation (see
            ``jaxlstm.init_params``; not ``init``, which is linen's method).
        dtype: computation dtype (``None``: from inputs and params).
        param_dtype: parameter dtype.
        gate_fn, activation_fn: the gates' and the candidate/cell-output
            activations (default sigmoid and tanh), see ``jaxlstm.lstm_cell``.
        learn_initial_carry: also create trainable ``h0`` and ``c0`` (H,)
            (used by ``jaxlstm.LSTM``).
        kernel_init, recurrent_kernel_init, bias_init: Flax's initializers
            ``(key, shape, dtype) -> array`` of the input kernels, the
            recurrent kernels and the bias; when given, they replace
            ``init_scheme``'s. Flax keeps one kernel per gate, jaxlstm packs
            the four: each is called once per gate with Flax's per-gate shape
            ((D, H), (H, H), (H,)) and the blocks concatenated in gate order
            i, f, g, o, so each block has the distribution Flax gives it.
        carry_init: Flax's carry initializer for ``initialize_carry``
            (``None``: zeros).

    Call ``cell(carry, x)`` with ``carry`` an ``LSTMCarry`` of ``(*batch, H)``
    arrays and ``x`` of shape ``(*batch, D)``; returns ``(new_carry, h)`` with
    ``h`` of shape ``(*batch, H)``. A bool or integer ``x`` is cast to the
    computation dtype (``dtype``, else the params' dtype), as Flax's cells
    cast it; the functional ``jaxlstm.lstm_cell`` refuses it.

    Unlike Flax's ``(c, h)`` tuple, the carry is ``LSTMCarry(h, c)``: read it
    by name (``carry.h``, ``carry.c``), not by unpacking in Flax's order.

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
    kernel_init: Any = None
    recurrent_kernel_init: Any = None
    bias_init: Any = None
    carry_init: Any = None

    def __post_init__(self):
        super().__post_init__()
        _checks.positive_int(self.features, "features")  # a bad option fails where the cell is built
        _checks.one_of(self.init_scheme, INIT_SCHEMES, "init_scheme")
        _checks.float_dtype(self.dtype, "dtype", allow_none=True)
        _checks.float_dtype(self.param_dtype, "param_dtype")
        _checks.activation(self.gate_fn, "gate_fn")
        _checks.activation(self.activation_fn, "activation_fn")
        _checks.flag(self.learn_initial_carry, "learn_initial_carry")
        for name in ("kernel_init", "recurrent_kernel_init", "bias_init"):
            _checks.initializer(getattr(self, name), name)
        _checks.initializer(self.carry_init, "carry_init", "jax.nn.initializers.zeros")

    @nn.compact
    def weights(self, input_size: int) -> LSTMParams:
        """This cell's ``LSTMParams`` for ``input_size`` D, created on first use."""
        features = _checks.positive_int(self.features, "features")
        _check_trained_input_size(self, input_size)
        init_w_ih, init_w_hh, init_b = initializers(
            self.init_scheme,
            features,
            argument="init_scheme",
            kernel_init=self.kernel_init,
            recurrent_kernel_init=self.recurrent_kernel_init,
            bias_init=self.bias_init,
        )
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
        module_input(x, "x")
        params, x = cast(self.weights(x.shape[-1]), x, self.dtype)
        return lstm_cell(params, carry, x, gate_fn=self.gate_fn, activation_fn=self.activation_fn)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]) -> LSTMCarry:
        """``h`` and ``c`` of shape ``(*input_shape[:-1], H)``: zeros, or ``carry_init``'s draw from ``rng``
        (split in two, the first key for ``c``, as Flax). ``h`` has the computation dtype, ``c`` at least float32."""
        shape = (*input_shape[:-1], self.features)
        dtype = self.param_dtype if self.dtype is None else self.dtype
        keys = None if rng is None else iter(jax.random.split(rng)).__next__
        return initial_carry(shape, dtype, self.carry_init, keys)

    @property
    def num_feature_axes(self) -> int:
        return 1


class VariantWeights(nn.Module):
    """The parameters of one variant cell (one layer, one direction) of ``jaxlstm.LSTM``.

    ``jl.LSTM`` uses it in place of ``LSTMCell`` when a variant option is on;
    it creates ``w_ih``, ``w_hh`` (R, 4H), ``b`` and the variant's own
    weights (``w_hr``, ``w_peep``, ``ln_*``; see ``jaxlstm.VariantParams``),
    under the same names ``layer_0``, ``layer_0_reverse``, ... The numerics
    are ``jaxlstm.stacked_lstm``'s with ``variant``.
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


def _check_no_unused_params(module: nn.Module, config: LayerConfig, stack) -> None:
    """Refuses variables with parameters this configuration never reads: Flax would drop them
    without a word (e.g. a bidirectional model's ``layer_0_reverse`` applied to a one-direction one)."""
    if not module.has_variable("params", cell_name(0, 0)):
        return
    given = module.variables["params"]
    expected = {}
    for layer, row in enumerate(stack):
        for direction, params in enumerate(row):
            names = {name for name, value in params._asdict().items() if value is not None}
            expected[cell_name(layer, direction)] = names | ({"h0", "c0"} if config.learn_initial_carry else set())
    extra = sorted(set(given) - set(expected))
    for cell in (cell for cell in expected if cell in given):
        extra += sorted(f"{cell}/{name}" for name in set(given[cell]) - expected[cell])
    if extra:
        raise ValueError(
            f"the variables hold parameters this LSTM does not use: {', '.join(extra)} (this model: "
            f"num_layers={config.num_layers}, bidirectional={config.bidirectional}, "
            f"learn_initial_carry={config.learn_initial_carry}, variant={config.variant!r}); were they made for "
            f"another configuration? Build the model with that configuration, or drop those entries."
        )


def _weight_modules(config: LayerConfig) -> list[list[LSTMCell | VariantWeights]]:
    """One weights module per layer and direction, ``[layer][direction]``, named ``cell_name``: the plain
    cell, or one holding a variant's extra weights. Called inside ``LSTM.__call__``, whose submodules they are."""
    if config.plain:
        make_cell = functools.partial(LSTMCell, config.features, config.init_scheme, config.dtype)
    else:
        make_cell = functools.partial(  # not config.plain: a variant is set
            VariantWeights, config.features, typing.cast(LSTMVariant, config.variant), config.init_scheme
        )
    return [
        [
            make_cell(
                param_dtype=config.param_dtype,
                learn_initial_carry=config.learn_initial_carry,
                name=cell_name(layer, direction),
            )
            for direction in range(config.num_directions)
        ]
        for layer in range(config.num_layers)
    ]


class LSTM(LayerViews, LayerFields, nn.Module):
    """An LSTM layer, or a stack of them, over whole sequences (batch-first).

    There is one cell per layer and direction, applied to every time step;
    ``features`` is the size H of its state vector.

    Its fields are the options of ``jaxlstm.layer.LayerFields`` (``features``, ``num_layers``,
    ``bidirectional``, ...), inherited from it and documented there once, those handed to
    ``jaxlstm.stacked_lstm`` in ``jaxlstm.options.StackOptions``; ``module.config`` is this module's
    validated ``LayerConfig``. ``variant`` is a ``jaxlstm.LSTMVariant`` (docs/variants.md), e.g.
    ``jl.LSTM(32, variant=jl.LSTMVariant(proj_size=16, peepholes=True))``.

    With ``stateful=True`` the final carries go to the variable collection
    ``"carry"``: ``y, state = layer.apply(variables, chunk, mutable=["carry"])``,
    then ``variables = {**variables, **state}``.

    Call with ``x`` ``(*batch, T, D)``, optional ``seq_lengths`` ``(*batch,)``
    ints, ``mask`` and ``resets`` ``(*batch, T)`` bools (see ``jaxlstm.lstm``),
    ``initial_carry`` nested like the returned carries, and ``deterministic``
    (default ``True``: inference; ``False`` with a ``'dropout'`` rng trains
    with the dropout and zoneout masks; why the default differs from NNX's:
    the docstring of ``jaxlstm.layer``, "Deterministic or random").

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> layer = jl.LSTM(features=32)                   # 32 units: one 32-vector per step
    >>> x = jnp.ones((4, 10, 8))                       # (batch, time, input)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape                # (batch, time, units)
    (4, 10, 32)
    >>> jl.LSTM(32, return_sequences=False).apply(variables, x).shape   # (batch, units)
    (4, 32)
    >>> projected = jl.LSTM(32, variant=jl.LSTMVariant(proj_size=16))
    >>> jax.eval_shape(projected.init, jax.random.key(0), x)["params"]["layer_0"]["w_hr"].shape
    (32, 16)
    """

    # The fields: jaxlstm.layer.LayerFields', inherited (LayerConfig's too), declared there once.

    def __post_init__(self):
        super().__post_init__()
        LayerConfig.of(self)  # a bad option fails where the module is built


    @nn.compact
    @takes_call_data
    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        initial_carry: StackCarry | None = None,
        deterministic: bool = True,
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
            deterministic: ``True`` (the default, inference): no dropout, and
                zoneout as its expectation. ``False``: draw the dropout and
                zoneout masks from the ``'dropout'`` rng
                (``apply(..., rngs={'dropout': key})``); without that rng it
                raises. Why the default differs from NNX's: ``jaxlstm.layer``'s
                docstring, "Deterministic or random".

        Returns:
            With ``return_sequences`` (the default) every step's output
            ``(*batch, T, F)``, else the last step's ``(*batch, F)`` (for a row
            whose last steps are masked or padded: the h of its last kept
            step); F = 2R for bidirectional "concat", else R (R = ``features``,
            or ``proj_size`` with a projection). With ``return_carry``,
            ``(carries, output)``, ``carries`` nested ``[layer][direction]``.
        """
        config = self.config
        check_input(x)
        cells = _weight_modules(config)
        stack = tuple(
            tuple(cell.weights(config.layer_input_size(layer, x.shape[-1])) for cell in row)
            for layer, row in enumerate(cells)
        )
        if not self.is_initializing():
            _check_no_unused_params(self, config, stack)
        learned = None
        if config.learn_initial_carry:
            learned = tuple(tuple(cell.learned_carry() for cell in row) for row in cells)
        stored = None
        if config.stateful and self.has_variable("carry", "state"):
            stored = self.get_variable("carry", "state")
        key = dropout_key(config, deterministic, lambda: self.make_rng("dropout") if self.has_rng("dropout") else None)
        carries, result = run(
            config,
            stack,
            x,
            **check_call_data(data, "jl.LSTM"),
            initial_carry=initial_carry,
            learned=learned,
            stored=stored,
            dropout_key=key,
        )
        if config.stateful and not self.is_initializing() and self.is_mutable_collection("carry"):
            self.put_variable("carry", "state", carries)
        return result


def _checked_names(init):
    """``LSTM.__init__`` (the dataclass') preceded by ``LayerConfig.check_names``: an unknown option
    gets NNX's message (a variant option given flat points to ``variant=jl.LSTMVariant(...)``), not
    Python's bare "unexpected keyword argument"."""

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        LayerConfig.check_names({k: v for k, v in kwargs.items() if k not in ("parent", "name")}, "jl.LSTM")
        init(self, *args, **kwargs)

    return checked


setattr(LSTM, "__init__", _checked_names(LSTM.__init__))  # noqa: B010  (pyright: __init__ is not assignable)
