"""The precision policy of the engine: which dtype each part of a step runs in.

One rule, applied by the engine (``jaxlstm.loops``) to every matmul of the forward and the
backward pass (x·W_ih per chunk, h·W_hh per step, ·W_hr, dX, dW_ih, dW_hh,
dW_hr and dh) and to the elementwise step between them:

* the **compute dtype** is the one dtype params, inputs and ``h`` are promoted
  to (``jaxlstm.cell.split_promote``); a module's ``dtype`` sets it;
* matmul operands are in the compute dtype, products come back in the
  **accumulation dtype**: at least float32 (bfloat16 and float16 → float32);
* the gates, the cell state and every elementwise step (and its VJP) run in the
  accumulation dtype; only what feeds the next matmul is cast down;
* outputs and the carry's ``h`` are in the compute dtype, the carry's ``c`` in
  the accumulation dtype;
* what the loops store for later reads, the activations the forward pass saves
  for the backward pass and the gradients the backward pass's GEMMs read, is
  rounded to the compute dtype once, when written (``narrow_storage``,
  ``stored``): half the memory traffic, and for the GEMMs' operands the
  rounding they would do anyway. The backward pass's math reads the saved
  activations back in the accumulation dtype; the carry between steps is
  never stored narrowed.

For float32 and float64 the two dtypes are the same and ``matmul`` is exactly
``a @ b``, so nothing changes. For bfloat16 and float16 this is what PyTorch's
autocast and TPUs do: the dot runs on the narrow operands and accumulates in
float32 (``preferred_element_type``), which XLA:CPU runs 3-6x faster than a
float32 dot on CPUs with AMX or AVX-512 BF16, while bfloat16 elementwise math
would run slower than float32 there (it is converted op by op).

``matmul`` always hands XLA a 2-D dot, ``(rows, k) · (k, n)``: XLA:CPU 0.10
refuses some batched or transposed-output forms of a narrow dot with a float32
result at run time (``UNIMPLEMENTED: Unsupported element type for
DotThunk::Execute: BF16 x BF16 = F32``, e.g. ``einsum('btd,dg->tbg')``).
A weight gradient contracts over rows (``Xᵀ·dz``); XLA:CPU runs such a narrow dot
in float32 when its left operand is a transpose it can fold into the dot
(measured: 4096x128x1024-sized dW GEMMs took as long as in float32).
``rows_transposed`` writes ``Xᵀ`` out through a 3-D transpose, which XLA keeps
as a copy, so the dot stays narrow (0.7 ms against 3 ms for a 128x1024x1024 GEMM).
Where the CPU has no instructions for the narrow dtype's dots (no AVX-512 BF16 or AMX-BF16 for
bfloat16, no AVX512-FP16 or AMX-FP16 for float16), XLA:CPU's narrow dot is no faster than a float32 one,
often slower (measured on an AVX-512 CPU with its BF16 bits hidden from CPUID: 0.6-1.0x the float32 GEMM
rate, and ``jl.LSTM(dtype=bfloat16)`` took 1.1-1.6x the float32 time). There ``matmul`` runs a float32
dot: on operands rounded to the compute dtype and widened (the same products, accumulated in float32),
float32 operands (the backward's ``dz``) unrounded (no less exact, one pass fewer). ``narrow_dots``
decides this once per process (``JAXLSTM_NARROW_DOTS`` overrides it); every other part of the policy,
and the dtypes users get, are the same either way.
See docs/variants.md#mixed-precision.
"""

from __future__ import annotations

import functools
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = [
    "accumulation_dtype",
    "as_dtype",
    "dot_operand_dtype",
    "is_mixed",
    "loaded",
    "matmul",
    "narrow_dots",
    "narrow_storage",
    "rows_transposed",
    "stored",
    "weight_transposed",
]

NARROW_DOTS_ENV = "JAXLSTM_NARROW_DOTS"
# /proc/cpuinfo flags (x86; "bf16" is aarch64's) that give XLA:CPU fast dots on each narrow dtype.
_DOT_FLAGS = {
    "bfloat16": frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
    "float16": frozenset({"avx512_fp16", "amx_fp16"}),
}


