"""The GRU layer that both Flax modules are (``jl.GRU``, ``jl.nnx.GRU``), without Flax: its options, checks and call.

As ``jaxlstm.layer`` for the LSTM: ``jaxlstm.gru_linen`` and ``jaxlstm.gru_nnx`` hold the parameters,
carries and randomness; this module is the rest, once:

* ``SHARED_OPTIONS`` and ``shared_config``: the GRU layer's options (``jaxlstm.layer.RecurrentLayerFields``),
  validated by the LSTM layer's own rules (``jaxlstm.layer.LayerConfig``);
* ``LAYER_OPTIONS``: those its call reads;
* ``run_module`` and ``run_gru_layers``: the call, from the module's stack of ``GRUParams`` and carries
  to ``jaxlstm.stacked_rnn`` with ``jaxlstm.cells.GRU`` and back.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp

from .cells.gru import GRU
from .engine import SequenceSettings
from .layer import LayerConfig, RecurrentLayerFields, check_stateful_carry, computation_dtype
from .options import StackSettings, option_names
from .rnn_stack import merge_directions, stacked_rnn

__all__ = ["SHARED_OPTIONS", "LAYER_OPTIONS", "shared_config", "run_module", "run_gru_layers"]


# The GRU layer's options: a recurrent layer's (jaxlstm.layer.RecurrentLayerFields, declared there), validated
# by the LSTM's own rules (jaxlstm.layer.LayerConfig).
SHARED_OPTIONS = tuple(name for name in RecurrentLayerFields.__dataclass_fields__ if name != "features")


def shared_config(module) -> LayerConfig:
    """The ``LayerConfig`` of a GRU module's options that the LSTM has too (checked as ``jl.LSTM`` checks them:
    the same errors, stateful with bidirectional or reverse refused)."""
    return LayerConfig(module.features, **{name: getattr(module, name) for name in SHARED_OPTIONS})


def run_module(layer, stack, x, stored, *, learned_h0, initial_carry, dropout_key, **data):
    """The call of ``jl.GRU`` and ``jl.nnx.GRU`` (Flax-free): ``run_gru_layers`` with the computation dtype
    of ``computation_dtype``; returns ``(final_carries, result)``, the carries for a stateful module to keep.

    It starts from ``initial_carry`` if given, else from ``stored`` (the carry a stateful module kept from
    its last call, ``[layer][direction]`` → ``h`` ``(*batch, H)``), else from the learned ``h0`` (H,) or
    zeros; resets restart from ``initial_carry`` if given, else from the learned ``h0`` or zeros (never
    from the stored carry), as ``jaxlstm.layer.start_carries`` for the LSTM."""
    options = SimpleNamespace(**{name: getattr(layer, name) for name in LAYER_OPTIONS})
    options.dtype = computation_dtype(layer.dtype, x, jax.tree.leaves(stack)[0].dtype)
    options.return_carry = True
    if initial_carry is None and stored is not None:
        batch_shape = tuple(x.shape[:-2])
        check_stateful_carry(stored, batch_shape)
        zeros = tuple(tuple(jnp.zeros((layer.features,)) for _ in row) for row in stack)
        data["reset_carries"] = tuple(
            tuple(jnp.broadcast_to(jnp.asarray(h0, options.dtype), (*batch_shape, layer.features)) for h0 in row)
            for row in (zeros if learned_h0 is None else learned_h0)
        )
        initial_carry = stored
    finals, output = run_gru_layers(
        options, stack, x, learned_h0=learned_h0, initial_carry=initial_carry, dropout_key=dropout_key, **data
    )
    return finals, ((finals, output) if layer.return_carry else output)


# The GRU modules' options that their call reads, under the same names in linen and NNX: the stack's settings
# (declared in jaxlstm.options.StackSettings and jaxlstm.engine.SequenceSettings) and the layer's output options.
LAYER_OPTIONS = (*option_names(StackSettings), *option_names(SequenceSettings))
LAYER_OPTIONS += ("return_sequences", "return_carry", "dtype")


def run_gru_layers(layer, stack, x, *, learned_h0=None, initial_carry=None, dropout_key=None, **data):
    """The call of the GRU modules (``jl.GRU``, ``jl.nnx.GRU``), written once, reading ``layer``'s options
    (``LAYER_OPTIONS``); ``data`` are the call's ``seq_lengths``, ``mask`` and ``resets``. It casts to the
    computation dtype (``dtype``, else the params'; bool and integer inputs too), starts from ``initial_carry``, else
    the learned ``h0`` (``[layer][direction]`` → ``(H,)``), else zeros, run ``stacked_rnn`` and pick the
    output: ``(*batch, T, F)``, or with ``return_sequences=False`` the last step's ``(*batch, F)`` (the
    forward direction's final h merged with the backward's, after step 0); with ``return_carry``,
    ``(final_carries, output)``."""
    options = {name: getattr(layer, name) for name in LAYER_OPTIONS}
    dtype, merge, dropout = options.pop("dtype"), options.pop("merge"), options.pop("dropout")
    return_sequences, return_carry = options.pop("return_sequences"), options.pop("return_carry")
    if dtype is None:
        dtype = jax.tree.leaves(stack)[0].dtype
    stack = jax.tree.map(lambda a: jnp.asarray(a, dtype), stack)
    x = jnp.asarray(x, dtype)
    batch_shape = tuple(x.shape[:-2])
    carries = initial_carry
    if carries is None and learned_h0 is not None:
        carries = tuple(
            tuple(jnp.broadcast_to(jnp.asarray(h0, dtype), (*batch_shape, h0.shape[-1])) for h0 in row)
            for row in learned_h0
        )
    finals, hs = stacked_rnn(
        GRU(), stack, x, carries, merge=merge, dropout=dropout, dropout_key=dropout_key, **options, **data
    )
    output = hs
    if not return_sequences:
        last = finals[-1]
        output = last[0] if len(last) == 1 else merge_directions(last[0], last[1], merge)
    return (finals, output) if return_carry else output
