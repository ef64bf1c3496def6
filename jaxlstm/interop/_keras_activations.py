"""Keras 3's activations as JAX functions, both ways: ``KERAS_ACTIVATIONS`` and what reads it.

``from_keras`` turns a layer's ``activation`` and ``recurrent_activation`` (a Keras
activation, or the ``keras.ops`` function of that name) into the module's ``activation_fn``
and ``gate_fn`` (``read_activations``); ``to_keras`` names a module's functions for Keras
(``activation_names``). Only elementwise activations with their default arguments convert.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["KERAS_ACTIVATIONS", "activation_name", "activation_names", "read_activations"]


def _linear(x):
    """``keras.activations.linear``: the identity."""
    return x


def _gelu(x):
    """``keras.activations.gelu`` with its default ``approximate=False`` (the erf form)."""
    return jax.nn.gelu(x, approximate=False)


def _leaky_relu(x):
    """``keras.activations.leaky_relu`` with its default ``negative_slope=0.2``."""
    return jax.nn.leaky_relu(x, negative_slope=0.2)


KERAS_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "linear": _linear,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "celu": jax.nn.celu,
    "gelu": _gelu,
    "leaky_relu": _leaky_relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "log_sigmoid": jax.nn.log_sigmoid,
    "hard_tanh": jax.nn.hard_tanh,
    "exponential": jnp.exp,
    "mish": jax.nn.mish,
    "sparse_plus": jax.nn.sparse_plus,
    "squareplus": jax.nn.squareplus,
    "sparse_sigmoid": jax.nn.sparse_sigmoid,
}
"""Keras 3 activation name → the JAX function computing ``keras.activations.get(name)`` (default arguments).

All elementwise, so they can serve as ``gate_fn`` / ``activation_fn``;
``softmax``, ``log_softmax``, ``glu`` and ``sparsemax`` are not (they mix a
vector's entries) and ``threshold`` has no defaults, so those are refused.
"""


def _activation_table(keras) -> dict:
    """Every accepted callable → its JAX function: Keras' activations, the
    ``keras.ops`` functions of the same name (``ops.gelu`` is the tanh
    approximation) and the JAX functions themselves."""
    table = {}
    for name, fn in KERAS_ACTIVATIONS.items():
        table[fn] = fn
        table[keras.activations.get(name)] = fn
        op = getattr(keras.ops, name, None)
        if callable(op):
            table[op] = jax.nn.gelu if name == "gelu" else fn
    table[jax.nn.gelu] = jax.nn.gelu
    return table


def _keras_name(fn) -> str | None:
    """The Keras activation name of a JAX function (``to_keras``), or ``None``."""
    if fn is jax.nn.gelu:
        return None  # Keras' "gelu" is the exact form
    return next((name for name, known in KERAS_ACTIVATIONS.items() if known is fn), None)


def read_activations(keras, layers) -> tuple:
    """``(gate_fn, activation_fn)`` for the layers' ``recurrent_activation`` and ``activation``."""
    table = _activation_table(keras)
    converted = []
    for option in ("recurrent_activation", "activation"):
        fns = []
        for sub in layers:
            fn = getattr(sub.cell, option)
            try:
                fns.append(table[fn])
            except (KeyError, TypeError):  # TypeError: an unhashable callable
                raise ValueError(
                    f"from_keras: {sub.name!r} has {option}={activation_name(keras.activations, fn)!r}, "
                    "which is not one of the elementwise Keras activations jaxlstm converts "
                    f"({', '.join(KERAS_ACTIVATIONS)}); "
                    "build jl.LSTM(..., gate_fn=..., activation_fn=...) with the JAX function yourself"
                ) from None
        if len(set(fns)) > 1:
            shown = ", ".join(repr(activation_name(keras.activations, getattr(sub.cell, option))) for sub in layers)
            raise ValueError(
                f"from_keras: the forward and backward layers have different {option}s ({shown}); "
                "a jaxlstm.LSTM uses one for both directions"
            )
        converted.append(fns[0])
    return tuple(converted)


def activation_name(activations, fn) -> str:
    """How error messages name ``fn``: its Keras name (``keras.activations.serialize``), else its ``__name__``."""
    try:
        name = activations.serialize(fn)
    except Exception:  # an arbitrary callable
        name = None
    # Keras serializes a function it does not know as a dict: name it by its __name__ instead
    return name if isinstance(name, str) else getattr(fn, "__name__", repr(fn))


def activation_names(module) -> dict[str, str]:
    """``{"activation_fn": name, "gate_fn": name}``: the Keras names of the module's activations."""
    names = {}
    for option, fn in (("activation_fn", module.activation_fn), ("gate_fn", module.gate_fn)):
        names[option] = _keras_name(fn)
        if names[option] is None:
            raise ValueError(
                f"to_keras: {option}={getattr(fn, '__name__', fn)!r} is not one of the functions Keras has an "
                f"activation for ({', '.join(KERAS_ACTIVATIONS)}; see jaxlstm.interop.keras.KERAS_ACTIVATIONS)"
            )
    return names
