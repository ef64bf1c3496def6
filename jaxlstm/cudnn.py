"""cuDNN on a GPU: jaxlstm's weights in ``jax.experimental.rnn``'s layout, the choice of backend, and the call.

``jax.experimental.rnn`` binds cuDNN's LSTM (forward and backward) for CUDA.
This module lets ``jl.lstm``, ``jl.stacked_lstm``, ``jl.LSTM`` and
``jl.nnx.LSTM`` run on it with jaxlstm's own parameters and semantics
(``backend="auto"``, the default, or ``"cudnn"``), and falls back to
jaxlstm's XLA loop wherever cuDNN would compute something else. The guide is
docs/gpu.md.

* **Packing** (exact, both ways; ``jaxlstm.cudnn_weights``, re-exported here):
  ``to_cudnn`` / ``from_cudnn`` between ``StackParams`` and cuDNN's flat
  weight vector, ``carries_to_cudnn`` / ``carries_from_cudnn`` between
  ``StackCarry`` and cuDNN's ``(layers·directions, *batch, H)`` h_0 and c_0.
* **The choice**: ``backend_for`` says which backend a call runs on and why
  (``BackendChoice``); ``ineligible`` is the rule, in one place.
* **The call** (``run``): cuDNN through three primitives of this module whose
  rules route what cuDNN cannot do to jaxlstm's XLA loop: under ``vmap``
  (cuDNN has no batching rule), under ``jax.jvp`` (no forward mode) and for
  second derivatives (the cuDNN backward pass is not differentiable), the
  same function is computed by ``jaxlstm.lstm(..., backend="xla",
  gradient="autodiff")``. A plain ``jax.grad`` uses cuDNN's backward pass.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import jax
import jax.core  # jax.core.ShapedArray: imported by name, so that type checkers know the submodule
import jax.extend.backend
import jax.extend.core
import jax.numpy as jnp
from jax.experimental import rnn as _rnn
from jax.interpreters import ad, batching, mlir
from jaxtyping import Array, Float, Int

from . import _checks
from ._types import LSTMCarry, LSTMParams
from .cells.lstm import LSTM
from .cudnn_weights import carries_from_cudnn as carries_from_cudnn
from .cudnn_weights import carries_to_cudnn as carries_to_cudnn
from .cudnn_weights import from_cudnn as from_cudnn
from .cudnn_weights import num_weights as num_weights
from .cudnn_weights import to_cudnn as to_cudnn
from .engine import run_cell
from .loops import Loop
from .options import BACKENDS as BACKENDS
from .options import PRECISIONS as PRECISIONS
from .options import LSTMOptions, StackOptions, build, takes
from .timeline import Steps, valid_steps
from .variants import VariantParams

if TYPE_CHECKING:
    from .variants import VariantParams

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendChoice",
    "backend_for",
    "ineligible",
    "environment",
    "num_weights",
    "to_cudnn",
    "from_cudnn",
    "carries_to_cudnn",
    "carries_from_cudnn",
    "run",
    "choose",
    "choose_backend",
]

logger = logging.getLogger("jaxlstm")

if TYPE_CHECKING:  # choose and ineligible also see a variant's cells; run and to_cudnn only plain ones
    Stack = Sequence[Sequence[LSTMParams | VariantParams]]
else:
    Stack = Sequence[Sequence[LSTMParams]]


# ----------------------------------------------------------------------------- the choice


class BackendChoice(NamedTuple):
    """Where a call runs: ``backend`` ``"cudnn"`` or ``"xla"``, and ``reason``, why not cuDNN (``None`` on cuDNN)."""

    backend: str
    reason: str | None


def _platform() -> str:
    """``"cuda"``, ``"rocm"`` or the default backend's name (``"cpu"``, ``"tpu"``)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = str(getattr(jax.extend.backend.get_backend(), "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


