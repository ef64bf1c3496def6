"""Helpers shared by the converters: optional imports, reading a ``jl.LSTM``'s variables, checking weights."""

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


# Keras' backend modules: an ImportError naming one of these means Keras is installed but its backend is not.
_KERAS_BACKEND_MODULES = ("tensorflow", "torch", "jax", "openvino")
_KERAS_BACKEND_FIX = (
    "export KERAS_BACKEND=jax before Python imports keras (Keras picks its backend on import), "
    'or set "backend": "jax" in keras.json'
)


def require_keras(what: str):
    """Imports Keras, which must run on its JAX backend, or raises an ImportError that names the real cause.

    Three cases, three fixes: Keras is not installed (``pip install
    'jaxlstm[keras]'``); Keras is installed but ``import keras`` fails because
    the backend it was told to load is missing (``KERAS_BACKEND`` unset means
    the one in ``keras.json``, ``"tensorflow"`` by default); Keras was imported
    on another backend. The fix for the last two is ``KERAS_BACKEND=jax``.
    """
    import importlib
    import os

    backend = os.environ.get("KERAS_BACKEND")
    setting = (
        f"KERAS_BACKEND={backend!r}"
        if backend
        else "KERAS_BACKEND is unset, so Keras takes the backend from keras.json in $KERAS_HOME or ~/.keras, "
        "'tensorflow' by default"
    )
    try:
        keras = importlib.import_module("keras")
    except ImportError as error:
        missing = (getattr(error, "name", None) or "").split(".")[0]
        if getattr(error, "name", None) == "keras":
            raise ImportError(f"{what} needs keras, an optional dependency: pip install 'jaxlstm[keras]'") from error
        if missing in _KERAS_BACKEND_MODULES:
            raise ImportError(
                f"{what}: keras is installed, but `import keras` failed because it tried to load its {missing!r} "
                f"backend, which is not installed ({setting}); jaxlstm's Keras interop runs Keras on JAX: "
                f"{_KERAS_BACKEND_FIX}"
            ) from error
        raise ImportError(
            f"{what}: keras is installed, but `import keras` failed ({type(error).__name__}: {error}); "
            "reinstall it with pip install 'jaxlstm[keras]'"
        ) from error
    actual = keras.backend.backend()
    if actual != "jax" and backend == "jax":
        setting = "KERAS_BACKEND='jax' was set after keras was imported"
    if actual != "jax":
        raise ImportError(
            f"{what}: Keras runs on its {actual!r} backend ({setting}); jaxlstm's Keras interop needs the 'jax' "
            f"backend: {_KERAS_BACKEND_FIX}"
        )
    return keras


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


def read_stack(module, variables) -> list[list[tuple[np.ndarray, ...]]]:
    """``[layer][direction]`` → NumPy ``(w_ih, w_hh, b)`` of a ``jl.LSTM``'s variables; with a projection
    (``proj_size=P``), ``(w_ih, w_hh, b, w_hr)``.

    Every array is checked against the module's configuration (``features``,
    ``num_layers``, ``bidirectional``, ``merge``, ``proj_size``): ``w_ih`` (F, 4H),
    F the input's size in layer 0 and ``module.output_size`` after it, ``w_hh``
    (R, 4H), R = P with a projection and H without, ``b`` (4H,), ``w_hr`` (H, P).
    Keys the module would not create are rejected, so variables of another
    configuration fail here with the key named rather than converting into a
    different network.
    """
    from ..layer import cell_name

    params = params_tree(variables)
    hidden, proj = module.features, module.config.cell_variant.proj_size
    fields = ("w_ih", "w_hh", "b") if proj is None else ("w_ih", "w_hh", "b", "w_hr")
    stack = []
    input_size = None
    for layer in range(module.num_layers):
        directions = []
        for direction in range(module.num_directions):
            name = cell_name(layer, direction)
            arrays = _read_cell(params, name, fields, module)
            if layer == 0 and input_size is None:
                input_size = arrays["w_ih"].shape[0] if arrays["w_ih"].ndim == 2 else -1
            layer_input = input_size if layer == 0 else module.output_size
            shapes = {"w_ih": (layer_input, 4 * hidden), "w_hh": (proj or hidden, 4 * hidden), "b": (4 * hidden,)}
            shapes |= {} if proj is None else {"w_hr": (hidden, proj)}
            for field, shape in shapes.items():
                if arrays[field].shape != shape:
                    raise ValueError(
                        f"params[{name!r}][{field!r}] has shape {arrays[field].shape}, expected {shape} "
                        f"for features={hidden}"
                        + ("" if proj is None else f", proj_size={proj}")
                        + (f", input_size={input_size}" if layer == 0 else "")
                    )
            directions.append(tuple(arrays[field] for field in fields))
        stack.append(directions)
    extra = sorted(set(params) - set(_names(module)))
    if extra:
        raise ValueError(
            f"params has entries {extra} that a jaxlstm.LSTM with num_layers={module.num_layers}, "
            f"bidirectional={module.bidirectional} does not have (it has {_names(module)})"
        )
    return stack


