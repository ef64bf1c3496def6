"""flax.linen modules for the GRU: ``GRU`` (a whole layer stack) and ``GRUCell`` (one step).

Thin wrappers, as ``jaxlstm.linen``'s: they create the parameters and call the
functional core (``jaxlstm.stacked_rnn`` with ``jaxlstm.cells.GRU``,
``jaxlstm.gru_cell``). Parameter names follow PyTorch's: ``params["layer_0"]``
holds the first layer's forward ``w_ih`` (D, 3H), ``w_hh`` (H, 3H), ``b_ih`` and
``b_hh`` (3H,), gates packed r, z, n; ``params["layer_0_reverse"]`` its backward
direction.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _checks
from .cell import module_input
from .cells.gru import GRUParams, torch_uniform
from .gru import gru_cell
from .gru_layer import run_module, shared_config
from .layer import RecurrentLayerFields, cast, cell_name, dropout_key
from .options import check_call_data, takes_call_data
from .rnn_stack import merged_size

__all__ = ["GRU", "GRUCell"]


def _weights(module: nn.Module, input_size: int, features: int, param_dtype) -> GRUParams:
    def init(key, shape, dtype=jnp.float32):
        return torch_uniform(key, shape, features, dtype)

    return GRUParams(
        module.param("w_ih", init, (input_size, 3 * features), param_dtype),
        module.param("w_hh", init, (features, 3 * features), param_dtype),
        module.param("b_ih", init, (3 * features,), param_dtype),
        module.param("b_hh", init, (3 * features,), param_dtype),
    )


class GRUCell(nn.RNNCellBase):
    """One GRU step as a linen module; a drop-in for ``flax.linen.GRUCell`` inside ``nn.RNN``.

    PyTorch's equations and gate order r, z, n (docs/cells.md#the-gru), which
    are Flax's ``GRUCell``'s too; its weights are packed ``w_ih`` (D, 3H),
    ``w_hh`` (H, 3H), ``b_ih`` and ``b_hh`` (3H,), drawn as PyTorch draws them.

    Attributes:
        features: H, the size of the state vector.
        dtype: computation dtype (``None``: the wider of the input's and the params').
        param_dtype: parameter dtype.
        carry_init: Flax's carry initializer for ``initialize_carry``.

    Call ``cell(h, x)`` with ``h`` ``(*batch, H)`` and ``x`` ``(*batch, D)``;
    returns ``(new_h, new_h)``.

    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxlstm as jl
    >>> rnn = nn.RNN(jl.GRUCell(features=16))
    >>> variables = rnn.init(jax.random.key(0), jnp.ones((4, 10, 8)))
    >>> rnn.apply(variables, jnp.ones((4, 10, 8))).shape
    (4, 10, 16)
    """

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, carry: Float[Array, "*batch hidden"], inputs: Float[Array, "*batch input"]):
        features = _checks.positive_int(self.features, "features")
        _checks.float_dtype(self.dtype, "dtype", allow_none=True)
        _checks.float_dtype(self.param_dtype, "param_dtype")
        module_input(inputs, "inputs")
        params = _weights(self, inputs.shape[-1], features, self.param_dtype)
        params, inputs = cast(params, inputs, self.dtype)
        new = gru_cell(params, carry.astype(inputs.dtype), inputs)[0]
        return new, new

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]) -> Array:
        """The initial ``h`` ``(*batch, H)`` for inputs of shape ``(*batch, D)``."""
        return self.carry_init(rng, (*input_shape[:-1], self.features), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class _Weights(nn.Module):
    """One layer and direction's parameters (and its learned initial ``h0``)."""

    features: int
    param_dtype: Any
    learn_initial_carry: bool

    @nn.compact
    def weights(self, input_size: int):
        """``(GRUParams, h0 or None)`` for ``input_size`` D, created on first use (a method, not
        ``__call__``, so that ``jl.summary`` lists the layer, not its weights, as ``jl.LSTM``'s)."""
        params = _weights(self, input_size, self.features, self.param_dtype)
        h0 = None
        if self.learn_initial_carry:
            h0 = self.param("h0", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        return params, h0


class GRU(RecurrentLayerFields, nn.Module):
    """A GRU layer, or a stack of them, over whole sequences (batch-first), as ``jl.LSTM`` for the LSTM.

    There is one cell per layer and direction, applied to every time step; ``features`` is the size H of
    its state vector.

    Its fields are the options of ``jaxlstm.layer.RecurrentLayerFields`` (``features``, ``num_layers``,
    ``bidirectional``, ``merge``, ``dropout``, ``dtype``, ``learn_initial_carry``, ``stateful`` and the
    sequence options), declared and documented there once, as ``jl.LSTM`` inherits them: the final carries
    are nested ``[layer][direction]`` → ``h`` ``(*batch, H)``. With ``stateful=True`` they are kept in
    the variable collection ``"carry"`` (``variables["carry"]["state"]``):
    ``y, state = layer.apply(variables, chunk, mutable=["carry"])``, then ``variables = {**variables,
    **state}``; resets restart from the learned ``h0`` or zeros.

    Options are checked as ``jl.LSTM`` checks them (``jaxlstm.layer.LayerConfig``), with the same errors.

    Call with ``x`` ``(*batch, T, D)``, optional ``seq_lengths`` ``(*batch,)``, ``mask`` and ``resets``
    ``(*batch, T)``, ``initial_carry`` nested ``[layer][direction]``, and ``deterministic`` (default
    ``True``; ``False`` with a ``'dropout'`` rng trains with dropout), as ``jl.LSTM``.

    >>> import jax, jax.numpy as jnp, jaxlstm as jl
    >>> layer = jl.GRU(features=16, num_layers=2, bidirectional=True)
    >>> x = jnp.ones((4, 10, 8))                       # (batch, time, input)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> layer.apply(variables, x).shape                # (batch, time, 2H)
    (4, 10, 32)
    >>> jax.tree.map(jnp.shape, variables["params"]["layer_1_reverse"])
    {'b_hh': (48,), 'b_ih': (48,), 'w_hh': (16, 48), 'w_ih': (32, 48)}
    """

    def __post_init__(self):
        super().__post_init__()
        shared_config(self)  # a bad option fails where the module is built, with jl.LSTM's message

    @nn.compact
    @takes_call_data
    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        initial_carry=None,
        deterministic: bool = True,
        **data: Any,
    ):
        """Runs the layer (or stack): ``(*batch, T, D)`` → ``(*batch, T, F)`` (or ``(*batch, F)``)."""
        _checks.inputs(x, None, "x", min_rank=2, layout="(*batch, time, input)", allow_integers=True)
        num_directions = 2 if self.bidirectional else 1
        width = merged_size(self.features, num_directions, self.merge)
        cells = [
            [
                _Weights(
                    self.features, self.param_dtype, self.learn_initial_carry, name=cell_name(layer, direction)
                ).weights(x.shape[-1] if layer == 0 else width)
                for direction in range(num_directions)
            ]
            for layer in range(self.num_layers)
        ]
        stack = tuple(tuple(params for params, _ in row) for row in cells)
        learned = tuple(tuple(h0 for _, h0 in row) for row in cells) if self.learn_initial_carry else None
        key = dropout_key(
            shared_config(self), deterministic, lambda: self.make_rng("dropout") if self.has_rng("dropout") else None
        )
        stored = None
        if self.stateful and self.has_variable("carry", "state"):
            stored = self.get_variable("carry", "state")
        carries, result = run_module(
            self,
            stack,
            x,
            stored,
            learned_h0=learned,
            initial_carry=initial_carry,
            dropout_key=key,
            **check_call_data(data, "jl.GRU"),
        )
        if self.stateful and not self.is_initializing() and self.is_mutable_collection("carry"):
            self.put_variable("carry", "state", carries)
        return result
