"""The GRU cell, as ``torch.nn.GRU`` and Keras' ``GRU(reset_after=True)`` compute it.

For one step with input x ``(D,)`` and carry h ``(H,)``, the gates packed in the
order r, z, n (PyTorch's) along the ``3H`` axis::

    a = x·W_ih + b_ih                 # (3H,) = [a_r, a_z, a_n]
    u = h·W_hh + b_hh                 # (3H,) = [u_r, u_z, u_n]
    r = σ(a_r + u_r)    z = σ(a_z + u_z)
    n = tanh(a_n + r ⊙ u_n)
    h' = (1 − z) ⊙ n + z ⊙ h

Two biases, as PyTorch: ``b_hh``'s third block sits inside the reset gate's
product, so it does not merge with ``b_ih``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .. import _checks
from .base import Cell

__all__ = ["GRU", "GRUParams", "torch_uniform"]


class GRUParams(NamedTuple):
    """The weights of one GRU cell (one layer, one direction), gates packed r, z, n.

    Attributes:
        w_ih: input kernel, ``(input_size, 3 * hidden_size)``.
        w_hh: recurrent kernel, ``(hidden_size, 3 * hidden_size)``.
        b_ih: input bias, ``(3 * hidden_size,)``.
        b_hh: recurrent bias, ``(3 * hidden_size,)``; its n block is multiplied by r.
    """

    w_ih: Float[Array, "input gates"]
    w_hh: Float[Array, "hidden gates"]
    b_ih: Float[Array, " gates"]
    b_hh: Float[Array, " gates"]

    @property
    def input_size(self) -> int:
        """D, the size of one step's input vector."""
        return self.w_ih.shape[-2]

    @property
    def hidden_size(self) -> int:
        """H, the size of the state vector."""
        return self.w_hh.shape[-2]


def _row(vector, like):
    """A ``(k,)`` parameter as ``(1, k)`` to meet ``like`` ``(N, k)`` without rank promotion."""
    return jnp.expand_dims(vector.astype(like.dtype), tuple(range(like.ndim - 1)))


def torch_uniform(key: PRNGKeyArray, shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32) -> Array:
    """PyTorch's GRU initialiser, the one rule of every GRU weight here: U(−1/√H, 1/√H), drawn in float32
    and cast to ``dtype``."""
    bound = 1.0 / hidden_size**0.5
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


@dataclass(frozen=True)
class GRU(Cell):
    """The GRU cell for ``jaxlstm.rnn``: 3 gates, the carry is ``h`` ``(*batch, H)``.

    ``init_params`` draws PyTorch's initialisation, U(−1/√H, 1/√H) for every
    weight and bias. The fused backward pass is written out (``backward``);
    the engine's default, the VJP of ``step``, gives the same gradients.
    """

    num_gates = 3
    input_bias = "b_ih"

    def init_params(self, key: PRNGKeyArray, input_size: int, hidden_size: int, dtype=jnp.float32) -> GRUParams:
        key = _checks.prng_key(key, "key")
        input_size = _checks.positive_int(input_size, "input_size")
        hidden_size = _checks.positive_int(hidden_size, "hidden_size")
        dtype = _checks.float_dtype(dtype, "dtype")
        shapes = ((input_size, 3 * hidden_size), (hidden_size, 3 * hidden_size), (3 * hidden_size,), (3 * hidden_size,))
        keys = jax.random.split(key, 4)
        return GRUParams(*(torch_uniform(k, s, hidden_size, dtype) for k, s in zip(keys, shapes, strict=True)))

    def check_params(self, params: GRUParams) -> None:
        gates = 3 * params.w_hh.shape[0]
        _checks.floating(params.b_hh, "params.b_hh", section="parameters")
        if tuple(params.b_hh.shape) != (gates,):
            raise ValueError(
                f"params.b_hh must have shape (3 * hidden_size,) = ({gates},), got {tuple(params.b_hh.shape)}"
            )

    def init_carry(self, params: GRUParams, batch_shape: tuple[int, ...], dtype) -> Array:
        return jnp.zeros((*batch_shape, params.w_hh.shape[0]), dtype)

    def hidden(self, carry: Array) -> Array:
        return carry

    def _gates(self, params: GRUParams, from_input, from_h):
        a_r, a_z, a_n = jnp.split(from_input, 3, axis=-1)
        u_r, u_z, u_n = jnp.split(from_h + _row(params.b_hh, from_h), 3, axis=-1)
        r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
        return r, z, jnp.tanh(a_n + r * u_n), u_n

    def step(self, params: GRUParams, from_input, from_h, carry: Array) -> Array:
        r, z, n, _ = self._gates(params, from_input, from_h)
        return (1.0 - z) * n + z * carry

    def save(self, params: GRUParams, from_input, from_h, carry: Array) -> dict:
        r, z, n, u_n = self._gates(params, from_input, from_h)
        return {"r": r, "z": z, "n": n, "u_n": u_n, "h": carry}

    def backward(self, params: GRUParams, saved: dict, d_carry: Array):
        r, z, n, u_n, h = saved["r"], saved["z"], saved["n"], saved["u_n"], saved["h"]
        d_n = d_carry * (1.0 - z) * (1.0 - n * n)
        d_z = d_carry * (h - n) * z * (1.0 - z)
        d_r = d_n * u_n * r * (1.0 - r)
        d_from_input = jnp.concatenate([d_r, d_z, d_n], axis=-1)
        d_from_h = jnp.concatenate([d_r, d_z, d_n * r], axis=-1)
        d_params = params._replace(b_hh=jnp.sum(d_from_h, axis=0).astype(params.b_hh.dtype))
        return d_params, d_from_input, d_from_h, d_carry * z
