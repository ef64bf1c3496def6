"""Exact weight conversion to and from PyTorch, Keras and Flax's own LSTM cells.

* ``from_torch(lstm)`` / ``to_torch(module, variables)`` — ``torch.nn.LSTM``;
  ``load_torch(path)`` reads a saved ``lstm.state_dict()`` (``weights_only``),
  ``from_torch_state_dict(state_dict)`` converts one in memory;
* ``from_keras(layer)`` / ``to_keras(module, variables)`` — Keras 3
  ``LSTM`` and ``Bidirectional(LSTM)`` (``KerasLSTM`` formats outputs as Keras);
* ``from_flax(params)`` / ``to_flax(params)`` — ``flax.linen`` / ``flax.nnx``
  ``LSTMCell`` and ``OptimizedLSTMCell`` ↔ ``jaxlstm.LSTMParams``.

The GRU (``jaxlstm.cells.GRU``, gates r, z, n as PyTorch) has its own:

* ``from_torch_gru(gru)`` / ``to_torch_gru(stack)`` / ``load_torch_gru(path)``
  — ``torch.nn.GRU`` (or its state dict) ↔ a stack ``[layer][direction]`` →
  ``jaxlstm.GRUParams``, for ``jaxlstm.stacked_rnn(jaxlstm.cells.GRU(), ...)``;
* ``from_keras_gru(layer)`` / ``to_keras_gru(stack)`` — Keras 3 ``GRU``
  (``reset_after=True``) and ``Bidirectional(GRU)``;
* ``from_flax_gru(params)`` / ``to_flax_gru(params)`` — Flax's ``GRUCell``
  (linen and nnx) ↔ ``jaxlstm.GRUParams``;
* ``gru_stack_to_variables(stack)`` / ``gru_stack_from_variables(variables)``
  — a stack ↔ ``{"params": {"layer_0": {...}, "layer_0_reverse": ...}}``.

The converters return ``(module, variables)``, a ``jaxlstm.LSTM`` (linen) and
its ``{"params": ...}``, whose ``module.apply(variables, x)`` reproduces the
source's outputs. Weights are copied bit for bit (transposed where the
layouts differ); PyTorch's two biases are summed into jaxlstm's one.

Loading is strict (docs/interop-loading.md): ``load_torch`` checks the
file's CRC-32 checksums before reading it; every ``from_*`` converter
refuses NaN or ±Inf weights unless ``allow_nonfinite=True``, and torch
tensors without dense values (``meta``, sparse, ...) with the key named.
Every entry is accounted for: ``from_flax`` refuses entries a Flax cell
does not have, and ``load_torch`` names the keys of a whole model's state
dict that are not the LSTM's (``return_unused=True`` returns them);
``to_torch(..., state_dict=model.state_dict())`` writes the weights back.

PyTorch and Keras are optional (``pip install jaxlstm[torch]`` /
``jaxlstm[keras]``) and imported only inside the functions that need them.
The Keras converters need Keras on its JAX backend: ``export
KERAS_BACKEND=jax`` before Python imports keras.
"""

from ._common import gru_stack_from_variables as gru_stack_from_variables
from ._common import gru_stack_to_variables as gru_stack_to_variables
from .flax import from_flax as from_flax
from .flax import to_flax as to_flax
from .keras import KerasLSTM as KerasLSTM
from .keras import from_keras as from_keras
from .flax_gru import from_flax_gru as from_flax_gru
from .flax_gru import to_flax_gru as to_flax_gru
from .keras import to_keras as to_keras
from .keras_gru import from_keras_gru as from_keras_gru
from .keras_gru import to_keras_gru as to_keras_gru
from .torch import from_torch as from_torch
from .torch import from_torch_state_dict as from_torch_state_dict
from .torch import load_torch as load_torch
from .torch import to_torch as to_torch
from .torch_gru import from_torch_gru as from_torch_gru
from .torch_gru import load_torch_gru as load_torch_gru
from .torch_gru import to_torch_gru as to_torch_gru

__all__ = [
    "from_torch",
    "to_torch",
    "load_torch",
    "from_torch_state_dict",
    "from_keras",
    "to_keras",
    "KerasLSTM",
    "from_flax",
    "to_flax",
    "from_torch_gru",
    "to_torch_gru",
    "load_torch_gru",
    "from_keras_gru",
    "to_keras_gru",
    "from_flax_gru",
    "to_flax_gru",
    "gru_stack_to_variables",
    "gru_stack_from_variables",
]
