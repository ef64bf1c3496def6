"""``jaxlstm.lstm``: one LSTM layer (one direction) over whole sequences, the plain cell or any variant.

This module is the LSTM's entry to the engine: it checks the arguments, chooses the backend (cuDNN on a
GPU where it computes the call exactly), makes a training call's random draws (input and recurrent
dropout masks, zoneout flags), folds a forget bias into ``b`` and builds the LSTM cell
(``jaxlstm.cells.LSTM``); the engine (``jaxlstm.engine.run_cell``, loops in ``jaxlstm.loops``) then owns
time, the matmuls, padding, masks, resets, ``reverse``, ``checkpoint_every``, dtype and the two
gradients:

* ``gradient="fused"`` (default): a custom derivative over the whole sequence (``jaxlstm.fused``). The
  forward loop saves what the cell's backward needs (the plain cell's four activated gates); the
  backward loop carries only the (dh, dc) recurrence and emits the gate pre-activation gradients dz;
  dW_ih = Xᵀ·dz, dW_hh = H_prevᵀ·dz, db = Σ dz and dX = dz·W_ihᵀ follow as GEMMs over chunks of rows.
* ``gradient="autodiff"``: JAX differentiates the scan itself; the reference the fused path is tested
  against.

Both compute the same forward values up to the order of float additions (the fused path projects the
inputs of several steps with one GEMM). Every matmul goes through ``jaxlstm.precision.matmul``: with
bfloat16 or float16 params and inputs, its operands are in that dtype and its products, like the
elementwise step and h between steps, in float32 (docs/variants.md#mixed-precision).
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _checks, cudnn
from .cell import Activation, LSTMCarry, LSTMParams, split_promote, state_dtype
from .cells.lstm import LSTM
from .engine import run_cell
from .loops import Loop, cell_params, dropped, one_step, project
from .options import LSTMOptions, takes
from .pointwise import PlainPointwise, plain_bias
from .precision import accumulation_dtype, as_dtype
from .timeline import GRADIENTS as GRADIENTS
from .timeline import MASKED_OUTPUTS as MASKED_OUTPUTS
from .timeline import Steps, reset_steps, valid_steps
from .variants import (
    LSTMVariant,
    VariantParams,
    as_variant_params,
    check_carry,
    check_params,
    check_variant,
    draw_masks,
    training_call,
)

__all__ = ["lstm", "lstm_variant", "lstm_variant_cell", "GRADIENTS", "MASKED_OUTPUTS"]


def _cell_params(params, variant: LSTMVariant | None) -> tuple[LSTMVariant | None, VariantParams]:
    """Checks ``params`` against ``variant``; returns ``(variant, params)``, the variant ``None``
    when it is the plain LSTM and the params as ``VariantParams`` (``None`` for the absent weights)."""
    if variant is None:
        _checks.params(params)
        return None, VariantParams(*params)
    check_variant(variant)
    params = as_variant_params(params)
    check_params(params, variant)
    return (None if variant.is_plain else variant), params


def _check_carry(carry, batch_shape, params: VariantParams, variant, name: str) -> None:
    if variant is None:
        _checks.carry(carry, batch_shape, params.hidden_size, name)
    else:
        check_carry(carry, batch_shape, params.recurrent_size, params.hidden_size, name)


@takes(LSTMOptions)
def lstm(
    params: LSTMParams | VariantParams,
    xs: Float[Array, "*batch time input"],
    carry: LSTMCarry | None = None,
    **options: Any,
) -> tuple[LSTMCarry, Float[Array, "*batch time hidden"]]:
    """Runs one LSTM layer (one direction) over whole sequences: the plain cell or any ``variant``.

    Args:
        params: ``LSTMParams`` with shapes (D, 4H), (H, 4H), (4H,); with a
            ``variant``, the ``VariantParams`` it uses (``init_variant_params``).
        xs: inputs, ``(*batch, T, D)``, batch-first; ``*batch`` may be empty
            (one sequence) or several dims.
        carry: initial ``LSTMCarry``, ``h`` ``(*batch, R)`` and ``c`` ``(*batch, H)`` (R = H, or P =
            ``proj_size``); zeros when ``None``. To stream in chunks, pass the previous chunk's
            ``final_carry`` (``jax.lax.stop_gradient`` of it truncates backpropagation there).
        **options: the options of ``jaxlstm.LSTMOptions``, each documented and checked there (the
            sequences, gradient and checkpointing, the activations and ``variant``, random draws, the
            backend); any other name is a TypeError listing them. Custom activations on the plain cell,
            or a c wider than the computation, take the autodiff path; bfloat16/float16 keeps the fused
            one, matmuls accumulated and the step computed in float32 (docs/variants.md#mixed-precision).

    Returns:
        ``(final_carry, hs)``: each sequence's carry after its own last valid step (after step 0 when
        ``reverse``), ``h`` ``(*batch, R)`` and ``c`` ``(*batch, H)``; every step's output ``hs``
        ``(*batch, T, R)``. One cell is applied T times: H is the size of its state vector, not a count of cells.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> params = jl.init_params(jax.random.key(0), input_size=8, hidden_size=32)
    >>> xs = jnp.ones((4, 10, 8))                      # (batch, time, input)
    >>> final, hs = jl.lstm(params, xs, seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, final.h.shape                        # (batch, time, hidden), (batch, hidden)
    ((4, 10, 32), (4, 32))
    >>> v = jl.LSTMVariant(proj_size=4, layer_norm=True)
    >>> p = jl.init_variant_params(jax.random.key(0), 8, 16, v)
    >>> final, hs = jl.lstm(p, xs, variant=v, seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, final.h.shape, final.c.shape         # h and outputs P = 4 wide, c H = 16
    ((4, 10, 4), (4, 4), (4, 16))
    """
    with jax.named_scope("jaxlstm.lstm"):
        opts = LSTMOptions.build(options, "jaxlstm.lstm")
        variant, params = _cell_params(params, opts.variant)
        _checks.inputs(xs, params.input_size, "xs", min_rank=2, layout="(*batch, time, input)")
        batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
        reset_carry, reverse, checkpoint_every = opts.reset_carry, opts.reverse, opts.checkpoint_every
        carry = _start_carry(carry, reset_carry, batch_shape, params, variant, xs.dtype)
        training = training_call(variant, opts.dropout_key, opts.deterministic)  # checks dropout_key
        seq_lengths = opts.seq_lengths
        if seq_lengths is not None:  # checked here, once: concrete lengths out of [0, T] raise, traced ones clamp
            seq_lengths = _checks.seq_lengths(seq_lengths, batch_shape, time)
        opts = opts.replace(seq_lengths=seq_lengths, variant=variant)
        if cudnn.choose_backend(opts, ((params,),), xs, [carry, reset_carry], where="jaxlstm.lstm").backend == "cudnn":
            finals, hs = cudnn.run(
                ((params,),), xs, ((carry,),), seq_lengths=seq_lengths, reverse=reverse,
                cudnn_precision=opts.cudnn_precision,
            )  # fmt: skip
            return finals[0][0], hs
        steps = Steps(
            valid_steps(seq_lengths, opts.mask, batch_shape, time),
            reset_steps(opts.resets, batch_shape, time, reverse=reverse),
        )
        rec_keep = None
        if training:
            xs, steps, rec_keep = _draw(opts.dropout_key, cast(LSTMVariant, variant), params, xs, steps)  # training
        restart = None if steps.reset is None else (carry if reset_carry is None else reset_carry)
        cell = LSTM(variant, opts.gate_fn, opts.activation_fn, training)
        if isinstance(cell.pointwise, PlainPointwise):
            params = params._replace(b=plain_bias(params.b, variant))
        params, xs, carry, restart = split_promote(params, xs, carry, restart)
        compute, wide = xs.dtype, accumulation_dtype(xs.dtype)
        carry, restart = (None if k is None else _loop_carry(k, wide) for k in (carry, restart))
        rate = 0.0 if rec_keep is None else cast(LSTMVariant, variant).recurrent_dropout  # training
        loop = Loop(cell, reverse=reverse, unroll=opts.unroll, masked_output=opts.masked_output, recurrent_dropout=rate)
        # the fused derivative is the plain cell's for sigmoid and tanh only, and assumes c in the step's dtype
        fused = opts.gradient == "fused" and cell.pointwise.fusable and cast(LSTMCarry, carry).c.dtype == wide
        final, hs = run_cell(
            loop, params, xs, carry, restart, steps, rec_keep, "fused" if fused else "autodiff", checkpoint_every
        )
        return final._replace(h=as_dtype(final.h, compute)), as_dtype(hs, compute)


def _loop_carry(carry: LSTMCarry, wide) -> LSTMCarry:
    """A carry as the loops keep it (docs/variants.md#mixed-precision). The cell state sums over every
    step: at least float32 whatever carry is given (a bfloat16 c stops growing at 256), as the default
    carry is. h is carried in the accumulation dtype, cast down only as a matmul operand; outputs leave
    in the compute dtype."""
    return carry._replace(c=carry.c.astype(state_dtype(carry.c.dtype)), h=as_dtype(carry.h, wide))


def _start_carry(carry, reset_carry, batch_shape, params: VariantParams, variant, dtype) -> LSTMCarry:
    """The checked initial carry, or zeros: ``h`` in the computation dtype, ``c`` at least float32."""
    if reset_carry is not None:
        _check_carry(reset_carry, batch_shape, params, variant, "reset_carry")
    if carry is not None:
        _check_carry(carry, batch_shape, params, variant, "carry")
        return carry
    return LSTMCarry(
        jnp.zeros((*batch_shape, params.recurrent_size), dtype),
        jnp.zeros((*batch_shape, params.hidden_size), state_dtype(dtype)),
    )


def _draw(key, variant: LSTMVariant, params: VariantParams, xs, steps: Steps):
    """A training call's random draws, made before the loop: ``(xs, steps, rec_keep)``, with
    ``xs`` after input dropout, zoneout flags among the steps (time-major) and the recurrent
    dropout mask ``(*batch, R)`` (``None`` without)."""
    batch_shape, time = tuple(xs.shape[:-2]), xs.shape[-2]
    masks = draw_masks(key, variant, batch_shape, time, params.input_size, params.hidden_size)
    if masks.input is not None:
        xs = dropped(xs, masks.input[..., None, :], variant.input_dropout)

    def time_major(flags):
        return None if flags is None else jnp.moveaxis(flags, -2, 0)

    noise = (time_major(masks.zoneout_h), time_major(masks.zoneout_c))
    steps = steps._replace(noise=None if noise == (None, None) else noise)
    return xs, steps, masks.recurrent


def lstm_variant(params, xs, carry=None, *, variant: LSTMVariant, **options):
    """``jaxlstm.lstm(params, xs, carry, variant=variant, **options)``, kept for code written before
    ``lstm`` took a ``variant``; it will go before 1.0. Shapes and checks are ``lstm``'s: xs
    ``(*batch, T, D)`` → ``(final_carry, hs)``, ``hs`` ``(*batch, T, R)``, ``h`` ``(*batch, R)``,
    ``c`` ``(*batch, H)``."""
    return lstm(params, xs, carry, variant=variant, **options)


def lstm_variant_cell(
    params: VariantParams,
    carry: LSTMCarry,
    x: Float[Array, "*batch input"],
    *,
    variant: LSTMVariant,
    gate_fn: Activation = jax.nn.sigmoid,
    activation_fn: Activation = jnp.tanh,
) -> tuple[LSTMCarry, Float[Array, "*batch recurrent"]]:
    """One deterministic step of a variant cell (no dropout; zoneout as its expectation): the
    engine's own step, as ``jaxlstm.lstm`` runs it at every time step.

    Args:
        params: ``VariantParams`` for ``variant``.
        carry: ``LSTMCarry``: ``h`` ``(*batch, R)``, ``c`` ``(*batch, H)``.
        x: ``(*batch, D)``.
        variant: the ``LSTMVariant``.
        gate_fn, activation_fn: as ``jaxlstm.lstm_cell``.

    Returns:
        ``(new_carry, h)``, ``h`` ``(*batch, R)`` (the same array as ``new_carry.h``).

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> v = jl.LSTMVariant(proj_size=2, peepholes=True)
    >>> p = jl.init_variant_params(jax.random.key(0), 3, 5, v)
    >>> carry = jl.LSTMCarry(jnp.zeros((4, 2)), jnp.zeros((4, 5)))
    >>> carry, h = jl.lstm_variant_cell(p, carry, jnp.ones((4, 3)), variant=v)
    >>> h.shape, carry.c.shape
    ((4, 2), (4, 5))
    """
    with jax.named_scope("jaxlstm.lstm_variant_cell"):
        check_variant(variant)
        params = as_variant_params(params)
        check_params(params, variant)
        _checks.inputs(x, params.input_size, "x", min_rank=1)
        check_carry(carry, x.shape[:-1], params.recurrent_size, params.hidden_size, "carry")
        _checks.activation(gate_fn, "gate_fn")
        _checks.activation(activation_fn, "activation_fn")
        cell = LSTM(variant, gate_fn, activation_fn)
        if isinstance(cell.pointwise, PlainPointwise):
            params = params._replace(b=plain_bias(params.b, variant))
        params, x, carry = split_promote(params, x, carry)
        small = cell_params(cell, params)
        from_input = cell.prepare_input(small, project(cell, params, x))
        new, _, _, _ = one_step(Loop(cell), params, small, carry, None, from_input, Steps(), None, save=False)
        return new, new.h
