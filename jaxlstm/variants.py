"""The LSTM family: projection, peepholes, layer norm, coupled gates, forget bias, cell clipping,
input and recurrent dropout, zoneout.

Each variant is an option of one frozen dataclass, ``LSTMVariant``; its extra
weights live in ``VariantParams``, which holds the plain cell's ``w_ih``,
``w_hh``, ``b`` too (``None`` for a weight the variant does not use). A
variant is a description of the cell, not a loop of its own: ``jaxlstm.lstm``
(the one engine, ``variant=``) runs every member of the family, with the same
per-step flags, padding guard, dtype rule, checkpointing and fused gradient
as the plain LSTM. The elementwise math of one step lives in
``jaxlstm.pointwise``; this module holds the options, the weights, their
checks and the random masks a training call draws.

Notation, added to ``jaxlstm.cell``'s (B, T, D, H, gates = 4H):

========= =============================================================
recurrent R, the size of ``h``: ``proj_size`` P with a projection, else H
proj      P, ``proj_size`` (< H, as PyTorch requires)
========= =============================================================

One step, every option on (x (D,), h (R,), c (H,); σ = ``gate_fn``, tanh =
``activation_fn``, ⊙ elementwise; each line is skipped when its option is off)::

    h̃  = h ⊙ m_h / (1 − recurrent_dropout)            # recurrent dropout, one mask per sequence
    x̃  = x ⊙ m_x / (1 − input_dropout)                # input dropout, one mask per sequence
    z  = LN(x̃ @ w_ih) ⊙ ln_ih_scale + LN(h̃ @ w_hh) ⊙ ln_hh_scale + b     # = [z_i, z_f, z_g, z_o]
                                                       # (no layer norm: z = x̃ @ w_ih + h̃ @ w_hh + b)
    z_i += p_i ⊙ c ;  z_f += p_f ⊙ c                   # peepholes read the previous c
    z_f += forget_bias
    i = σ(z_i)   f = σ(z_f)  (cifg: f = 1 − i)   g = tanh(z_g)
    c' = clip(f ⊙ c + i ⊙ g, −cell_clip, cell_clip)
    z_o += p_o ⊙ c'                                    # the output peephole reads the new c
    o = σ(z_o)
    h' = (o ⊙ tanh(LN(c') ⊙ ln_c_scale + ln_c_bias)) @ w_hr   # layer norm on c'; projection to P
    zoneout: h' ← d_h ⊙ h + (1 − d_h) ⊙ h',  c' ← d_c ⊙ c + (1 − d_c) ⊙ c'
             (training: d ~ Bernoulli(zoneout_*) per unit and step; deterministic: d = zoneout_*)

with LN(a) = (a − mean(a)) / sqrt(var(a) + ε) over the last axis. Every
equation, its paper and what PyTorch and Keras call it: docs/variants.md.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from . import _checks
from .cell import LSTMCarry, LSTMParams, in_float32, initializers, torch_uniform

__all__ = [
    "LSTMVariant",
    "VariantParams",
    "VariantMasks",
    "init_variant_params",
    "variant_param_shapes",
    "draw_masks",
    "training_call",
    "is_training",
    "check_variant",
    "RATES",
]

GUIDE = "docs/variants.md"

RATES = ("input_dropout", "recurrent_dropout", "zoneout_h", "zoneout_c")
"""The variant's options that draw random masks in a training call (dropout and zoneout rates)."""


def _pointer(section: str) -> str:
    return f"; see {GUIDE}#{section} (jaxlstm docs variants#{section})"


# The guide's section for each option (error messages point there).
SECTIONS = dict(
    proj_size="projection",
    peepholes="peepholes",
    layer_norm="layer-normalization",
    layer_norm_epsilon="layer-normalization",
    cifg="coupled-input-forget-gate",
    forget_bias="forget-bias",
    cell_clip="cell-clipping",
    input_dropout="input-and-recurrent-dropout",
    recurrent_dropout="input-and-recurrent-dropout",
    zoneout_h="zoneout",
    zoneout_c="zoneout",
)


