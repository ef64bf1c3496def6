"""The GRU layer that both Flax modules are (``jl.GRU``, ``jl.nnx.GRU``), without Flax: its options, checks and call.

As ``jaxlstm.layer`` for the LSTM: ``jaxlstm.gru_linen`` and ``jaxlstm.gru_nnx`` hold the parameters,
carries and randomness; this module is the rest, once:

* ``SHARED_OPTIONS`` and ``shared_config``: the GRU layer's options (``jaxlstm.layer.RecurrentLayerFields``),
  validated by the LSTM layer's own rules (``jaxlstm.layer.LayerConfig``);
* ``STACK_SETTINGS``: those it hands to its stack;
* ``run_module``: the call, from the module's stack of ``GRUParams`` and carries to
  ``jaxlstm.stacked_rnn`` with ``jaxlstm.cells.GRU`` and back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .cells.gru import GRU
from .engine import SequenceSettings
from .layer import LayerConfig, RecurrentLayerFields, check_stateful_carry, computation_dtype
from .options import StackSettings, option_names
from .rnn_stack import merge_directions, stacked_rnn

__all__ = ["SHARED_OPTIONS", "STACK_SETTINGS", "shared_config", "run_module"]


# The GRU layer's options: a recurrent layer's (jaxlstm.layer.RecurrentLayerFields, declared there), validated
# by the LSTM's own rules (jaxlstm.layer.LayerConfig).
SHARED_OPTIONS = tuple(name for name in RecurrentLayerFields.__dataclass_fields__ if name != "features")


def shared_config(module) -> LayerConfig:
    """The ``LayerConfig`` of a GRU module's options that the LSTM has too (checked as ``jl.LSTM`` checks them:
    the same errors, stateful with bidirectional or reverse refused)."""
    return LayerConfig(module.features, **{name: getattr(module, name) for name in SHARED_OPTIONS})


# The settings the GRU layer hands to its stack, under the same names in linen and NNX: declared in
# jaxlstm.options.StackSettings and jaxlstm.engine.SequenceSettings.
STACK_SETTINGS = (*option_names(StackSettings), *option_names(SequenceSettings))


def run_module(layer, stack, x, stored, *, learned_h0, initial_carry, dropout_key, **data):
    """The call of ``jl.GRU`` and ``jl.nnx.GRU``, written once, reading ``layer``'s options; ``data`` are the
    call's ``seq_lengths``, ``mask`` and ``resets``. Returns ``(final_carries, result)``, the carries for a
    stateful module to keep.

    It casts the stack and ``x`` to the computation dtype (``jaxlstm.layer.computation_dtype``; bool and
    integer inputs too) and starts from ``initial_carry`` if given, else from ``stored`` (the carry a stateful
    module kept from its last call, ``[layer][direction]`` → ``h`` ``(*batch, H)``), else from the learned
    ``h0`` (H,) or zeros; resets restart from ``initial_carry`` if given, else from the learned ``h0`` or zeros
    (never from the stored carry), as ``jaxlstm.layer.start_carries`` for the LSTM. The result is the output
    ``(*batch, T, F)``, or with ``return_sequences=False`` the last step's ``(*batch, F)`` (the forward
    direction's final h merged with the backward's, after step 0); with ``return_carry``,
    ``(final_carries, output)``."""
    dtype = computation_dtype(layer.dtype, x, jax.tree.leaves(stack)[0].dtype)
    stack = jax.tree.map(lambda a: jnp.asarray(a, dtype), stack)
    x = jnp.asarray(x, dtype)
    batch_shape = tuple(x.shape[:-2])

    def broadcast(rows):
        """``h0`` rows ``[layer][direction]`` → ``(H,)``, as carries ``(*batch, H)`` in the computation dtype."""
        return tuple(
            tuple(jnp.broadcast_to(jnp.asarray(h0, dtype), (*batch_shape, h0.shape[-1])) for h0 in row) for row in rows
        )

    if initial_carry is None and stored is not None:
        check_stateful_carry(stored, batch_shape)
        zeros = tuple(tuple(jnp.zeros((layer.features,)) for _ in row) for row in stack)
        data["reset_carries"] = broadcast(zeros if learned_h0 is None else learned_h0)
        initial_carry = stored
    elif initial_carry is None and learned_h0 is not None:
        initial_carry = broadcast(learned_h0)
    settings = {name: getattr(layer, name) for name in STACK_SETTINGS}
    finals, output = stacked_rnn(GRU(), stack, x, initial_carry, dropout_key=dropout_key, **settings, **data)
    if not layer.return_sequences:
        last = finals[-1]
        output = last[0] if len(last) == 1 else merge_directions(last[0], last[1], layer.merge)
    return finals, ((finals, output) if layer.return_carry else output)