def _read_cell(params: Mapping, name: str, fields: tuple[str, ...], module) -> dict[str, np.ndarray]:
    """``params[name]``'s ``fields`` as NumPy arrays; a missing cell or field, or an extra entry, is named."""
    if name not in params or not isinstance(params[name], Mapping):
        raise ValueError(
            f"params[{name!r}] is missing: a jaxlstm.LSTM with num_layers={module.num_layers}, "
            f"bidirectional={module.bidirectional} has {_names(module)}; got {sorted(params)}"
        )
    cell = params[name]
    arrays = {}
    for field in fields:
        if field not in cell:
            raise ValueError(f"params[{name!r}][{field!r}] is missing; got {sorted(cell)}")
        arrays[field] = np.asarray(cell[field])
    extra = sorted(set(cell) - set(fields))
    if extra:
        raise ValueError(f"params[{name!r}] has unexpected entries {extra}; expected {', '.join(fields)}")
    return arrays


def _names(module) -> list[str]:
    from ..layer import cell_name

    return [cell_name(layer, d) for layer in range(module.num_layers) for d in range(module.num_directions)]


def refuse_variant_options(module, supported: tuple[str, ...], target: str, has: str) -> None:
    """Refuses the options of ``module``'s LSTM variant that ``target`` (a layer of another framework) lacks,
    naming them: ``"{target} has no peepholes=True; of jaxlstm's LSTM variants it has {has} ..."``.

    ``supported`` names the options ``target`` has; ``layer_norm_epsilon`` only matters with
    ``layer_norm`` and is never named on its own.
    """
    allowed = (*supported, "layer_norm_epsilon")
    unsupported = {k: v for k, v in module.config.cell_variant.options.items() if k not in allowed}
    if unsupported:
        options = ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
        raise ValueError(
            f"{target} has no {options}; of jaxlstm's LSTM variants it has {has} "
            "(see docs/variants.md, or run jaxlstm docs variants)"
        )


def consensus(values: Mapping):
    """The value most entries of ``values`` have (the first entry's on a tie).

    The converters read sizes and dtypes this way, from every entry at once, so that a misshaped entry
    is the one named in the error, not a well-shaped one compared against it.
    """
    counts: dict = {}
    for value in values.values():
        counts[value] = counts.get(value, 0) + 1
    return max(counts, key=lambda value: counts[value])


