"""flax.nnx modules for the GRU: ``GRU`` (a whole layer stack) and ``GRUCell`` (one step), as ``jl.nnx.GRU``
and ``jl.nnx.GRUCell``.

The same parameters and the same call as the linen modules (``jaxlstm.gru_linen``), both running
``jaxlstm.gru.run_gru_layers``: ``model.layer_0.w_ih`` (D, 3H), ``w_hh`` (H, 3H), ``b_ih``, ``b_hh`` (3H,),
``model.layer_0_reverse`` for the backward direction. Imports neither ``flax.linen`` nor ``jaxlstm.linen``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from . import _checks
from .cell import module_input
from .cells.gru import GRUParams
from .gru import gru_cell, run_gru_layers
from .layer import cell_name
from .stack import MERGE_MODES, merged_size

__all__ = ["GRU", "GRUCell"]


def _check_rngs(rngs) -> None:
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be an nnx.Rngs, e.g. rngs=nnx.Rngs(0), got {_checks.described(rngs)}")


def _uniform(key, shape, hidden_size: int, dtype):
    """PyTorch's GRU initialiser: U(−1/√H, 1/√H), drawn in float32 and cast."""
    bound = 1.0 / hidden_size**0.5
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


class _GRUWeights(nnx.Module):
    """One layer and direction's ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (and a learned ``h0``)."""

    def __init__(self, in_features: int, features: int, *, param_dtype, learn_initial_carry: bool, rngs: nnx.Rngs):
        _check_rngs(rngs)
        gates = 3 * features
        self.w_ih = nnx.Param(_uniform(rngs.params(), (in_features, gates), features, param_dtype))
        self.w_hh = nnx.Param(_uniform(rngs.params(), (features, gates), features, param_dtype))
        self.b_ih = nnx.Param(_uniform(rngs.params(), (gates,), features, param_dtype))
        self.b_hh = nnx.Param(_uniform(rngs.params(), (gates,), features, param_dtype))
        if learn_initial_carry:
            self.h0 = nnx.Param(jnp.zeros((features,), param_dtype))

    @property
    def params(self) -> GRUParams:
        return GRUParams(self.w_ih[...], self.w_hh[...], self.b_ih[...], self.b_hh[...])