def accumulation_dtype(compute_dtype) -> np.dtype:
    """The dtype matmuls accumulate in and the elementwise step runs in: at least float32.

    >>> import jax.numpy as jnp
    >>> accumulation_dtype(jnp.bfloat16), accumulation_dtype(jnp.float32), accumulation_dtype(jnp.float64)
    (dtype('float32'), dtype('float32'), dtype('float64'))
    """
    with jax.numpy_dtype_promotion("standard"):
        return np.dtype(jnp.promote_types(compute_dtype, jnp.float32))


def is_mixed(compute_dtype) -> bool:
    """Whether ``compute_dtype`` is narrower than its accumulation dtype (bfloat16, float16)."""
    return np.dtype(compute_dtype) != accumulation_dtype(compute_dtype)


def as_dtype(array: Array, dtype) -> Array:
    """``array`` cast to ``dtype``; the array itself when it has it (no op is added)."""
    return array if array.dtype == dtype else array.astype(dtype)


def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``); None where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


@functools.cache
def narrow_dots(compute_dtype) -> str:
    """How ``matmul`` runs a dot in ``compute_dtype`` (bfloat16, float16): ``"native"`` or ``"float32"``.

    ``"native"``: on the narrow operands, accumulating in float32 (``preferred_element_type``).
    ``"float32"``: on the operands rounded to ``compute_dtype`` and widened to float32, for a CPU without
    dot instructions for that dtype, where XLA:CPU's narrow dot runs slower than a float32 one. Decided
    once per process and dtype: the environment variable ``JAXLSTM_NARROW_DOTS`` (``native``,
    ``float32`` or ``auto``) first; on ``auto`` (the default), ``"native"`` unless JAX's default backend is
    the CPU and ``/proc/cpuinfo`` lists none of the dtype's dot instructions (bfloat16: ``avx512_bf16``,
    ``amx_bf16`` or aarch64's ``bf16``; float16: ``avx512_fp16`` or ``amx_fp16``). Where ``/proc/cpuinfo``
    can't be read (macOS, Windows), x86 CPUs get ``"float32"`` and others ``"native"``.

    >>> import jax.numpy as jnp
    >>> narrow_dots(jnp.bfloat16) in ("native", "float32")
    True
    """
    name = np.dtype(compute_dtype).name
    choice = os.environ.get(NARROW_DOTS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "native", "float32"):
        raise ValueError(f"{NARROW_DOTS_ENV} must be 'auto', 'native' or 'float32'; got {choice!r}")
    if choice != "auto":
        return choice
    if name not in _DOT_FLAGS or jax.default_backend() != "cpu":
        return "native"
    flags = _cpu_flags()
    if flags is None:
        return "float32" if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86") else "native"
    return "native" if flags & _DOT_FLAGS[name] else "float32"


def dot_operand_dtype(compute_dtype) -> np.dtype:
    """The dtype ``matmul`` hands XLA's dot for ``compute_dtype``: itself, or float32 where ``narrow_dots`` says so.

    >>> import jax.numpy as jnp
    >>> dot_operand_dtype(jnp.float32)
    dtype('float32')
    """
    if is_mixed(compute_dtype) and narrow_dots(np.dtype(compute_dtype)) == "float32":
        return accumulation_dtype(compute_dtype)
    return np.dtype(compute_dtype)


def narrow_storage(compute_dtype) -> bool:
    """Whether the engine's loop buffers keep values in ``compute_dtype`` rather than the accumulation dtype.

    True for a narrow ``compute_dtype`` whose dots run narrow (``dot_operand_dtype``): the saved
    activations the backward pass reads and the gradients its GEMMs read are then rounded to it once,
    when written (what the GEMMs would round them to anyway, and half the memory traffic). Where the
    dots run in float32 (a CPU without bfloat16 dot instructions) they stay in float32: no conversions.

    >>> import jax.numpy as jnp
    >>> narrow_storage(jnp.float32)
    False
    """
    return is_mixed(compute_dtype) and dot_operand_dtype(compute_dtype) == np.dtype(compute_dtype)


def stored(value: Array, compute_dtype) -> Array:
    """``value`` (a float array, any shape) as a loop buffer keeps it: with ``narrow_storage``, rounded to
    ``compute_dtype`` and kept as its bits (``uint16``, the same shape), else as it is.

    As bits because XLA:CPU (jaxlib 0.10.2) converts a whole bfloat16 buffer that a loop updates in place
    to float32 and back on every update (measured: the backward pass at (128, 64, 256, 512) took 350 ms
    with its gradient buffers in bfloat16, 296 ms with them as bits); an integer buffer is updated in place.
    ``loaded`` reads it back.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([1.0, 2.5])
    >>> stored(x, jnp.float32) is x, stored(x, jnp.bfloat16).dtype in (jnp.uint16, jnp.float32)
    (True, True)
    """
    if not narrow_storage(compute_dtype):
        return value
    return jax.lax.bitcast_convert_type(as_dtype(value, compute_dtype), jnp.uint16)


