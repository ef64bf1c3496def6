"""Helpers shared by the converters: reading a ``jl.LSTM``'s variables, arrays to NumPy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def require(module: str, extra: str, what: str):
    """Imports an optional dependency, or raises an ImportError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{what} needs {module}, an optional dependency: pip install 'jaxlstm[{extra}]'") from error


def params_tree(variables, what: str = "variables") -> Mapping:
    """The ``params`` collection of linen ``variables`` (or ``variables`` itself if it is one)."""
    if not isinstance(variables, Mapping):
        raise TypeError(f"{what} must be a dict of linen variables ({{'params': ...}}), got {type(variables).__name__}")
    if "params" in variables:
        variables = variables["params"]
        if not isinstance(variables, Mapping):
            raise TypeError(f"{what}['params'] must be a dict, got {type(variables).__name__}")
    return variables


def lstm_module(module):
    """Checks that ``module`` is a ``jaxlstm.LSTM`` (linen) and returns it."""
    from ..linen import LSTM

    if not isinstance(module, LSTM):
        raise TypeError(f"module must be a jaxlstm.LSTM (flax.linen), got {type(module).__name__}")
    return module  # its options were validated when it was built


def read_stack(module, variables) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``[layer][direction]`` → NumPy ``(w_ih, w_hh, b)`` of a ``jl.LSTM``'s variables.

    Every array is checked against the module's configuration (``features``,
    ``num_layers``, ``bidirectional``, ``merge``), and keys the module would
    not create are rejected, so variables of another configuration fail here
    with the key named rather than converting into a different network.
    """
    from ..linen import cell_name

    params = params_tree(variables)
    hidden = module.features
    gates = 4 * hidden
    expected_names = set()
    stack = []
    input_size = None
    for layer in range(module.num_layers):
        directions = []
        for direction in range(module.num_directions):
            name = cell_name(layer, direction)
            expected_names.add(name)
            if name not in params or not isinstance(params[name], Mapping):
                raise ValueError(
                    f"params[{name!r}] is missing: a jaxlstm.LSTM with num_layers={module.num_layers}, "
                    f"bidirectional={module.bidirectional} has {_names(module)}; got {sorted(params)}"
                )
            cell = params[name]
            arrays = {}
            for field in ("w_ih", "w_hh", "b"):
                if field not in cell:
                    raise ValueError(f"params[{name!r}][{field!r}] is missing; got {sorted(cell)}")
                arrays[field] = np.asarray(cell[field])
            extra = sorted(set(cell) - {"w_ih", "w_hh", "b"})
            if extra:
                raise ValueError(f"params[{name!r}] has unexpected entries {extra}; expected w_ih, w_hh, b")
            if layer == 0 and input_size is None:
                input_size = arrays["w_ih"].shape[0] if arrays["w_ih"].ndim == 2 else -1
            layer_input = input_size if layer == 0 else module.output_size
            shapes = {"w_ih": (layer_input, gates), "w_hh": (hidden, gates), "b": (gates,)}
            for field, shape in shapes.items():
                if arrays[field].shape != shape:
                    raise ValueError(
                        f"params[{name!r}][{field!r}] has shape {arrays[field].shape}, expected {shape} "
                        f"for features={hidden}" + (f", input_size={input_size}" if layer == 0 else "")
                    )
            directions.append((arrays["w_ih"], arrays["w_hh"], arrays["b"]))
        stack.append(directions)
    extra = sorted(set(params) - expected_names)
    if extra:
        raise ValueError(
            f"params has entries {extra} that a jaxlstm.LSTM with num_layers={module.num_layers}, "
            f"bidirectional={module.bidirectional} does not have (it has {_names(module)})"
        )
    return stack


def _names(module) -> list[str]:
    from ..linen import cell_name

    return [cell_name(layer, d) for layer in range(module.num_layers) for d in range(module.num_directions)]


def floating(array: np.ndarray, where: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        raise ValueError(f"{where} must hold floating-point values, got dtype {array.dtype}")
    return array


def warn_if_x64_disabled(dtype, source: str) -> None:
    """Warns that float64 weights will become float32 (JAX's default) unless ``jax_enable_x64`` is on."""
    import jax

    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        import warnings

        warnings.warn(
            f"{source}: float64 weights are converted to float32 because jax_enable_x64 is off; "
            "enable it (jax.config.update('jax_enable_x64', True)) for an exact float64 conversion",
            stacklevel=3,
        )