def floating(array: np.ndarray, where: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        raise ValueError(f"{where} must hold floating-point values, got dtype {array.dtype}")
    return array


def warn_if_x64_disabled(dtype, source: str) -> None:
    """Warns that float64 weights will become float32 (JAX's default) unless ``jax_enable_x64`` is on."""
    import jax

    if np.dtype(dtype) == np.float64 and not jax.config.read("jax_enable_x64"):
        import warnings

        warnings.warn(
            f"{source}: float64 weights are converted to float32 because jax_enable_x64 is off; "
            "enable it (jax.config.update('jax_enable_x64', True)) for an exact float64 conversion",
            stacklevel=3,
        )


def check_finite(array, where: str, allow_nonfinite: bool = False):
    """Refuses weights holding NaN or ±Inf unless ``allow_nonfinite``: the one rule (and message) of every converter.

    ``array`` is a NumPy or JAX array (any float dtype, bfloat16 included) and
    is returned as it is. A traced value (a converter called under ``jit``)
    has no values to check and passes.
    """
    from jax.core import Tracer

    if allow_nonfinite or isinstance(array, Tracer):
        return array
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.inexact) and values.dtype.name != "bfloat16":
        return array
    finite = np.isfinite(values)
    if finite.all():
        return array
    bad = int(finite.size - np.count_nonzero(finite))
    nan = int(np.count_nonzero(np.isnan(values)))
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise ValueError(
        f"{where} has {bad} non-finite value{'s' if bad > 1 else ''} of {finite.size} ({nan} NaN, {bad - nan} Inf; "
        f"the first at index {first}): refused, as such weights come from a diverged or damaged model; "
        "pass allow_nonfinite=True to load them as they are"
    )


def read_gru_stack(stack, source: str) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """``[layer][direction]`` → NumPy ``(w_ih, w_hh, b_ih, b_hh)`` of a GRU stack (``jaxlstm.init_rnn_stack``).

    Checks the nesting (1 or 2 directions in every layer, each a ``jaxlstm.GRUParams``), every shape
    (layer 0 reads D features, later layers ``num_directions * H``, PyTorch's concatenation) and one
    floating dtype; errors name the entry, e.g. ``stack[1][0].w_hh``.
    """
    from ..cells.gru import GRUParams

    if not isinstance(stack, (tuple, list)) or not stack or not all(isinstance(d, (tuple, list)) for d in stack):
        raise TypeError(
            f"{source}: stack must be nested [layer][direction] -> jaxlstm.GRUParams (jaxlstm.init_rnn_stack), "
            f"got {type(stack).__name__}"
        )
    num_directions = len(stack[0])
    if num_directions not in (1, 2) or any(len(d) != num_directions for d in stack):
        raise ValueError(f"{source}: every layer must have the same 1 or 2 directions, got {[len(d) for d in stack]}")
    arrays = {}
    for layer, directions in enumerate(stack):
        for direction, params in enumerate(directions):
            where = f"stack[{layer}][{direction}]"
            if not isinstance(params, GRUParams):
                raise TypeError(f"{source}: {where} must be a jaxlstm.GRUParams, got {type(params).__name__}")
            for field, value in params._asdict().items():
                array = np.asarray(value)
                expected_ndim = 2 if field.startswith("w") else 1
                if array.ndim != expected_ndim:
                    raise ValueError(
                        f"{source}: {where}.{field} has shape {array.shape}, expected a {expected_ndim}-d array"
                    )
                arrays[(layer, direction, field)] = floating(array, f"{source}: {where}.{field}")
    hidden = consensus({key: array.shape[0] for key, array in arrays.items() if key[2] == "w_hh"})
    input_size = consensus({key: array.shape[0] for key, array in arrays.items() if key[0] == 0 and key[2] == "w_ih"})
    dtype = consensus({key: array.dtype for key, array in arrays.items()})
    result = []
    for layer, directions in enumerate(stack):
        reads = input_size if layer == 0 else num_directions * hidden
        shapes = {"w_ih": (reads, 3 * hidden), "w_hh": (hidden, 3 * hidden)}
        shapes |= {"b_ih": (3 * hidden,), "b_hh": (3 * hidden,)}
        cells = []
        for direction in range(len(directions)):
            for field, shape in shapes.items():
                array = arrays[(layer, direction, field)]
                where = f"stack[{layer}][{direction}].{field}"
                if array.shape != shape:
                    raise ValueError(
                        f"{source}: {where} has shape {array.shape}, expected {shape} (hidden_size {hidden}, "
                        f"input_size {input_size} and {num_directions} direction{'s' if num_directions > 1 else ''}, "
                        "which the other entries agree on)"
                    )
                if array.dtype != dtype:
                    raise ValueError(
                        f"{source}: {where} has dtype {array.dtype}, the other entries {dtype}: cast them to one"
                    )
            cells.append(tuple(arrays[(layer, direction, field)] for field in shapes))
        result.append(cells)
    return result