class GRUCell(_GRUWeights):
    """One GRU step as an NNX module; a drop-in for ``flax.nnx.GRUCell`` inside ``flax.nnx.RNN``.

    Args:
        in_features: D. hidden_features: H (Flax's name).
        dtype: computation dtype (``None``: the params'). param_dtype: parameter dtype.
        carry_init: the initializer of ``initialize_carry`` (zeros by default).
        rngs: ``nnx.Rngs`` for the parameters.

    Call ``cell(h, x)``, ``h`` ``(*batch, H)``, ``x`` ``(*batch, D)`` → ``(new_h, new_h)``.

    >>> import jax.numpy as jnp, jaxlstm as jl
    >>> from flax import nnx
    >>> cell = jl.nnx.GRUCell(in_features=3, hidden_features=4, rngs=nnx.Rngs(0))
    >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 4)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Any = None,
        rngs: nnx.Rngs,
    ):
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.hidden_features = _checks.positive_int(hidden_features, "hidden_features")
        dtype = _checks.float_dtype(dtype, "dtype", allow_none=True)
        param_dtype = _checks.float_dtype(param_dtype, "param_dtype")
        super().__init__(
            self.in_features, self.hidden_features, param_dtype=param_dtype, learn_initial_carry=False, rngs=rngs
        )
        self.dtype, self.param_dtype = dtype, param_dtype
        self.carry_init = carry_init

    def __call__(self, carry: Float[Array, "*batch hidden"], x: Float[Array, "*batch input"]):
        module_input(x, "x")
        params = self.params
        dtype = params.w_hh.dtype if self.dtype is None else self.dtype
        params = GRUParams(*(a.astype(dtype) for a in params))
        new = gru_cell(params, jnp.asarray(carry, dtype), jnp.asarray(x, dtype))[0]
        return new, new

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | None = None) -> Array:
        """The initial ``h`` ``(*batch, H)`` for inputs ``(*batch, D)``: zeros, or ``carry_init``'s."""
        shape = (*tuple(input_shape)[:-1], self.hidden_features)
        if self.carry_init is None:
            return jnp.zeros(shape, self.param_dtype)
        key = rngs.carry() if isinstance(rngs, nnx.Rngs) else jax.random.key(0)
        return self.carry_init(key, shape, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class GRU(nnx.Module):
    """A GRU layer, or a stack of them, over whole sequences (batch-first): ``jl.GRU`` in NNX.

    Args:
        in_features: D. features: H.
        num_layers, bidirectional, merge, return_sequences, return_carry, dropout, dtype, param_dtype,
            unroll, reverse, masked_output, gradient, learn_initial_carry, checkpoint_every: as ``jl.GRU``.
        deterministic: the default of calls (``False``: dropout while training, as NNX's ``Dropout``).
        rngs: ``nnx.Rngs`` for the parameters, and its ``'dropout'`` stream for dropout.

    >>> import jax.numpy as jnp, jaxlstm as jl
    >>> from flax import nnx
    >>> layer = jl.nnx.GRU(8, 16, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 10, 8))).shape              # (batch, time, 2H)
    (4, 10, 32)
    >>> layer.layer_1_reverse.w_ih.shape               # layer 1 reads 2H
    (32, 48)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        merge: str = "concat",
        return_sequences: bool = True,
        return_carry: bool = False,
        dropout: float = 0.0,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        unroll: int = 1,
        reverse: bool = False,
        masked_output: str = "zeros",
        gradient: str = "fused",
        learn_initial_carry: bool = False,
        checkpoint_every: int | None = None,
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ):
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.features = _checks.positive_int(features, "features")
        self.num_layers = _checks.positive_int(num_layers, "num_layers")
        self.merge = _checks.one_of(merge, MERGE_MODES, "merge")
        self.dropout = _checks.rate(dropout, "dropout")
        self.bidirectional = _checks.flag(bidirectional, "bidirectional")
        self.return_sequences = _checks.flag(return_sequences, "return_sequences")
        self.return_carry = _checks.flag(return_carry, "return_carry")
        self.reverse = _checks.flag(reverse, "reverse")
        self.learn_initial_carry = _checks.flag(learn_initial_carry, "learn_initial_carry")
        self.deterministic = _checks.flag(deterministic, "deterministic")
        if self.reverse and self.bidirectional:
            raise ValueError("reverse=True is for one-direction layers; a bidirectional layer already reads backward")
        self.dtype = _checks.float_dtype(dtype, "dtype", allow_none=True)
        self.param_dtype = _checks.float_dtype(param_dtype, "param_dtype")
        self.unroll = unroll
        self.masked_output, self.gradient, self.checkpoint_every = masked_output, gradient, checkpoint_every
        directions = 2 if self.bidirectional else 1
        width = merged_size(self.features, directions, self.merge)
        for layer in range(self.num_layers):
            for direction in range(directions):
                weights = _GRUWeights(
                    self.in_features if layer == 0 else width,
                    self.features,
                    param_dtype=param_dtype,
                    learn_initial_carry=self.learn_initial_carry,
                    rngs=rngs,
                )
                setattr(self, cell_name(layer, direction), weights)
        has_stream = "dropout" in rngs
        self.rngs = nnx.data(rngs["dropout"].fork() if self.dropout > 0.0 and has_stream else None)

    def _cells(self) -> list[list[_GRUWeights]]:
        directions = 2 if self.bidirectional else 1
        return [[getattr(self, cell_name(l, d)) for d in range(directions)] for l in range(self.num_layers)]

    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        seq_lengths: Int[Array, "*batch"] | None = None,
        mask: Bool[Array, "*batch time"] | None = None,
        resets: Bool[Array, "*batch time"] | None = None,
        initial_carry=None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | None = None,
    ):
        """Runs the layer (or stack): ``(*batch, T, D)`` → ``(*batch, T, F)`` (or ``(*batch, F)``)."""
        _checks.inputs(x, self.in_features, "x", min_rank=2, layout="(*batch, time, input)", allow_integers=True)
        deterministic = self.deterministic if deterministic is None else _checks.flag(deterministic, "deterministic")
        key = None
        if not deterministic and self.dropout > 0.0 and self.num_layers > 1:
            if isinstance(rngs, nnx.Rngs) and "dropout" in rngs:
                key = rngs.dropout()
            elif self.rngs is not None:
                key = self.rngs()
            else:
                raise ValueError(
                    "dropout > 0 while training needs a 'dropout' stream: build with "
                    "rngs=nnx.Rngs(0, dropout=1), call with rngs=, or call with deterministic=True"
                )
        cells = self._cells()
        learned = tuple(tuple(cell.h0[...] for cell in row) for row in cells) if self.learn_initial_carry else None
        return run_gru_layers(
            self,
            tuple(tuple(cell.params for cell in row) for row in cells),
            x,
            learned_h0=learned,
            initial_carry=initial_carry,
            dropout_key=key,
            seq_lengths=seq_lengths,
            mask=mask,
            resets=resets,
        )