# ----------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class LSTMVariant:
    """Which members of the LSTM family a cell is: every option off is the plain LSTM.

    Attributes:
        proj_size: P, project ``h`` to P < H features (LSTMP, Sak et al.
            2014; PyTorch's ``proj_size``): ``h' = (o ⊙ tanh(c')) @ w_hr``,
            ``w_hr`` (H, P); the recurrent kernel then reads the projected
            ``h``: ``w_hh`` (P, 4H). ``h`` and the output are (…, P), ``c``
            stays (…, H). ``None``: no projection.
        peepholes: diagonal peephole connections from the cell state to the
            gates (Gers & Schmidhuber 2000): ``z_i += p_i ⊙ c``,
            ``z_f += p_f ⊙ c`` (previous c), ``z_o += p_o ⊙ c'`` (new c);
            ``w_peep`` (3, H) holds the rows p_i, p_f, p_o.
        layer_norm: layer normalization (Ba et al. 2016) of the input and the
            recurrent pre-activations, separately over their 4H features, with
            gains ``ln_ih_scale``, ``ln_hh_scale`` (4H,); and of ``c'`` before
            the output tanh, with gain ``ln_c_scale`` and bias ``ln_c_bias``
            (H,). The carried ``c`` is not normalized.
        cifg: coupled input-forget gate (Greff et al. 2017): ``f = 1 − i``.
            The 4H layout stays; the forget gate's columns of ``w_ih``,
            ``w_hh`` and ``b`` are unused (their gradient is zero).
        forget_bias: a constant added to the forget gate's pre-activation
            (TensorFlow's ``LSTMCell(forget_bias=)``); not with ``cifg``.
        cell_clip: clip ``c'`` to [−cell_clip, cell_clip] (TensorFlow's
            ``cell_clip``); ``None``: no clipping.
        input_dropout: Keras' ``LSTM(dropout=)``: dropout on the inputs with
            one mask per sequence, the same at every step (Gal & Ghahramani
            2016). Named so because ``jl.LSTM``'s ``dropout`` is PyTorch's
            dropout between layers.
        recurrent_dropout: Keras' ``LSTM(recurrent_dropout=)``: dropout on
            the ``h`` that the recurrent kernel reads, one mask per sequence.
        zoneout_h, zoneout_c: zoneout (Krueger et al. 2016): while training,
            each unit of ``h`` (``c``) keeps its previous value with this
            probability, a new draw every step; when deterministic, the
            expectation ``z·h + (1 − z)·h'``.
        layer_norm_epsilon: ε of the layer norms (1e-5, as ``torch.nn.LayerNorm``).

    Dropout and zoneout draws happen only in a call that is not
    deterministic (see ``lstm_variant``). Equations and the names PyTorch,
    Keras and TensorFlow use: docs/variants.md.

    >>> import jaxlstm as jl
    >>> jl.LSTMVariant(proj_size=16, peepholes=True).is_plain, jl.LSTMVariant().is_plain
    (False, True)
    """

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

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.proj_size is not None:
            if isinstance(self.proj_size, (bool, np.bool_)):
                raise TypeError(
                    f"proj_size must be None or an int >= 1, got the bool {self.proj_size!r}" + _pointer("projection")
                )
            try:
                proj_size = operator.index(self.proj_size)
            except TypeError:
                raise TypeError(
                    f"proj_size must be None or an int >= 1, got {type(self.proj_size).__name__} "
                    f"{self.proj_size!r}" + _pointer("projection")
                ) from None
            if proj_size < 1:
                raise ValueError(
                    f"proj_size must be None (no projection) or an int >= 1, got {proj_size} "
                    "(PyTorch's proj_size=0 is jaxlstm's None)" + _pointer("projection")
                )
            put("proj_size", proj_size)
        for name in ("peepholes", "layer_norm", "cifg"):
            put(name, _checks.flag(getattr(self, name), name, see=_pointer(SECTIONS[name])))
        put("forget_bias", _checks.real(self.forget_bias, "forget_bias", see=_pointer("forget-bias")))
        if self.cell_clip is not None:
            clip = _checks.real(self.cell_clip, "cell_clip", see=_pointer("cell-clipping"))
            if clip <= 0.0:
                raise ValueError(
                    f"cell_clip must be None (no clipping) or > 0, got {self.cell_clip!r}" + _pointer("cell-clipping")
                )
            put("cell_clip", clip)
        for name in RATES:
            put(name, _checks.rate(getattr(self, name), name, see=_pointer(SECTIONS[name])))
        epsilon = _checks.real(self.layer_norm_epsilon, "layer_norm_epsilon", see=_pointer("layer-normalization"))
        if epsilon <= 0.0:
            raise ValueError(f"layer_norm_epsilon must be > 0, got {epsilon!r}" + _pointer("layer-normalization"))
        put("layer_norm_epsilon", epsilon)
        if self.cifg and self.forget_bias != 0.0:
            raise ValueError(
                f"forget_bias={self.forget_bias!r} has no effect with cifg=True: a coupled cell has no forget "
                "gate of its own (f = 1 - i)" + _pointer("coupled-input-forget-gate")
            )

    # ------------------------------------------------------------------ what it is

    @property
    def is_plain(self) -> bool:
        """Whether every option is off: the plain LSTM (``layer_norm_epsilon`` aside)."""
        return all(getattr(self, f.name) == f.default for f in fields(self) if f.name != "layer_norm_epsilon")

    @property
    def regularizes(self) -> bool:
        """Whether a call that is not deterministic draws random masks (dropout or zoneout)."""
        return any(getattr(self, rate) > 0.0 for rate in RATES)

    @property
    def options(self) -> dict:
        """The options that differ from the plain LSTM, ``{name: value}``, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def recurrent_size(self, hidden_size: int) -> int:
        """R, the size of ``h`` (and of each step's output): P with a projection, else H."""
        return hidden_size if self.proj_size is None else self.proj_size

    def check_hidden_size(self, hidden_size: int, name: str = "hidden_size") -> None:
        """PyTorch's rule: a projection must be narrower than the state, ``proj_size < hidden_size``."""
        if self.proj_size is not None and self.proj_size >= hidden_size:
            raise ValueError(
                f"proj_size must be smaller than {name}: got proj_size={self.proj_size}, {name}={hidden_size} "
                "(as torch.nn.LSTM requires)" + _pointer("projection")
            )

    def own_loop(self, training: bool) -> bool:
        """Whether a call needs the variant loop (else it is a plain LSTM for the fused fast path)."""
        return (
            self.proj_size is not None
            or self.peepholes
            or self.layer_norm
            or self.cifg
            or self.cell_clip is not None
            or self.zoneout_h > 0.0
            or self.zoneout_c > 0.0
            or (training and self.recurrent_dropout > 0.0)
        )


# ----------------------------------------------------------------------------- the parameters


class VariantParams(NamedTuple):
    """The weights of one variant cell (one layer, one direction); ``None`` where the variant has none.

    Attributes:
        w_ih: input kernel, ``(input_size, 4 * hidden_size)``.
        w_hh: recurrent kernel, ``(R, 4 * hidden_size)``: R = P with a
            projection (it reads the projected ``h``), else H.
        b: bias, ``(4 * hidden_size,)``. With ``layer_norm`` it also plays
            the part of the two layer norms' biases (Ba et al.'s β₁ + β₂ + b:
            they are only ever added together).
        w_hr: projection ``(hidden_size, proj_size)`` (``proj_size``);
            PyTorch's ``weight_hr_l{k}`` transposed.
        w_peep: peepholes ``(3, hidden_size)``, rows p_i, p_f, p_o (``peepholes``).
        ln_ih_scale, ln_hh_scale: layer-norm gains of the input and the
            recurrent pre-activations, ``(4 * hidden_size,)`` (``layer_norm``).
        ln_c_scale, ln_c_bias: layer-norm gain and bias of the cell state
            before the output tanh, ``(hidden_size,)`` (``layer_norm``).

    The gates along 4H are [i, f, g, o], as ``LSTMParams``. A pytree (the
    ``None`` fields are empty), so it passes through ``jit``, ``grad`` and optax.
    """

    w_ih: Float[Array, "input gates"]
    w_hh: Float[Array, "recurrent gates"]
    b: Float[Array, " gates"]
    w_hr: Float[Array, "hidden proj"] | None = None
    w_peep: Float[Array, "3 hidden"] | None = None
    ln_ih_scale: Float[Array, " gates"] | None = None
    ln_hh_scale: Float[Array, " gates"] | None = None
    ln_c_scale: Float[Array, " hidden"] | None = None
    ln_c_bias: Float[Array, " hidden"] | None = None

    @property
    def input_size(self) -> int:
        """D, the size of one step's input vector."""
        return self.w_ih.shape[-2]

    @property
    def hidden_size(self) -> int:
        """H, the size of the cell state ``c``."""
        return self.b.shape[-1] // 4

    @property
    def recurrent_size(self) -> int:
        """R, the size of ``h``: P with a projection, else H."""
        return self.w_hh.shape[-2]

    @property
    def lstm_params(self) -> LSTMParams:
        """The plain cell's ``LSTMParams(w_ih, w_hh, b)`` (meaningful without a projection)."""
        return LSTMParams(self.w_ih, self.w_hh, self.b)


def variant_param_shapes(input_size: int, hidden_size: int, variant: LSTMVariant) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the arrays one variant cell has, in ``VariantParams`` order.

    >>> variant_param_shapes(8, 32, LSTMVariant(proj_size=16, peepholes=True))
    {'w_ih': (8, 128), 'w_hh': (16, 128), 'b': (128,), 'w_hr': (32, 16), 'w_peep': (3, 32)}
    """
    d, h = input_size, hidden_size
    shapes = {"w_ih": (d, 4 * h), "w_hh": (variant.recurrent_size(h), 4 * h), "b": (4 * h,)}
    if variant.proj_size is not None:
        shapes["w_hr"] = (h, variant.proj_size)
    if variant.peepholes:
        shapes["w_peep"] = (3, h)
    if variant.layer_norm:
        shapes |= {"ln_ih_scale": (4 * h,), "ln_hh_scale": (4 * h,), "ln_c_scale": (h,), "ln_c_bias": (h,)}
    return shapes


def variant_initializers(scheme: str, hidden_size: int, *, argument: str = "scheme") -> dict:
    """``{name: (key, shape, dtype) -> array}`` for every ``VariantParams`` field.

    ``w_ih``, ``w_hh``, ``b`` as ``jaxlstm.init_params``; ``w_hr`` glorot-uniform
    ("keras"), lecun-normal ("flax", as Flax's ``Dense``) or U(−1/√H, 1/√H)
    ("torch", as ``torch.nn.LSTM``); peepholes
    zero (the cell starts as a plain LSTM); layer-norm gains one, bias zero.
    Shared by ``init_variant_params`` and the Flax modules.
    """
    init_w_ih, init_w_hh, init_b = initializers(scheme, hidden_size, argument=argument)
    if scheme in ("keras", "flax"):  # Keras' Dense default, glorot-uniform; Flax's Dense default, lecun-normal
        dense = jax.nn.initializers.glorot_uniform() if scheme == "keras" else jax.nn.initializers.lecun_normal()
    else:
        dense = torch_uniform(hidden_size)
    init_w_hr = in_float32(dense)

    def zeros(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype)

    def ones(key, shape, dtype=jnp.float32):
        return jnp.ones(shape, dtype)

    return dict(
        w_ih=init_w_ih,
        w_hh=init_w_hh,
        b=init_b,
        w_hr=init_w_hr,
        w_peep=zeros,
        ln_ih_scale=ones,
        ln_hh_scale=ones,
        ln_c_scale=ones,
        ln_c_bias=zeros,
    )


def init_variant_params(
    key: PRNGKeyArray,
    input_size: int,
    hidden_size: int,
    variant: LSTMVariant,
    *,
    scheme: str = "keras",
    dtype=jnp.float32,
) -> VariantParams:
    """Random weights for one variant cell: the shapes of ``variant_param_shapes``.

    Args:
        key: a JAX PRNG key.
        input_size: D. hidden_size: H, the size of ``c``.
        variant: the ``LSTMVariant``.
        scheme: ``"keras"`` or ``"torch"``, as ``jaxlstm.init_params``
            (see ``variant_initializers`` for the extra weights).
        dtype: parameter dtype.

    >>> import jax, jaxlstm as jl
    >>> p = jl.init_variant_params(jax.random.key(0), 8, 32, jl.LSTMVariant(proj_size=16))
    >>> p.w_hh.shape, p.w_hr.shape, p.w_peep is None
    ((16, 128), (32, 16), True)
    """
    check_variant(variant)
    key = _checks.prng_key(key, "key")
    input_size = _checks.positive_int(input_size, "input_size")
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    dtype = _checks.float_dtype(dtype, "dtype")
    variant.check_hidden_size(hidden_size)
    inits = variant_initializers(scheme, hidden_size)
    shapes = variant_param_shapes(input_size, hidden_size, variant)
    keys = dict(zip(VariantParams._fields, jax.random.split(key, len(VariantParams._fields)), strict=True))
    return VariantParams(**{name: inits[name](keys[name], shape, dtype) for name, shape in shapes.items()})


# ----------------------------------------------------------------------------- validation


def check_variant(variant, *, allow_none: bool = False) -> None:
    """The variant type check, the one place it is written: ``variant`` must be a ``LSTMVariant``
    (or ``None`` with ``allow_none``), else a TypeError naming what it got and what to write."""
    if variant is None and allow_none:
        return
    if not isinstance(variant, LSTMVariant):
        expected = "None or a jaxlstm.LSTMVariant" if allow_none else "a jaxlstm.LSTMVariant"
        raise TypeError(
            f"variant must be {expected}, got {type(variant).__name__} {variant!r}; "
            "e.g. variant=jl.LSTMVariant(peepholes=True)" + _pointer("options")
        )


def as_variant_params(params, name: str = "params") -> VariantParams:
    if isinstance(params, VariantParams):
        return params
    if isinstance(params, LSTMParams):
        return VariantParams(*params)
    raise TypeError(
        f"{name} must be a jaxlstm.VariantParams (or LSTMParams for a variant without extra weights), "
        f"got {type(params).__name__}" + _pointer("parameters")
    )


def check_params(params: VariantParams, variant: LSTMVariant, name: str = "params") -> None:
    """Checks that ``params`` has exactly the arrays ``variant`` uses, with consistent shapes."""
    for field in ("w_ih", "w_hh", "b"):
        value = getattr(params, field)
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"{name}.{field} must be an array, got {type(value).__name__}" + _pointer("parameters"))
    if params.w_ih.ndim != 2:
        raise ValueError(
            f"{name}.w_ih must have shape (input_size, 4 * hidden_size), got {tuple(params.w_ih.shape)}"
            + _pointer("parameters")
        )
    b = params.b
    if b.ndim != 1 or b.shape[0] % 4 or b.shape[0] == 0:
        raise ValueError(f"{name}.b must have shape (4 * hidden_size,), got {tuple(b.shape)}" + _pointer("parameters"))
    hidden = b.shape[0] // 4
    variant.check_hidden_size(hidden)
    expected = variant_param_shapes(params.w_ih.shape[0], hidden, variant)
    for field in VariantParams._fields:
        value = getattr(params, field)
        if field not in expected:
            if value is not None:
                option = _OPTION_OF[field]
                raise ValueError(
                    f"{name}.{field} is given but variant.{option} is off; set it, or leave {name}.{field}=None"
                    + _pointer("parameters")
                )
            continue
        if value is None:
            raise ValueError(
                f"variant.{_OPTION_OF[field]} needs {name}.{field} of shape {expected[field]} for "
                f"hidden_size={hidden}, got None" + _pointer("parameters")
            )
        if not hasattr(value, "shape"):
            raise TypeError(f"{name}.{field} must be an array, got {type(value).__name__}" + _pointer("parameters"))
        if tuple(value.shape) != expected[field]:
            raise ValueError(
                f"{name}.{field} must have shape {_SYMBOLS[field]} = {expected[field]} for hidden_size={hidden}"
                + (f", proj_size={variant.proj_size}" if variant.proj_size is not None else "")
                + f", got {tuple(value.shape)}"
                + _pointer("parameters")
            )


_OPTION_OF = dict(
    w_hr="proj_size",
    w_peep="peepholes",
    ln_ih_scale="layer_norm",
    ln_hh_scale="layer_norm",
    ln_c_scale="layer_norm",
    ln_c_bias="layer_norm",
)
_SYMBOLS = dict(
    w_ih="(input_size, 4H)",
    w_hh="(R, 4H)",
    b="(4H,)",
    w_hr="(H, P)",
    w_peep="(3, H)",
    ln_ih_scale="(4H,)",
    ln_hh_scale="(4H,)",
    ln_c_scale="(H,)",
    ln_c_bias="(H,)",
)


def check_carry(carry, batch_shape: tuple[int, ...], recurrent_size: int, hidden_size: int, name: str) -> None:
    """Checks an ``LSTMCarry`` whose ``h`` is ``(*batch, R)`` and ``c`` ``(*batch, H)``."""
    if recurrent_size == hidden_size:
        _checks.carry(carry, batch_shape, hidden_size, name)
        return
    if not isinstance(carry, LSTMCarry):
        raise TypeError(
            f"{name} must be a jaxlstm.LSTMCarry(h, c), got {type(carry).__name__}" + _pointer("projection")
        )
    for field, size, what in (("h", recurrent_size, "proj_size"), ("c", hidden_size, "hidden_size")):
        value = getattr(carry, field)
        if not hasattr(value, "shape"):
            raise TypeError(f"{name}.{field} must be an array, got {type(value).__name__}" + _pointer("projection"))
        expected = (*batch_shape, size)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{name}.{field} must have shape (*batch, {what}) = {expected} (with a projection h is "
                f"(*batch, P) and c (*batch, H)), got {tuple(value.shape)}" + _pointer("projection")
            )


# ----------------------------------------------------------------------------- random masks


class VariantMasks(NamedTuple):
    """The random draws of one training call; ``None`` where a rate is 0.

    Attributes:
        input: ``(*batch, D)`` bools, True = keep: input dropout, the same at every step.
        recurrent: ``(*batch, R)`` bools, True = keep: recurrent dropout, the same at every step.
        zoneout_h: ``(*batch, T, R)`` bools, True = the unit keeps its previous ``h``; new every step.
        zoneout_c: ``(*batch, T, H)`` bools, True = the unit keeps its previous ``c``.
    """

    input: Bool[Array, "*batch input"] | None
    recurrent: Bool[Array, "*batch recurrent"] | None
    zoneout_h: Bool[Array, "*batch time recurrent"] | None
    zoneout_c: Bool[Array, "*batch time hidden"] | None


def draw_masks(
    key: PRNGKeyArray,
    variant: LSTMVariant,
    batch_shape: tuple[int, ...],
    time: int,
    input_size: int,
    hidden_size: int,
) -> VariantMasks:
    """The masks ``lstm_variant`` draws from ``dropout_key`` in a training call (the same key gives the same masks).

    >>> import jax, jaxlstm as jl
    >>> v = jl.LSTMVariant(input_dropout=0.5, zoneout_c=0.1)
    >>> masks = jl.variants.draw_masks(jax.random.key(0), v, (4,), 10, 8, 32)
    >>> masks.input.shape, masks.recurrent, masks.zoneout_c.shape   # one input mask per sequence
    ((4, 8), None, (4, 10, 32))
    """
    batch_shape = tuple(batch_shape)
    recurrent = variant.recurrent_size(hidden_size)
    k_input, k_recurrent, k_h, k_c = jax.random.split(key, 4)

    def keep(k, rate, shape):
        return None if rate == 0.0 else jax.random.bernoulli(k, 1.0 - rate, shape)

    def zone(k, rate, shape):
        return None if rate == 0.0 else jax.random.bernoulli(k, rate, shape)

    return VariantMasks(
        keep(k_input, variant.input_dropout, (*batch_shape, input_size)),
        keep(k_recurrent, variant.recurrent_dropout, (*batch_shape, recurrent)),
        zone(k_h, variant.zoneout_h, (*batch_shape, time, recurrent)),
        zone(k_c, variant.zoneout_c, (*batch_shape, time, hidden_size)),
    )


# ----------------------------------------------------------------------------- training or not

def is_training(dropout_key, deterministic) -> bool:
    """Whether a call may draw random masks, the one rule every API follows: ``deterministic``
    (``None``, ``True`` or ``False``; a NumPy bool or a 0-d bool array as the bool it holds) if
    given, else whether a ``dropout_key`` is given. ``False`` without a key is the caller's error
    to raise where something would draw.

    >>> import jax, numpy as np
    >>> is_training(jax.random.key(0), None), is_training(jax.random.key(0), np.True_), is_training(None, None)
    (True, False, False)
    """
    deterministic = _checks.flag(deterministic, "deterministic", allow_none=True)
    return dropout_key is not None if deterministic is None else not deterministic



def training_call(variant: LSTMVariant | None, dropout_key, deterministic) -> bool:
    """Whether a call draws random masks: a rate > 0 and not deterministic (``None``: a key is given).

    The one place ``jaxlstm.lstm`` checks ``dropout_key`` (``None`` or one PRNG key) and
    ``deterministic`` (``None``, ``True`` or ``False``), whatever the variant, the plain LSTM (``None``) too.
    """
    dropout_key = _checks.prng_key(dropout_key, "dropout_key", allow_none=True)
    if not is_training(dropout_key, deterministic) or variant is None or not variant.regularizes:
        return False
    if dropout_key is None:
        rates = {k: v for k, v in variant.options.items() if k in RATES}
        raise ValueError(
            f"deterministic=False with {rates} needs a dropout_key (a jax.random key) for the masks"
            + _pointer("input-and-recurrent-dropout")
        )
    return True