def gru_stack_to_variables(stack) -> dict:
    """A GRU stack as linen-style variables: ``{"params": {"layer_0": {"w_ih", "w_hh", "b_ih", "b_hh"},
    "layer_0_reverse": ..., "layer_1": ...}}`` (the parameter names of ``jaxlstm.GRU``).

    >>> import jax, jaxlstm as jl
    >>> from jaxlstm.interop import gru_stack_from_variables, gru_stack_to_variables
    >>> stack = jl.init_rnn_stack(jl.cells.GRU(), jax.random.key(0), 3, 4, num_layers=2, bidirectional=True)
    >>> variables = gru_stack_to_variables(stack)
    >>> sorted(variables["params"]), sorted(variables["params"]["layer_0"])
    (['layer_0', 'layer_0_reverse', 'layer_1', 'layer_1_reverse'], ['b_hh', 'b_ih', 'w_hh', 'w_ih'])
    >>> jax.tree.all(jax.tree.map(lambda a, b: a is b, gru_stack_from_variables(variables), stack))
    True
    """
    from ..layer import cell_name

    read_gru_stack(stack, "gru_stack_to_variables")
    return {
        "params": {
            cell_name(layer, direction): dict(params._asdict())
            for layer, directions in enumerate(stack)
            for direction, params in enumerate(directions)
        }
    }


def gru_stack_from_variables(variables) -> tuple:
    """``gru_stack_to_variables``' inverse: the ``[layer][direction]`` → ``jaxlstm.GRUParams`` stack of
    ``{"params": {"layer_0": ..., ...}}`` (or of the ``params`` dict itself); the arrays are not copied.

    Every entry is accounted for: a missing direction or field, or an entry that is not a layer of a
    GRU stack, is named in a ValueError.
    """
    from ..cells.gru import GRUParams
    from ..layer import cell_name

    params = params_tree(variables)
    fields = GRUParams._fields
    num_layers = 0
    while cell_name(num_layers, 0) in params:
        num_layers += 1
    if num_layers == 0:
        raise ValueError(f"variables['params'] has no 'layer_0' (a GRU stack's first layer); got {sorted(params)}")
    num_directions = 2 if cell_name(0, 1) in params else 1
    names = [cell_name(layer, d) for layer in range(num_layers) for d in range(num_directions)]
    extra = sorted(set(params) - set(names), key=str)
    missing = [name for name in names if name not in params]
    if extra or missing:
        raise ValueError(
            f"variables['params'] must hold {names} (a stack of {num_layers} layers, {num_directions} "
            f"direction{'s' if num_directions > 1 else ''}); missing {missing}, unexpected {extra}"
        )
    stack = []
    for layer in range(num_layers):
        directions = []
        for direction in range(num_directions):
            name = cell_name(layer, direction)
            cell = params[name]
            if not isinstance(cell, Mapping) or set(cell) != set(fields):
                got = sorted(cell) if isinstance(cell, Mapping) else type(cell).__name__
                raise ValueError(f"variables['params'][{name!r}] must have exactly {list(fields)}, got {got}")
            directions.append(GRUParams(*(cell[field] for field in fields)))
        stack.append(tuple(directions))
    return tuple(stack)