def environment() -> str | None:
    """Why this process can't reach cuDNN (``None`` if it can): the default backend must be a
    CUDA GPU and jaxlib must have ``jax.experimental.rnn``'s cuDNN binding (the CUDA plugin)."""
    platform = _platform()
    if platform != "cuda":
        if platform == "rocm":
            return "the default backend is a ROCm GPU; jaxlstm packs weights for cuDNN (CUDA) only"
        return f"the default backend is {platform}, not a CUDA GPU"
    if not hasattr(getattr(_rnn, "gpu_rnn", None), "compute_rnn_workspace_reserve_space_sizes"):
        return "jaxlib has no cuDNN RNN binding (jax.experimental.rnn needs the jax CUDA plugin)"
    return None


_GATE_FNS = (jax.nn.sigmoid,)
_ACTIVATION_FNS = (jnp.tanh, jax.nn.tanh)


def _name(fn) -> str:
    return getattr(fn, "__name__", repr(fn))


def ineligible(
    stack: Stack, xs, carries: Sequence[LSTMCarry] = (), options: LSTMOptions = LSTMOptions(), dropout: float = 0.0
) -> str | None:
    """Why cuDNN would not compute this call exactly (``None``: it would). The rule, in one place.

    ``stack`` is ``[layer][direction]`` → params, ``xs`` ``(*batch, T, D)``, ``carries`` every
    given initial ``LSTMCarry``, ``options`` the call's (``jaxlstm.options``) and ``dropout`` the
    rate of dropout a training call applies between layers (0 when it applies none).
    """
    variant = options.variant
    if variant is not None and not variant.is_plain:
        described = ", ".join(f"{name}={value!r}" for name, value in variant.options.items())
        return f"variant=LSTMVariant({described}) is not the plain LSTM cell cuDNN computes"
    if options.gate_fn not in _GATE_FNS:
        return f"gate_fn={_name(options.gate_fn)} is not jax.nn.sigmoid"
    if options.activation_fn not in _ACTIVATION_FNS:
        return f"activation_fn={_name(options.activation_fn)} is not jnp.tanh"
    if options.gradient != "fused":
        return f"gradient={options.gradient!r} asks JAX to differentiate jaxlstm's scan"
    if options.mask is not None:
        return "mask= is given (cuDNN skips only the padding after seq_lengths)"
    if options.resets is not None:
        return "resets= is given (cuDNN restarts no carry inside a sequence)"
    if options.masked_output != "zeros" and options.seq_lengths is not None:
        return f"masked_output={options.masked_output!r} with seq_lengths (cuDNN outputs zeros at padded steps)"
    if options.checkpoint_every is not None:
        return f"checkpoint_every={options.checkpoint_every} (cuDNN keeps its own activations for the backward pass)"
    if dropout > 0.0:
        return f"dropout={dropout} between layers while training"
    return _ineligible_arrays(stack, xs, carries)


def _ineligible_arrays(stack: Stack, xs, carries: Sequence[LSTMCarry]) -> str | None:
    """Why cuDNN can't take these arrays (``None``: it can): float32 only, and no empty batch or sequence."""
    for name, value in [("xs", xs)] + [
        (f"params.{field}", getattr(params, field))
        for directions in stack
        for params in directions
        for field in ("w_ih", "w_hh", "b")
    ]:
        if value.dtype != jnp.float32:
            return f"{name} is {value.dtype}, not float32"
    for carry in carries:
        for field in ("h", "c"):
            if getattr(carry, field).dtype != jnp.float32:
                return f"an initial carry's {field} is {getattr(carry, field).dtype}, not float32"
    if math.prod(xs.shape[:-2]) == 0 or xs.shape[-2] == 0:
        return f"an empty batch or sequence (xs.shape={tuple(xs.shape)})"
    return None


def between_layers(options: StackOptions, num_layers: int) -> float:
    """The rate of dropout a call applies between layers: ``options.dropout`` in a training call
    of two or more layers, else 0."""
    return options.dropout if options.training and num_layers > 1 else 0.0


