"""flax.nnx modules for the GRU: ``GRU`` (a whole layer stack) and ``GRUCell`` (one step), as ``jl.nnx.GRU``
and ``jl.nnx.GRUCell``.

The same parameters and the same call as the linen modules (``jaxlstm.gru_linen``), both running
``jaxlstm.gru_layer.run_module``: ``model.layer_0.w_ih`` (D, 3H), ``w_hh`` (H, 3H), ``b_ih``, ``b_hh`` (3H,),
``model.layer_0_reverse`` for the backward direction. Imports neither ``jaxlstm.linen`` nor ``jaxlstm.gru_linen``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from . import _checks
from .cell import module_input
from .cells.gru import GRUParams, torch_uniform
from .gru import gru_cell
from .gru_layer import SHARED_OPTIONS, run_module, shared_config
from .layer import LayerConfig, cell_name, computation_dtype, draws_masks, dropout_key
from .nnx_layer import Carry as Carry
from .nnx_layer import call_dropout_key, check_rngs, dropout_stream, reset_kept_carry
from .options import check_call_data, takes_call_data
from .rnn_stack import merged_size

__all__ = ["GRU", "GRUCell", "Carry"]


class _GRUWeights(nnx.Module):
    """One layer and direction's ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (and a learned ``h0``)."""

    def __init__(self, in_features: int, features: int, *, param_dtype, learn_initial_carry: bool, rngs: nnx.Rngs):
        check_rngs(rngs)
        gates = 3 * features
        self.w_ih = nnx.Param(torch_uniform(rngs.params(), (in_features, gates), features, param_dtype))
        self.w_hh = nnx.Param(torch_uniform(rngs.params(), (features, gates), features, param_dtype))
        self.b_ih = nnx.Param(torch_uniform(rngs.params(), (gates,), features, param_dtype))
        self.b_hh = nnx.Param(torch_uniform(rngs.params(), (gates,), features, param_dtype))
        if learn_initial_carry:
            self.h0 = nnx.Param(jnp.zeros((features,), param_dtype))

    @property
    def params(self) -> GRUParams:
        return GRUParams(self.w_ih[...], self.w_hh[...], self.b_ih[...], self.b_hh[...])