def loaded(buffer: Array, compute_dtype) -> Array:
    """What ``stored`` kept, in ``compute_dtype`` (the bits read as floats again, the same shape); buffers
    that are not ``uint16`` bits as they are.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([1.0, 2.5])
    >>> bool((loaded(stored(x, jnp.bfloat16), jnp.bfloat16).astype(jnp.float32) == x).all())
    True
    """
    if buffer.dtype != jnp.uint16 or not narrow_storage(compute_dtype):
        return buffer
    return jax.lax.bitcast_convert_type(buffer, np.dtype(compute_dtype))


def matmul(a: Array, b: Array, compute_dtype) -> Array:
    """``a · b`` for ``a`` ``(*rows, k)`` and ``b`` ``(k, n)``: ``(*rows, n)`` in the accumulation dtype.

    Operands are cast to ``compute_dtype``. When that is narrower than float32,
    the dot accumulates and returns float32 (``preferred_element_type``), on a
    2-D view of ``a``; otherwise this is ``a @ b``, bit for bit. Where
    ``narrow_dots`` says ``"float32"``, the dot runs in float32 instead: on
    operands rounded to ``compute_dtype`` and widened, except float32 ones
    (the backward pass's ``dz``), which are used as they are (no product
    less exact than the narrow dot's, and no rounding pass over them).

    >>> import jax.numpy as jnp
    >>> a, b = jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16)
    >>> y = matmul(a, b, jnp.bfloat16)
    >>> y.shape, y.dtype
    ((2, 3, 5), dtype('float32'))
    """
    if not is_mixed(compute_dtype):
        return a @ b
    wide = dot_operand_dtype(compute_dtype)
    if wide != np.dtype(compute_dtype):  # no fast narrow dots on this CPU: a float32 dot
        return _widened(a, compute_dtype, wide) @ _widened(b, compute_dtype, wide)
    a, b = as_dtype(a, compute_dtype), as_dtype(b, compute_dtype)
    rows = a.shape[:-1]
    a_2d = a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
    product = jax.lax.dot_general(
        a_2d, b, (((1,), (0,)), ((), ())), preferred_element_type=accumulation_dtype(compute_dtype)
    )
    return product if a.ndim == 2 else product.reshape(*rows, b.shape[-1])


def _widened(a: Array, compute_dtype, wide) -> Array:
    """``a`` for a float32 dot: as it is when already ``wide``, else rounded to ``compute_dtype`` and widened."""
    return a if a.dtype == wide else as_dtype(as_dtype(a, compute_dtype), wide)


def rows_transposed(a: Array, compute_dtype) -> Array:
    """``a`` ``(n, t, k)`` as the left operand of a GEMM over its ``n·t`` rows: ``(k, n·t)`` in ``compute_dtype``.

    Written as a 3-D transpose, so XLA:CPU copies it instead of folding it into the dot as a
    transposed operand (which would run a narrow dot in float32).

    >>> import jax.numpy as jnp
    >>> a = jnp.arange(6.0).reshape(1, 2, 3)
    >>> rows_transposed(a, jnp.bfloat16).shape
    (3, 2)
    """
    a = as_dtype(a, compute_dtype)
    return a.transpose(2, 0, 1).reshape(a.shape[2], a.shape[0] * a.shape[1])


def weight_transposed(w: Array, compute_dtype) -> Array:
    """A weight ``(k, 4·m)`` (its columns the four gates) transposed, ``(4·m, k)``, in ``compute_dtype``:
    the right operand of ``dz·Wᵀ``, written out through a 3-D transpose for the reason ``rows_transposed`` gives.

    >>> import jax.numpy as jnp
    >>> w = jnp.arange(8.0).reshape(2, 4)
    >>> bool((weight_transposed(w, jnp.float32) == w.T).all())
    True
    """
    w = as_dtype(w, compute_dtype)
    k, n = w.shape
    return w.reshape(k, 4, n // 4).transpose(1, 2, 0).reshape(n, k)