def choose_backend(
    options: LSTMOptions, stack: Stack, xs, carries=(), *, where: str, dropout: float = 0.0
) -> BackendChoice:
    """The backend of one call of ``where`` (``"jaxlstm.lstm"``, ...) with these (validated) ``options``;
    ``dropout`` is the rate between layers (``between_layers``). An explicit ``backend="cudnn"`` that
    cuDNN can't serve is a ValueError naming why."""
    if options.backend == "xla":
        choice = BackendChoice("xla", "backend='xla' was asked for")
    else:
        given = [c for c in carries if c is not None]
        reason = environment() or ineligible(stack, xs, given, options, dropout)
        if reason is not None and options.backend == "cudnn":
            raise ValueError(
                f"{where}(..., backend='cudnn') can't run on cuDNN: {reason}. Use backend='auto' to fall back "
                "to jaxlstm's XLA loop where cuDNN can't serve a call; "
                "see docs/gpu.md#what-falls-back (jaxlstm docs gpu#what-falls-back)"
            )
        choice = BackendChoice("xla", reason) if reason else BackendChoice("cudnn", None)
    logger.debug("%s: backend=%s (%s)", where, choice.backend, choice.reason or "cuDNN computes this call exactly")
    return choice


def choose(backend: str, cudnn_precision: str, stack: Stack, xs, carries=(), *, where: str, **call) -> BackendChoice:
    """``choose_backend`` for a call given as keyword arguments of ``LSTMOptions`` (``jl.lstm``'s, until
    it passes its record), ``dropout_between_layers`` the rate between layers."""
    dropout = call.pop("dropout_between_layers", 0.0)
    options = LSTMOptions(backend=backend, cudnn_precision=cudnn_precision, **call)
    return choose_backend(options, stack, xs, carries, where=where, dropout=dropout)


@takes(StackOptions)
def backend_for(params, xs, carry=None, **options: Any) -> BackendChoice:
    """The backend a ``jl.lstm`` or ``jl.stacked_lstm`` call with these arguments runs on, and why.

    ``params`` is one cell's ``LSTMParams`` (a ``jl.lstm`` call) or a stack's
    ``StackParams`` (``jl.stacked_lstm``), ``xs`` ``(*batch, T, D)``; ``carry``
    an ``LSTMCarry`` or a ``StackCarry``. ``**options`` are the call's own,
    those of ``jaxlstm.options.StackOptions`` (``reset_carry`` too, for a
    ``jl.lstm`` call); any other is a TypeError. With ``backend="cudnn"`` on a
    call cuDNN can't serve it raises the call's ValueError. ``vmap``,
    ``jax.jvp`` and second derivatives fall back to XLA inside the call
    itself (docs/gpu.md).

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> params = jl.init_params(jax.random.key(0), 3, 4)
    >>> jl.backend_for(params, jnp.ones((2, 5, 3))).backend          # on this CPU
    'xla'
    >>> jl.backend_for(params, jnp.ones((2, 5, 3)), backend="xla").reason
    "backend='xla' was asked for"
    """
    options.pop("reset_carry", None)  # jl.lstm's: never changes the backend
    record = build(StackOptions, options, "jaxlstm.backend_for")
    stack = ((params,),) if isinstance(params, LSTMParams) or hasattr(params, "w_hr") else params
    carries = [carry] if isinstance(carry, LSTMCarry) else [c for row in carry or () for c in row]
    dropout = between_layers(record, len(stack))
    return choose_backend(record, stack, xs, carries, where="jaxlstm.backend_for", dropout=dropout)


# ----------------------------------------------------------------------------- the primitives

# Where the primitives lower to the binding (cuDNN); elsewhere they lower to jaxlstm's XLA loop.
# tests/cudnn_cpu.py adds "cpu" after giving the binding CPU lowerings built from lstm_ref.
BINDING_PLATFORMS = frozenset({"cuda"})


def _binding_params(input_size, hidden_size, num_layers, bidirectional, allow_tf32, **_) -> dict:
    return dict(
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=0.0,
        bidirectional=bidirectional,
        cudnn_allow_tf32=allow_tf32,
    )


def _xla_layer(params: LSTMParams, xs, carry: LSTMCarry, lengths, reverse: bool):
    """One direction of one layer in jaxlstm's own loop (the engine running the plain LSTM cell, its autodiff
    path, so that every transformation applies): ``(final, hs)``; ``xs`` ``(N, T, D)``, ``lengths`` ``(N,)``
    int32 in [0, T]."""
    steps = Steps(valid_steps(lengths, None, tuple(xs.shape[:-2]), xs.shape[-2]))
    loop = Loop(LSTM(), reverse=reverse)
    return run_cell(loop, VariantParams(*params), xs, carry, None, steps, None, "autodiff", None)