class GRUCell(_GRUWeights):
    """One GRU step as an NNX module; a drop-in for ``flax.nnx.GRUCell`` inside ``flax.nnx.RNN``.

    Args:
        in_features: D. hidden_features: H (Flax's name).
        dtype: computation dtype (``None``: the wider of the input's and the params'). param_dtype: parameter dtype.
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
        dtype = computation_dtype(self.dtype, x, params.w_hh.dtype)
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
        **options: the other options of ``jaxlstm.layer.RecurrentLayerFields`` (``num_layers``,
            ``bidirectional``, ``merge``, ``dropout``, ``dtype``, ``stateful``, the sequence options, ...),
            as ``jl.GRU``, checked as ``jl.nnx.LSTM`` checks them (``jaxlstm.layer.LayerConfig``). Each is
            kept as an attribute of the same name, read at every call. ``stateful=True`` keeps the final carries
            in ``model.carry`` (a ``Carry``: ``[layer][direction]`` → ``h`` ``(*batch, H)``, read with
            ``model.carry[...]``), as ``jl.nnx.LSTM``: ``model.reset_carry()`` starts afresh,
            ``reset_carry(batch_shape)`` puts the initial carry in place, ``reset_carry(rows=...)`` or
            ``resets[:, 0] = True`` restarts some rows.
        deterministic: the default of calls (``False``: dropout while training, as NNX's ``Dropout``;
            ``model.eval()`` and ``model.train()`` set it).
        rngs: ``nnx.Rngs`` for the parameters, and its ``'dropout'`` stream (else ``'default'``) for dropout.

    Call with ``x`` ``(*batch, T, D)``, optional ``seq_lengths`` ``(*batch,)``, ``mask`` and ``resets``
    ``(*batch, T)``, ``initial_carry`` nested ``[layer][direction]`` → ``(*batch, H)``, ``deterministic`` and
    ``rngs`` (an ``nnx.Rngs`` or a key, for this call's dropout masks), as ``jl.nnx.LSTM``.

    >>> import jax.numpy as jnp, jaxlstm as jl
    >>> from flax import nnx
    >>> layer = jl.nnx.GRU(8, 16, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 10, 8))).shape              # (batch, time, 2H)
    (4, 10, 32)
    >>> layer.layer_1_reverse.w_ih.shape               # layer 1 reads 2H
    (32, 48)
    """

    if TYPE_CHECKING:  # __init__ sets the options (num_layers, ...) and the cells (layer_0, ...) by name

        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, in_features: int, features: int, *, deterministic: bool = False, rngs: nnx.Rngs, **options):
        unknown = sorted(set(options) - set(SHARED_OPTIONS))
        if unknown:
            raise TypeError(
                f"jl.nnx.GRU got an unexpected keyword argument {unknown[0]!r}; its options are "
                f"{', '.join(SHARED_OPTIONS)} (jaxlstm.layer.RecurrentLayerFields)"
            )
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.features = _checks.positive_int(features, "features")
        config = LayerConfig(self.features, **options)  # checked as jl.nnx.LSTM checks them
        for name in SHARED_OPTIONS:
            setattr(self, name, getattr(config, name))
        self.deterministic = _checks.flag(deterministic, "deterministic")
        check_rngs(rngs)
        if config.stateful:  # only a stateful layer keeps a carry (none in nnx.state or checkpoints otherwise)
            self.carry = Carry(None)
        width = merged_size(self.features, config.num_directions, config.merge)
        for layer in range(config.num_layers):
            for direction in range(config.num_directions):
                weights = _GRUWeights(
                    self.in_features if layer == 0 else width,
                    self.features,
                    param_dtype=config.param_dtype,
                    learn_initial_carry=config.learn_initial_carry,
                    rngs=rngs,
                )
                setattr(self, cell_name(layer, direction), weights)
        may_draw = draws_masks(config, deterministic=False)
        self.rngs = dropout_stream(rngs, may_draw)

    def _cells(self) -> list[list[_GRUWeights]]:
        directions = 2 if self.bidirectional else 1
        return [[getattr(self, cell_name(l, d)) for d in range(directions)] for l in range(self.num_layers)]

    def _learned(self):
        """The learned ``h0`` (H,) per layer and direction (``learn_initial_carry``), else ``None``."""
        return tuple(tuple(cell.h0[...] for cell in row) for row in self._cells()) if self.learn_initial_carry else None

    def reset_carry(self, batch_shape: int | tuple[int, ...] | None = None, *, rows=None) -> None:
        """Restarts the carry kept by ``stateful=True``, as ``jl.nnx.LSTM.reset_carry``.

        Args:
            batch_shape: ``None`` (default): forget the carry, the next call starts afresh. A shape
                ``(*batch,)`` (or one int): put the initial carry for that batch in place now (zeros, or
                the learned ``h0``), ``[layer][direction]`` → ``(*batch, H)``: what ``nnx.scan`` over
                chunks and restoring a checkpoint into a fresh model need.
            rows: optional ``(*batch,)`` bools: restart only these rows of the kept carry.
        """

        def fresh(batch_shape):
            dtype = self.layer_0.w_hh[...].dtype if self.dtype is None else jnp.dtype(self.dtype)
            learned = self._learned() or tuple(tuple(jnp.zeros((self.features,)) for _ in row) for row in self._cells())
            return jax.tree.map(lambda h0: jnp.broadcast_to(h0.astype(dtype), (*batch_shape, self.features)), learned)

        reset_kept_carry(self, self.stateful, batch_shape, rows, fresh)

    @takes_call_data
    def __call__(
        self,
        x: Float[Array, "*batch time input"],
        *,
        initial_carry=None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
        **data: Any,
    ):
        """Runs the layer (or stack): ``(*batch, T, D)`` → ``(*batch, T, F)`` (or ``(*batch, F)``); a stateful
        layer starts from ``model.carry`` (unless ``initial_carry`` is given) and keeps its final carries there."""
        _checks.inputs(x, self.in_features, "x", min_rank=2, layout="(*batch, time, input)", allow_integers=True)
        config = shared_config(self)
        deterministic = self.deterministic if deterministic is None else deterministic
        key = dropout_key(config, deterministic, lambda: call_dropout_key(rngs, self.rngs))
        stack = tuple(tuple(cell.params for cell in row) for row in self._cells())
        if config.stateful and not hasattr(self, "carry"):  # made stateful after construction
            self.carry = Carry(None)
        carries, result = run_module(
            self,
            stack,
            x,
            self.carry.get_value() if config.stateful else None,
            learned_h0=self._learned(),
            initial_carry=initial_carry,
            dropout_key=key,
            **check_call_data(data, "jl.nnx.GRU"),
        )
        if config.stateful:
            self.carry.set_value(carries)
        return result
