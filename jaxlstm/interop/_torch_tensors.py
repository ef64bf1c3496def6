"""Tensors between torch and NumPy/JAX, bits unchanged (bfloat16 included), and the dtypes torch has.

``to_numpy`` copies a torch tensor (any device, any float dtype) or an array-like to NumPy and
refuses tensors without dense values (``meta``, sparse, nested, quantized), naming where they
are; ``torch_tensor`` is its inverse for a dtype of ``torch_dtype``'s table.
"""

from __future__ import annotations

import numpy as np

__all__ = ["jax_array", "to_numpy", "torch_dtype", "torch_tensor"]


def to_numpy(value, where: str) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like as a NumPy array, bits unchanged.

    Raises a TypeError for something that is no array, and a ValueError
    (naming ``where``) for a tensor that has no dense values to copy.
    """
    if type(value).__module__.startswith("torch"):
        import torch

        if not isinstance(value, torch.Tensor):
            raise TypeError(type(value).__name__)
        _check_dense(torch, value, where)
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            import ml_dtypes

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(type(value).__name__)
    return np.asarray(value)


def _check_dense(torch, tensor, where: str) -> None:
    """Refuses tensors whose values cannot be copied as they are: meta, nested, sparse (any non-strided layout)
    and quantized ones."""
    expected = "expected a dense strided tensor on the CPU or a GPU"
    if tensor.is_meta:
        raise ValueError(
            f"{where} is on the meta device: it has a shape but no values; {expected}. Materialise the weights "
            "first (e.g. lstm.to_empty(device='cpu'), then load the real values into it)"
        )
    if tensor.is_nested:
        raise ValueError(f"{where} is a nested tensor; {expected}")
    if tensor.layout != torch.strided:
        raise ValueError(f"{where} has layout {tensor.layout}; {expected}: convert it with .to_dense()")
    if tensor.is_quantized:
        raise ValueError(
            f"{where} is a quantized tensor ({tensor.dtype}); expected a floating-point one: convert it with "
            ".dequantize()"
        )


def jax_array(array: np.ndarray):
    import jax.numpy as jnp

    return jnp.asarray(np.ascontiguousarray(array))


def torch_dtype(torch, dtype: np.dtype):
    name = np.dtype(dtype).name
    table = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"to_torch: parameters of dtype {name} have no torch.nn.LSTM equivalent")
    return table[name]


def torch_tensor(torch, array: np.ndarray, torch_dtype):
    array = np.ascontiguousarray(array)
    if torch_dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())