def _xla_forward(x, h0, c0, weights, lengths, *, input_size, hidden_size, num_layers, bidirectional, allow_tf32):
    """What the binding's forward computes, in jaxlstm's XLA loop: ``(y, h_n, c_n)`` from cuDNN's
    operands (``y`` (N, T, directions·H), the directions concatenated; ``h_n``, ``c_n`` (cells, N, H))."""
    stack = from_cudnn(weights, input_size, hidden_size, num_layers, bidirectional)
    carries = carries_from_cudnn(h0, c0, bidirectional)
    hs, finals = x, []
    with jax.default_matmul_precision("tensorfloat32" if allow_tf32 else "float32"):
        for directions, layer_carries in zip(stack, carries, strict=True):
            outputs = []
            for direction, (params, carry) in enumerate(zip(directions, layer_carries, strict=True)):
                final, out = _xla_layer(params, hs, carry, lengths, direction == 1)
                outputs.append(out)
                finals.append(final)
            hs = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
    return hs, jnp.stack([f.h for f in finals]), jnp.stack([f.c for f in finals])


def _xla_forward_with_reserve(*args, **params):
    y, h_n, c_n = _xla_forward(*args, **params)
    return y, h_n, c_n, jnp.zeros(_reserve_aval(*args, **params).shape, jnp.float32)


def _reserve_aval(x, h0, c0, weights, lengths, **params):
    avals = [jax.core.ShapedArray(a.shape, a.dtype) for a in (x, h0, c0, weights, lengths)]
    out, _ = _rnn.rnn_fwd_p.abstract_eval(*avals, **_binding_params(**params))
    return out[3]


def _xla_tangent(x, h0, c0, weights, lengths, y, reserve, dx, dh0, dc0, dw, **params):
    forward = functools.partial(_xla_forward, lengths=lengths, **params)
    return jax.jvp(lambda *a: forward(*a), (x, h0, c0, weights), (dx, dh0, dc0, dw))[1]


def _xla_backward(dy, dh_n, dc_n, x, h0, c0, weights, y, reserve, lengths, **params):
    forward = functools.partial(_xla_forward, lengths=lengths, **params)
    _, pullback = jax.vjp(lambda *a: forward(*a), x, h0, c0, weights)
    return pullback((dy, dh_n, dc_n))


def _binding_forward(x, h0, c0, weights, lengths, **params):
    return _rnn.rnn_fwd_p.bind(x, h0, c0, weights, lengths, **_binding_params(**params))


def _binding_backward(dy, dh_n, dc_n, x, h0, c0, weights, y, reserve, lengths, **params):
    return _rnn.rnn_bwd_p.bind(dy, dh_n, dc_n, x, h0, c0, weights, y, reserve, lengths, **_binding_params(**params))


def _lowering(binding: Callable | None, xla: Callable):
    """A lowering rule: ``binding`` (cuDNN) on ``BINDING_PLATFORMS``, jaxlstm's XLA loop elsewhere."""

    def rule(ctx, *args, **params):
        platforms = set(ctx.platforms or ctx.module_context.platforms)
        fn = binding if binding is not None and platforms <= BINDING_PLATFORMS else xla
        return mlir.lower_fun(functools.partial(fn, **params), multiple_results=True)(ctx, *args)

    return rule


@functools.lru_cache(maxsize=64)
def _jitted_bind(primitive, params: tuple):
    return jax.jit(functools.partial(primitive.bind, **dict(params)))


def _primitive(name: str, abstract_eval, binding: Callable | None, xla: Callable):
    """A primitive whose eager calls run jitted and which lowers as ``_lowering`` says."""
    primitive = jax.extend.core.Primitive(name)
    primitive.multiple_results = True
    primitive.def_impl(lambda *args, **params: _jitted_bind(primitive, tuple(sorted(params.items())))(*args))
    primitive.def_abstract_eval(abstract_eval)
    mlir.register_lowering(primitive, _lowering(binding, xla))
    return primitive


def _shaped(*arrays):
    return [jax.core.ShapedArray(a.shape, a.dtype) for a in arrays]


