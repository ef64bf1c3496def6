"""cuDNN's weight and carry layouts: jaxlstm's ``StackParams`` and ``StackCarry`` in ``jax.experimental.rnn``'s, exactly, both ways.

For each layer and direction (forward of layer l, then backward of layer l)
cuDNN's flat float32 vector holds W_ih (4H, D_in) and W_hh (4H, H), i.e.
``w_ih.T`` and ``w_hh.T``, gates i, f, g, o as jaxlstm's; then every b_ih and
b_hh. jaxlstm has one bias: b_ih = b and b_hh = −0.0, IEEE's exact additive
identity, so ``from_cudnn``'s b = b_ih + b_hh gives every b back bit for bit
(−0.0 included). Carries are ``(layers·directions, *batch, H)`` h_0 and c_0.
``jaxlstm.cudnn`` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._types import LSTMCarry, LSTMParams

if TYPE_CHECKING:  # cuDNN runs plain cells only; a plain variant's VariantParams has the same w_ih, w_hh, b
    from .variants import VariantParams

__all__ = ["num_weights", "to_cudnn", "from_cudnn", "carries_to_cudnn", "carries_from_cudnn"]


def num_weights(input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False) -> int:
    """The length of cuDNN's flat weight vector (``jax.experimental.rnn.get_num_params_in_lstm``)."""
    directions = 2 if bidirectional else 1
    gates = 4 * hidden_size
    later_input = directions * hidden_size
    per_direction = [
        gates * ((input_size if layer == 0 else later_input) + hidden_size + 2) for layer in range(num_layers)
    ]
    return directions * sum(per_direction)


def to_cudnn(stack: Sequence[Sequence[LSTMParams | VariantParams]]) -> Float[Array, " weights"]:
    """``StackParams`` ``[layer][direction]`` → cuDNN's flat weight vector, exactly.

    Layer l > 0 must read the concatenated directions (F = 2H bidirectional,
    H otherwise), as cuDNN's stack does. The dtype is the parameters' (cuDNN
    takes float32).

    >>> import numpy as np, jaxlstm as jl
    >>> cell = jl.LSTMParams(np.zeros((3, 20), np.float32), np.zeros((5, 20), np.float32), np.ones(20, np.float32))
    >>> w = jl.cudnn.to_cudnn(((cell,),))                 # one layer, one direction: D = 3, H = 5
    >>> w.shape, float(w[-40:-20].sum()), float(w[-1])   # (4H·D + 4H·H + 2·4H,), b_ih = b, b_hh = −0.0
    ((200,), 20.0, -0.0)
    """
    linear, biases = [], []
    for directions in stack:
        for params in directions:
            linear += [params.w_ih.T.reshape(-1), params.w_hh.T.reshape(-1)]
            biases += [params.b, jnp.full_like(params.b, -0.0)]  # b_hh = −0.0: b_ih + b_hh == b_ih, bit for bit
    return jnp.concatenate(linear + biases)


def from_cudnn(
    weights: Float[Array, " weights"],
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> tuple[tuple[LSTMParams, ...], ...]:
    """cuDNN's flat weight vector → ``StackParams`` ``[layer][direction]``: w_ih = W_ihᵀ, w_hh = W_hhᵀ, b = b_ih + b_hh.

    ``weights`` is ``(num_weights(input_size, hidden_size, num_layers, bidirectional),)``, e.g. from
    ``jax.experimental.rnn.init_lstm_weight`` or from ``to_cudnn`` (whose round trip is exact).
    """
    expected = num_weights(input_size, hidden_size, num_layers, bidirectional)
    if getattr(weights, "shape", None) != (expected,):
        raise ValueError(
            f"weights must be cuDNN's flat vector of shape ({expected},) for input_size={input_size}, "
            f"hidden_size={hidden_size}, num_layers={num_layers}, bidirectional={bidirectional}, "
            f"got {getattr(weights, 'shape', type(weights).__name__)}; "
            "see docs/gpu.md#weights (jaxlstm docs gpu#weights)"
        )
    directions = 2 if bidirectional else 1
    gates, offset = 4 * hidden_size, 0

    def take(size: int):
        nonlocal offset
        offset += size
        return weights[offset - size : offset]

    kernels = []
    for layer in range(num_layers):
        width = input_size if layer == 0 else directions * hidden_size
        for _ in range(directions):
            w_ih = take(gates * width).reshape(gates, width).T
            kernels.append((w_ih, take(gates * hidden_size).reshape(gates, hidden_size).T))
    cells = [LSTMParams(w_ih, w_hh, take(gates) + take(gates)) for w_ih, w_hh in kernels]
    return tuple(tuple(cells[layer * directions : (layer + 1) * directions]) for layer in range(num_layers))


def carries_to_cudnn(carries) -> tuple[Float[Array, "cells *batch hidden"], Float[Array, "cells *batch hidden"]]:
    """``StackCarry`` ``[layer][direction]`` → cuDNN's ``(h_0, c_0)``, each ``(layers·directions, *batch, H)``."""
    cells = [carry for directions in carries for carry in directions]
    return jnp.stack([carry.h for carry in cells]), jnp.stack([carry.c for carry in cells])


def carries_from_cudnn(
    h: Float[Array, "cells *batch hidden"], c: Float[Array, "cells *batch hidden"], bidirectional: bool = False
) -> tuple[tuple[LSTMCarry, ...], ...]:
    """cuDNN's ``(h_n, c_n)``, each ``(layers·directions, *batch, H)`` → ``StackCarry`` ``[layer][direction]``."""
    directions = 2 if bidirectional else 1
    return tuple(
        tuple(LSTMCarry(h[cell], c[cell]) for cell in range(layer, layer + directions))
        for layer in range(0, h.shape[0], directions)
    )
