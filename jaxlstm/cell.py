"""One LSTM step: parameters, carry, initialisation and the cell itself.

Notation used across jaxlstm (annotations, docstrings and error messages):

====== ==========================================================
batch  any number of leading batch dimensions, written ``*batch``
time   T, the number of time steps
input  D, the size of one step's input vector (``input_size``)
hidden H, the size of the state vector (``hidden_size`` = Keras'
       ``units`` = Flax's ``features``)
gates  4·H, the four gate pre-activations packed as [i, f, g, o]
====== ==========================================================

The equations, for one step with input x (D,) and carry (h, c) (H,)::

    z = x @ w_ih + h @ w_hh + b           # (4H,) = [z_i, z_f, z_g, z_o]
    i = sigmoid(z_i)   f = sigmoid(z_f)   g = tanh(z_g)   o = sigmoid(z_o)
    c' = f * c + i * g
    h' = o * tanh(c')

Gate order i, f, g, o along the 4H axis is the one PyTorch and Keras use, so
their weights convert by a transpose, not a shuffle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from ._types import LSTMCarry as LSTMCarry
from ._types import LSTMParams as LSTMParams

__all__ = ["LSTMParams", "LSTMCarry", "init_params", "zeros_carry", "lstm_cell", "INIT_SCHEMES"]

INIT_SCHEMES = ("keras", "torch", "flax")

Activation = Callable[[Array], Array]
# The weights of one cell: LSTMParams, or a variant's VariantParams (any pytree of arrays); kept through promotion.
AnyParams = TypeVar("AnyParams")
"""An elementwise function, e.g. ``jax.nn.sigmoid``, ``jnp.tanh``, ``jax.nn.hard_sigmoid``."""


def per_gate(init, name: str = "initializer"):
    """``init`` applied to each gate's block of a packed ``(..., 4H)`` weight, as Flax applies it per gate.

    Flax's ``LSTMCell`` holds one kernel per gate (``ii``, ``if``, ``ig``,
    ``io`` (D, H); ``hi``, ..., ``ho`` (H, H), with biases (H,)); jaxlstm packs
    them as (D, 4H), (H, 4H) and (4H,) in gate order i, f, g, o. The returned
    initializer calls ``init(key_k, (..., H), dtype)`` once per gate, each with
    its own key, and concatenates the four blocks along the last axis, so
    fan-based initializers (``lecun_normal``, ``orthogonal``) give every block
    the distribution Flax gives that gate's kernel. ``name`` (the argument's
    name, e.g. ``"kernel_init"``) is for the error messages.
    """
    _checks.initializer(init, name)

    def packed(key, shape, dtype=jnp.float32):
        *lead, gates = shape
        block = (*lead, gates // 4)
        blocks = []
        for gate_key in jax.random.split(key, 4):
            value = jnp.asarray(init(gate_key, block, dtype))
            if tuple(value.shape) != block:
                raise ValueError(
                    f"{name} must return an array of the shape it is given: asked for one gate's block "
                    f"{block} of a packed {tuple(shape)} weight, got shape {tuple(value.shape)}"
                )
            blocks.append(value.astype(dtype))
        return jnp.concatenate(blocks, axis=-1)

    return packed


def torch_uniform(hidden_size: int):
    """PyTorch's initialisation of every LSTM weight (``torch.nn.LSTM``, its ``proj_size`` weight too),
    the one place it is written: each entry U(−1/√H, 1/√H). Returns ``(key, shape, dtype) -> array``."""
    bound = 1.0 / hidden_size**0.5

    def symmetric_uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return symmetric_uniform


def in_float32(init):
    """``init`` drawn in float32 and cast, so every dtype (bfloat16 too, which QR lacks) gets the same weights."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape, jnp.float32).astype(dtype)


def initializers(
    scheme: str,
    hidden_size: int,
    *,
    argument: str = "scheme",
    kernel_init=None,
    recurrent_kernel_init=None,
    bias_init=None,
):
    """The ``(key, shape, dtype) -> array`` initializers of ``w_ih``, ``w_hh`` and ``b``.

    Shared by ``init_params`` and the Flax modules, so both draw the same weights.
    ``kernel_init``, ``recurrent_kernel_init`` and ``bias_init`` (Flax's names and
    meanings), when given, replace the scheme's for ``w_ih``, ``w_hh`` and ``b``;
    each is applied per gate (see ``per_gate``) with the parameter dtype.
    """
    _checks.one_of(scheme, INIT_SCHEMES, argument)
    overrides = {"kernel_init": kernel_init, "recurrent_kernel_init": recurrent_kernel_init, "bias_init": bias_init}
    given = {name: per_gate(init, name) for name, init in overrides.items() if init is not None}
    if scheme == "flax":
        # Flax's LSTMCell: lecun_normal input kernels, orthogonal recurrent kernels, zero biases, per gate.
        inits = (
            per_gate(jax.nn.initializers.lecun_normal()),
            per_gate(jax.nn.initializers.orthogonal()),
            jax.nn.initializers.zeros,
        )
    elif scheme == "keras":

        def forget_bias_one(key, shape, dtype=jnp.float32):
            return jnp.zeros(shape, dtype).at[hidden_size : 2 * hidden_size].set(1.0)

        inits = (jax.nn.initializers.glorot_uniform(), jax.nn.initializers.orthogonal(), forget_bias_one)
    else:
        inits = (torch_uniform(hidden_size),) * 3
    defaults = (in_float32(init) for init in inits)
    names = ("kernel_init", "recurrent_kernel_init", "bias_init")
    return tuple(given.get(name, default) for name, default in zip(names, defaults, strict=True))


