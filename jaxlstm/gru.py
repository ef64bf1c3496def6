"""The GRU's functional API: ``gru`` over whole sequences and ``gru_cell`` for one step.

Both are the GRU cell (``jaxlstm.cells.GRU``, PyTorch's equations and gate order
r, z, n) run by the engine (``jaxlstm.rnn``): every sequence option, the fused
gradient and the checks are the engine's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from .cell import promote
from .cells.gru import GRU, GRUParams
from .engine import check_cell_params, rnn

__all__ = ["gru", "gru_cell", "init_gru_params"]


def init_gru_params(key: PRNGKeyArray, input_size: int, hidden_size: int, dtype=jnp.float32) -> GRUParams:
    """A GRU cell's weights as PyTorch draws them: every entry U(−1/√H, 1/√H).

    Returns ``GRUParams``: ``w_ih`` ``(D, 3H)``, ``w_hh`` ``(H, 3H)``, ``b_ih`` and ``b_hh`` ``(3H,)``.

    >>> import jax, jaxlstm as jl
    >>> p = jl.init_gru_params(jax.random.key(0), input_size=8, hidden_size=16)
    >>> p.w_ih.shape, p.w_hh.shape, p.b_ih.shape, p.b_hh.shape
    ((8, 48), (16, 48), (48,), (48,))
    """
    return GRU().init_params(key, input_size, hidden_size, dtype)


def gru(
    params: GRUParams,
    xs: Float[Array, "*batch time input"],
    carry: Float[Array, "*batch hidden"] | None = None,
    **options,
) -> tuple[Float[Array, "*batch hidden"], Float[Array, "*batch time hidden"]]:
    """Runs one GRU layer (one direction) over whole sequences.

    Args:
        params: ``GRUParams`` (``init_gru_params``): ``(D, 3H)``, ``(H, 3H)``, ``(3H,)``, ``(3H,)``.
        xs: inputs ``(*batch, T, D)``, batch-first.
        carry: the initial ``h`` ``(*batch, H)``; zeros when ``None``.
        **options: the sequence options of ``jaxlstm.SequenceOptions`` (``seq_lengths``, ``mask``,
            ``resets``, ``reverse``, ``gradient``, ``checkpoint_every``, ...), as ``jaxlstm.rnn``.

    Returns:
        ``(final_h, hs)``: ``final_h`` ``(*batch, H)`` after each sequence's own last valid step,
        ``hs`` ``(*batch, T, H)``. One cell applied T times; H is the size of its state vector.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> p = jl.init_gru_params(jax.random.key(0), input_size=8, hidden_size=16)
    >>> final, hs = jl.gru(p, jnp.ones((4, 10, 8)), seq_lengths=jnp.array([10, 7, 3, 0]))
    >>> hs.shape, final.shape
    ((4, 10, 16), (4, 16))
    """
    if not isinstance(params, GRUParams):
        raise TypeError(
            f"params must be a jaxlstm.GRUParams(w_ih, w_hh, b_ih, b_hh) (jaxlstm.init_gru_params), "
            f"got {type(params).__name__}"
        )
    return rnn(GRU(), params, xs, carry, **options)


def gru_cell(
    params: GRUParams, carry: Float[Array, "*batch hidden"], x: Float[Array, "*batch input"]
) -> tuple[Float[Array, "*batch hidden"], Float[Array, "*batch hidden"]]:
    """One GRU step: ``(new_h, new_h)``, as ``jaxlstm.lstm_cell`` returns ``(new_carry, h)``.

    Args:
        params: ``GRUParams``.
        carry: ``h`` ``(*batch, H)``.
        x: ``(*batch, D)``.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> p = jl.init_gru_params(jax.random.key(0), 3, 5)
    >>> h, out = jl.gru_cell(p, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    if not isinstance(params, GRUParams):
        raise TypeError(f"params must be a jaxlstm.GRUParams, got {type(params).__name__}")
    check_cell_params(GRU(), params)
    _checks.inputs(x, params.input_size, "x", min_rank=1)
    _checks.floating(carry, "carry", section="carry")
    if tuple(carry.shape) != (*x.shape[:-1], params.hidden_size):
        raise ValueError(
            f"carry must have shape (*batch, hidden_size) = {(*x.shape[:-1], params.hidden_size)}, "
            f"got {tuple(carry.shape)}"
        )
    with jax.named_scope("jaxlstm.gru_cell"):
        params, x, carry = promote(params, x, carry)
        cell = GRU()
        from_input = x @ params.w_ih + jnp.expand_dims(params.b_ih, tuple(range(x.ndim - 1)))
        new = cell.step(params._replace(w_ih=None, w_hh=None, b_ih=None), from_input, carry @ params.w_hh, carry)
        return new, new
