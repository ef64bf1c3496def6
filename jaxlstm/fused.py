"""The fused gradient in every mode: a loop whose reverse mode is a hand-written backward pass and whose
forward mode is the JVP of a loop that JAX differentiates itself.

A ``jax.custom_vjp`` gives a loop its fused backward pass but no forward mode: ``jax.jvp``,
``jax.jacfwd`` and ``jax.linearize`` fail on it. Here the loop is a ``jax.custom_jvp`` instead, whose
tangent is one primitive, linear in the tangents of the differentiable inputs:

* evaluated (forward mode), the primitive is the JVP of ``reference``, the loop JAX differentiates;
* transposed (reverse mode: ``grad``, ``vjp``), it is ``backward``, the fused backward pass, reading
  what ``forward`` saved. It is told which outputs no loss reads (their cotangents are zeros it may skip).

So reverse mode costs what the custom_vjp cost, and every transformation works, second derivatives
(``jax.hessian``) and ``vmap`` included. The engine (``jaxlstm.loops``) runs its fused loop, for every
cell, through ``fused_call``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.core  # jax.core.ShapedArray: imported by name, so that type checkers know the submodule
import jax.extend.core
import jax.numpy as jnp
from jax.interpreters import ad, batching, mlir

__all__ = ["FusedLoop", "fused_call"]


@dataclass(frozen=True)
class FusedLoop:
    """The three functions of one fused loop; ``static`` is hashable, ``diff`` and ``nondiff`` pytrees.

    Attributes:
        forward: ``(static, diff, nondiff, save) -> (outputs, saved)``; ``saved`` a pytree of arrays
            (anything when not ``save``).
        backward: ``(static, diff, nondiff, saved, d_outputs, unread) -> d_diff``; ``d_outputs`` is
            structured as ``outputs``, and ``unread`` too, with ``True`` for a leaf whose cotangent is
            a symbolic zero (no loss reads it): its zeros need not be read.
        reference: ``(static, diff, nondiff) -> outputs``, the same function as ``forward``, written so
            that JAX differentiates it (its JVP is the forward mode).
    """

    forward: Callable
    backward: Callable
    reference: Callable


def fused_call(loop: FusedLoop, static, diff, nondiff):
    """``loop.forward(static, diff, nondiff, save=False)[0]``, differentiable in ``diff`` in every mode."""
    return _fused(diff, nondiff, (loop, static))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _fused(diff, nondiff, spec):
    loop, static = spec
    return loop.forward(static, diff, nondiff, False)[0]


@dataclass(frozen=True)
class _Structure:
    """The static part of a ``_tangent_p`` call: the loop and how its flat operands nest."""

    spec: tuple  # (FusedLoop, static)
    inputs: Any  # treedef of (diff, nondiff)
    saved: Any  # treedef of what forward saved
    outputs: Any  # treedef of the outputs


@_fused.defjvp
def _fused_jvp(spec, primals, tangents):
    diff, nondiff = primals
    loop, static = spec
    outputs, saved = loop.forward(static, diff, nondiff, True)
    inputs, inputs_tree = jax.tree.flatten((diff, nondiff))
    saved_leaves, saved_tree = jax.tree.flatten(saved)
    structure = _Structure(spec, inputs_tree, saved_tree, jax.tree.structure(outputs))
    out = _tangent_p.bind(*inputs, *saved_leaves, *jax.tree.leaves(tangents[0]), structure=structure)
    return outputs, jax.tree.unflatten(structure.outputs, out)


def _split(operands, structure: _Structure):
    """``(diff, nondiff, saved, tangent_leaves)`` from the primitive's flat operands."""
    num_inputs, num_saved = structure.inputs.num_leaves, structure.saved.num_leaves
    diff, nondiff = jax.tree.unflatten(structure.inputs, operands[:num_inputs])
    saved = jax.tree.unflatten(structure.saved, operands[num_inputs : num_inputs + num_saved])
    return diff, nondiff, saved, list(operands[num_inputs + num_saved :])


def _tangent_impl(*operands, structure: _Structure):
    """Forward mode: the JVP of the reference loop in ``diff``."""
    diff, nondiff, _, tangent_leaves = _split(operands, structure)
    loop, static = structure.spec
    tangents = jax.tree.unflatten(jax.tree.structure(diff), tangent_leaves)
    return jax.tree.leaves(jax.jvp(lambda d: loop.reference(static, d, nondiff), (diff,), (tangents,))[1])


def _tangent_transpose(cotangents, *operands, structure: _Structure):
    """Reverse mode: the fused backward pass."""
    diff, nondiff, saved, tangent_leaves = _split(operands, structure)
    loop, static = structure.spec
    unread = jax.tree.unflatten(structure.outputs, [type(ct) is ad.Zero for ct in cotangents])
    d_outputs = jax.tree.unflatten(structure.outputs, [ad.instantiate_zeros(ct) for ct in cotangents])
    grads = jax.tree.leaves(loop.backward(static, diff, nondiff, saved, d_outputs, unread))
    num_known = len(operands) - len(tangent_leaves)
    return [None] * num_known + [
        g if ad.is_undefined_primal(t) else None for g, t in zip(grads, tangent_leaves, strict=True)
    ]


def _tangent_abstract(*operands, structure: _Structure):
    shapes = jax.eval_shape(functools.partial(_tangent_impl, structure=structure), *operands)
    return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]


def _tangent_jvp(primals, tangents, *, structure: _Structure):
    """Second derivatives (``jax.hessian``): the JVP of ``_tangent_impl`` in its floating operands."""
    floating = [jnp.issubdtype(p.dtype, jnp.floating) for p in primals]
    args = list(primals)

    def fn(*values):
        for index, value in zip([i for i, f in enumerate(floating) if f], values, strict=True):
            args[index] = value
        return _tangent_impl(*args, structure=structure)

    differentials = [ad.instantiate_zeros(t) for t, f in zip(tangents, floating, strict=True) if f]
    return jax.jvp(fn, [p for p, f in zip(primals, floating, strict=True) if f], differentials)


def _tangent_batch(args, dims, *, structure: _Structure):
    outs = jax.vmap(functools.partial(_tangent_impl, structure=structure), in_axes=tuple(dims))(*args)
    return outs, [0] * len(outs)


_tangent_p = jax.extend.core.Primitive("jaxlstm_fused_tangent")
_tangent_p.multiple_results = True
_tangent_p.def_impl(lambda *args, structure: jax.jit(functools.partial(_tangent_impl, structure=structure))(*args))
_tangent_p.def_abstract_eval(_tangent_abstract)
mlir.register_lowering(_tangent_p, mlir.lower_fun(_tangent_impl, multiple_results=True))
ad.primitive_jvps[_tangent_p] = _tangent_jvp
ad.primitive_transposes[_tangent_p] = _tangent_transpose
batching.primitive_batchers[_tangent_p] = _tangent_batch