def init_params(
    key: PRNGKeyArray,
    input_size: int,
    hidden_size: int,
    *,
    scheme: str = "keras",
    dtype=jnp.float32,
) -> LSTMParams:
    """Random weights for one cell.

    Args:
        key: a JAX PRNG key.
        input_size: D, the size of each step's input.
        hidden_size: H, the size of the state (``units``).
        scheme: ``"keras"`` — glorot-uniform ``w_ih``, orthogonal ``w_hh``
            (one (H, 4H) matrix with orthonormal rows, as Keras), zero bias
            except 1.0 on the forget gate; or ``"torch"`` — every entry
            U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn.LSTM``; or ``"flax"`` —
            Flax's ``LSTMCell``: each gate's block of ``w_ih`` lecun-normal
            (truncated normal, variance 1/D), each gate's (H, H) block of
            ``w_hh`` orthogonal, zero bias.
        dtype: parameter dtype, a real floating one (float32, bfloat16, ...).

    Returns:
        ``LSTMParams`` with shapes (D, 4H), (H, 4H), (4H,).
    """
    key = _checks.prng_key(key, "key")
    input_size = _checks.positive_int(input_size, "input_size")
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    dtype = _checks.float_dtype(dtype, "dtype")
    init_w_ih, init_w_hh, init_b = initializers(scheme, hidden_size)
    k_ih, k_hh, k_b = jax.random.split(key, 3)
    gates = 4 * hidden_size
    return LSTMParams(
        init_w_ih(k_ih, (input_size, gates), dtype),
        init_w_hh(k_hh, (hidden_size, gates), dtype),
        init_b(k_b, (gates,), dtype),
    )


def module_input(x, name: str = "x") -> None:
    """The modules' input rule, Flax's: a float input as it is; a bool or integer one is accepted
    (the module casts it to its computation dtype, ``dtype`` or else the params' dtype, as Flax's
    cells do); anything else (complex, not an array) is refused. The functional core
    (``lstm_cell``, ``lstm``) takes floating inputs only."""
    if hasattr(x, "dtype") and (jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.bool_)):
        return
    _checks.floating(x, name)


def initial_carry(shape: tuple[int, ...], dtype, carry_init=None, keys=None) -> LSTMCarry:
    """The carry a module's ``initialize_carry`` gives: ``h`` of shape ``shape`` in ``dtype``, ``c`` in
    ``state_dtype(dtype)``; zeros, or ``carry_init(key, shape, dtype)`` (Flax's ``carry_init``) drawn
    with ``keys()`` — first for ``c``, then for ``h``, in Flax's order."""
    c_dtype = state_dtype(dtype)
    if carry_init is None:
        return LSTMCarry(jnp.zeros(shape, dtype), jnp.zeros(shape, c_dtype))
    _checks.initializer(carry_init, "carry_init", "jax.nn.initializers.zeros")
    if keys is None:
        raise ValueError("carry_init draws random numbers: pass rngs (NNX) or rng (linen) to initialize_carry")
    c = jnp.asarray(carry_init(keys(), shape, c_dtype))
    h = jnp.asarray(carry_init(keys(), shape, dtype))
    for field, value in (("h", h), ("c", c)):
        if tuple(value.shape) != shape:
            raise ValueError(
                f"carry_init must return the shape it is given, {shape}, got {tuple(value.shape)} for {field}"
            )
    return LSTMCarry(h.astype(dtype), c.astype(c_dtype))


def zeros_carry(hidden_size: int, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> LSTMCarry:
    """An all-zero carry: ``h`` and ``c`` each of shape ``(*batch_shape, hidden_size)``; ``batch_shape`` a
    tuple of ints, or one int (``2`` means ``(2,)``); ``dtype`` a real floating one."""
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    dtype = _checks.float_dtype(dtype, "dtype")
    shape = (*_checks.batch_shape(batch_shape), hidden_size)
    return LSTMCarry(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def promote(*trees):
    """Casts every array in ``trees`` to their common float dtype (NumPy's usual promotion).

    Applied at the public entry points, so mixing e.g. bfloat16 inputs with
    float32 params computes in float32 even under
    ``jax_numpy_dtype_promotion="strict"``; a no-op when the dtypes agree.
    """
    leaves = [leaf for tree in trees for leaf in jax.tree.leaves(tree)]
    dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
    if len(dtypes) <= 1:
        return trees
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*dtypes)
    return tuple(jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), tree) for tree in trees)