def _forward_abstract(x, h0, c0, weights, lengths, **params):
    return _rnn.rnn_fwd_p.abstract_eval(x, h0, c0, weights, lengths, **_binding_params(**params))[0]


# The forward: (x, h0, c0, weights, lengths) -> (y, h_n, c_n, reserve space).
_forward_p = _primitive("jaxlstm_cudnn_lstm", _forward_abstract, _binding_forward, _xla_forward_with_reserve)
# Its tangent, linear in the last four operands (dx, dh0, dc0, dw); transposed, the cuDNN backward.
_tangent_p = _primitive(
    "jaxlstm_cudnn_lstm_tangent", lambda x, h0, c0, w, lengths, y, *_, **p: _shaped(y, h0, c0), None, _xla_tangent
)
# The backward: (dy, dh_n, dc_n, x, h0, c0, weights, y, reserve, lengths) -> (dx, dh0, dc0, dw).
_backward_p = _primitive(
    "jaxlstm_cudnn_lstm_backward",
    lambda dy, dhn, dcn, x, h0, c0, w, *_, **p: _shaped(x, h0, c0, w),
    _binding_backward,
    _xla_backward,
)


def _forward_jvp(primals, tangents, **params):
    x, h0, c0, weights, lengths = primals
    y, h_n, c_n, reserve = _forward_p.bind(*primals, **params)
    differentials = [ad.instantiate_zeros(t) for t in tangents[:4]]
    dy, dh_n, dc_n = _tangent_p.bind(x, h0, c0, weights, lengths, y, reserve, *differentials, **params)
    return (y, h_n, c_n, reserve), (dy, dh_n, dc_n, ad.Zero(jax.typeof(reserve)))


def _tangent_transpose(cotangents, x, h0, c0, weights, lengths, y, reserve, *differentials, **params):
    dy, dh_n, dc_n = (ad.instantiate_zeros(ct) for ct in cotangents)
    grads = _backward_p.bind(dy, dh_n, dc_n, x, h0, c0, weights, y, reserve, lengths, **params)
    return [None] * 7 + [g if ad.is_undefined_primal(d) else None for g, d in zip(grads, differentials, strict=True)]


def _xla_jvp(xla: Callable, num_outputs: int):
    """A jvp rule that differentiates ``xla`` (int operands have no tangent): second derivatives, forward mode."""

    def rule(primals, tangents, **params):
        floating = [jnp.issubdtype(p.dtype, jnp.floating) for p in primals]
        args = list(primals)

        def fn(*values):
            for index, value in zip([i for i, f in enumerate(floating) if f], values, strict=True):
                args[index] = value
            return xla(*args, **params)

        differentials = [ad.instantiate_zeros(t) for t, f in zip(tangents, floating, strict=True) if f]
        outs, out_tangents = jax.jvp(fn, [p for p, f in zip(primals, floating, strict=True) if f], differentials)
        return list(outs)[:num_outputs], list(out_tangents)[:num_outputs]

    return rule


def _xla_batching(xla: Callable, extra: Callable | None = None):
    """A batching rule that maps ``xla`` over the batched operands; ``extra`` adds unbatched outputs."""

    def rule(args, dims, **params):
        outs = jax.vmap(functools.partial(xla, **params), in_axes=tuple(dims))(*args)
        outs, out_dims = list(outs), cast("list[int | None]", [0] * len(outs))
        if extra is not None:
            unbatched = [a if d is None else jnp.take(a, 0, axis=d) for a, d in zip(args, dims, strict=True)]
            outs.append(extra(*unbatched, **params))
            out_dims.append(None)
        return outs, out_dims

    return rule


def _dummy_reserve(*args, **params):
    return jnp.zeros(_reserve_aval(*args, **params).shape, jnp.float32)


ad.primitive_jvps[_forward_p] = _forward_jvp
ad.primitive_jvps[_tangent_p] = _xla_jvp(_xla_tangent, 3)
ad.primitive_jvps[_backward_p] = _xla_jvp(_xla_backward, 4)
ad.primitive_transposes[_tangent_p] = _tangent_transpose
batching.primitive_batchers[_forward_p] = _xla_batching(_xla_forward, _dummy_reserve)
batching.primitive_batchers[_tangent_p] = _xla_batching(_xla_tangent)
batching.primitive_batchers[_backward_p] = _xla_batching(_xla_backward)