def activate_gates(
    z: Float[Array, "*batch gates"], gate_fn: Activation = jax.nn.sigmoid, activation_fn: Activation = jnp.tanh
) -> Float[Array, "*batch gates"]:
    """[z_i, z_f, z_g, z_o] → [σ(z_i), σ(z_f), tanh(z_g), σ(z_o)], packed again along 4H.

    σ is ``gate_fn`` and tanh ``activation_fn`` (Keras' ``recurrent_activation``
    and ``activation``).
    """
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    return jnp.concatenate([gate_fn(z_i), gate_fn(z_f), activation_fn(z_g), gate_fn(z_o)], axis=-1)


def gates(
    params: LSTMParams,
    carry: LSTMCarry,
    x: Array,
    gate_fn: Activation = jax.nn.sigmoid,
    activation_fn: Activation = jnp.tanh,
) -> Float[Array, "*batch gates"]:
    """The activated gates [i, f, g, o] of one step, ``(*batch, 4H)`` (unchecked)."""
    z = x @ params.w_ih + carry.h @ params.w_hh
    return activate_gates(z + jnp.expand_dims(params.b, tuple(range(z.ndim - 1))), gate_fn, activation_fn)


def update(
    gates: Float[Array, "*batch gates"], c: Float[Array, "*batch hidden"], activation_fn: Activation = jnp.tanh
) -> LSTMCarry:
    """c' = f·c + i·g and h' = o·tanh(c') from the activated gates (unchecked).

    The update runs in ``c``'s dtype: with bfloat16 gates and a float32 cell
    state (mixed precision) the state keeps float32 accuracy; ``h`` comes back
    in the gates' dtype, ready for the next step's matmul.
    """
    i, f, g, o = jnp.split(gates.astype(c.dtype), 4, axis=-1)
    c = f * c + i * g
    return LSTMCarry((o * activation_fn(c)).astype(gates.dtype), c)


def state_dtype(compute_dtype) -> jnp.dtype:
    """The cell state's dtype for a computation dtype: at least float32 (bfloat16 → float32)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(compute_dtype, jnp.float32)


def split_promote(
    params: AnyParams, x: Array, carry: LSTMCarry, *more_carries: LSTMCarry | None
) -> tuple[AnyParams, Array, LSTMCarry, *tuple[LSTMCarry | None, ...]]:
    """Promotes params, inputs and the carries' ``h`` to one computation dtype.

    Each carry's ``c`` keeps its own dtype unless the computation is wider:
    a float32 cell state with bfloat16 inputs stays float32 (mixed
    precision), a bfloat16 one with float32 inputs becomes float32.
    """
    h_trees = [carry.h] + [None if m is None else m.h for m in more_carries]
    params, x, *hs = promote(params, x, *h_trees)
    with jax.numpy_dtype_promotion("standard"):
        c_dtype = jnp.promote_types(carry.c.dtype, x.dtype)
    new_carry = LSTMCarry(hs[0], carry.c.astype(c_dtype))
    more = [None if m is None else LSTMCarry(h, m.c.astype(c_dtype)) for m, h in zip(more_carries, hs[1:], strict=True)]
    return params, x, new_carry, *more


def lstm_cell(
    params: LSTMParams,
    carry: LSTMCarry,
    x: Float[Array, "*batch input"],
    *,
    gate_fn: Activation = jax.nn.sigmoid,
    activation_fn: Activation = jnp.tanh,
) -> tuple[LSTMCarry, Float[Array, "*batch hidden"]]:
    """One LSTM time step.

    Args:
        params: ``LSTMParams`` with shapes (D, 4H), (H, 4H), (4H,).
        carry: ``LSTMCarry`` whose ``h`` and ``c`` are ``(*batch, H)``.
        x: this step's input, ``(*batch, D)``; any leading batch dims.
        gate_fn: the gates' activation σ (Keras' ``recurrent_activation``,
            Flax's ``gate_fn``); elementwise.
        activation_fn: the candidate's and the cell output's activation tanh
            (Keras' ``activation``, Flax's ``activation_fn``); elementwise.

    Returns:
        ``(new_carry, h)``: the next carry (each ``(*batch, H)``) and this
        step's output ``h``, ``(*batch, H)`` (the same array as ``new_carry.h``).

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> params = jl.init_params(jax.random.key(0), input_size=3, hidden_size=5)
    >>> carry, h = jl.lstm_cell(params, jl.zeros_carry(5, (2,)), jnp.ones((2, 3)))
    >>> h.shape, carry.c.shape
    ((2, 5), (2, 5))
    """
    with jax.named_scope("jaxlstm.lstm_cell"):
        _checks.params(params)
        _checks.inputs(x, params.input_size, "x", min_rank=1)
        _checks.carry(carry, x.shape[:-1], params.hidden_size, "carry")
        _checks.activation(gate_fn, "gate_fn")
        _checks.activation(activation_fn, "activation_fn")
        params, x, carry = split_promote(params, x, carry)
        new_carry = update(gates(params, carry, x, gate_fn, activation_fn), carry.c, activation_fn)
        return new_carry, new_carry.h