# ----------------------------------------------------------------------------- the call


def _flip(xs, lengths):
    """Each row's first ``lengths[n]`` steps in reverse order, padding left in place: ``(N, T, F)``."""
    steps = jnp.arange(xs.shape[1], dtype=jnp.int32)[None, :]
    index = jnp.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return jnp.take_along_axis(xs, jnp.broadcast_to(index[..., None], xs.shape), axis=1)


def run(
    stack: Stack,
    xs: Float[Array, "*batch time input"],
    carries=None,
    *,
    seq_lengths: Int[Array, "*batch"] | None = None,
    reverse: bool = False,
    merge: str = "concat",
    merge_fn: Callable | None = None,
    cudnn_precision: str = "float32",
):
    """A stack on cuDNN, as ``jl.stacked_lstm`` computes it: ``(final_carries, hs)``.

    Called by ``jl.lstm`` and ``jl.stacked_lstm`` once ``choose`` picked
    cuDNN. Batch dims are flattened into cuDNN's one; ``seq_lengths`` become
    int32, clipped to [0, T] (cuDNN gets at least 1, and rows of length 0
    then get zeros and their initial carry back); ``reverse`` reads each row
    flipped within its own length; with ``merge`` other than ``"concat"``
    each layer is one cuDNN call and ``merge_fn(forward, backward)`` merges
    its directions. Where the primitives fall back to an XLA loop (forward mode, a CPU),
    it is jaxlstm's engine (``_xla_layer``).
    """
    with jax.named_scope("jaxlstm.cudnn"):
        directions = len(stack[0])
        hidden = stack[0][0].hidden_size
        batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
        n = math.prod(batch_shape)
        if seq_lengths is None:
            lengths = jnp.full((n,), time, jnp.int32)
        else:
            _checks.per_sequence_ints(seq_lengths, batch_shape, "seq_lengths")
            lengths = jnp.clip(seq_lengths.reshape(n), 0, time).astype(jnp.int32)
        if carries is None:
            zeros = jnp.zeros((len(stack) * directions, n, hidden), xs.dtype)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = (a.reshape(a.shape[0], n, hidden) for a in carries_to_cudnn(carries))
        valid = jnp.arange(time, dtype=jnp.int32)[None, :] < lengths[:, None]
        started = (lengths > 0)[None, :, None]
        hs = xs.reshape(n, time, xs.shape[-1])
        if reverse:
            hs = _flip(hs, lengths)
        whole = directions == 1 or merge == "concat"
        groups = (
            [range(len(stack))] if whole else [range(layer_index, layer_index + 1) for layer_index in range(len(stack))]
        )
        h_n, c_n = [], []
        for group in groups:
            cells = slice(group[0] * directions, (group[-1] + 1) * directions)
            y, h, c, _ = _forward_p.bind(
                hs,
                h0[cells],
                c0[cells],
                to_cudnn([stack[layer_index] for layer_index in group]),
                jnp.maximum(lengths, 1),
                input_size=hs.shape[-1],
                hidden_size=hidden,
                num_layers=len(group),
                bidirectional=directions == 2,
                allow_tf32=cudnn_precision == "tf32",
            )
            hs = jnp.where(valid[..., None], y, jnp.zeros_like(y))
            if not whole:
                # two directions: stacked_lstm's call, which always passes merge_fn
                hs = cast(Callable, merge_fn)(hs[..., :hidden], hs[..., hidden:])
            h_n.append(jnp.where(started, h, h0[cells]))
            c_n.append(jnp.where(started, c, c0[cells]))
        if reverse:
            hs = _flip(hs, lengths)
        h_n, c_n = jnp.concatenate(h_n), jnp.concatenate(c_n)
        finals = carries_from_cudnn(
            h_n.reshape(h_n.shape[0], *batch_shape, hidden),
            c_n.reshape(c_n.shape[0], *batch_shape, hidden),
            directions == 2,
        )
        return finals, hs.reshape(*batch_shape, time, hs.shape[-1])
