"""Times jaxlstm against other LSTM implementations on CPU.

    python benchmarks/compare.py                     # default shapes, 7 reps, plain tables
    python benchmarks/compare.py --markdown --json /tmp/bench.json
    python benchmarks/compare.py --shapes "32,128,128,256" --impls jaxlstm,torch --reps 11
    python benchmarks/compare.py --quick             # CI smoke run: one tiny shape, 2 reps
    python benchmarks/compare.py --dtype bfloat16    # mixed precision: jaxlstm, Flax, torch in bfloat16

Every implementation gets the same float32 batch-first inputs ``(B, T, D)`` and returns every step's
output ``(B, T, H)``. Two things are timed per shape:

* ``fwd``: the forward pass;
* ``fwd+bwd``: the gradient of ``sum(outputs * cotangent)`` (a fixed random cotangent) with respect to
  the parameters AND the inputs.

JAX functions are jitted (ahead-of-time ``lower().compile()``, whose time is reported separately),
warmed up, and every call ends in ``jax.block_until_ready`` on all outputs. Calls are interleaved —
``for rep: for impl: for mode: time one call``, with the implementations in a fresh (seeded) random
order each rep — so that drift on a shared machine, and whatever one call leaves behind for the next
(torch's OpenMP threads keep spinning for a while after a call), hits every implementation alike.
A rotation is not enough: it keeps the same neighbours, so the same implementation would always run
right after torch. Reported figures are medians.

With ``--dtype bfloat16`` every implementation computes in bfloat16 as its users would ask for it:
``jl.lstm`` on float32 params cast to bfloat16 in the timed function (as ``jl.LSTM(dtype=...)`` does),
``jl.LSTM(H, dtype=jnp.bfloat16)``, Flax's cells with ``dtype=jnp.bfloat16, param_dtype=jnp.float32``, and
``torch.nn.LSTM`` converted with ``.to(torch.bfloat16)``, each on bfloat16 inputs; float32 rows of
``jl.LSTM`` and torch run beside them (``jaxlstm.LSTM@float32``, ``torch@float32``), so the bfloat16/float32
ratios come from one run. The CPU's bfloat16 instructions (``amx_bf16``, ``avx512_bf16``) are recorded.

Each implementation is a small factory ``(shape, data) -> (fwd, fwdbwd)`` of zero-argument closures that
run one synchronous call. Implementations whose optional package (haiku, equinox, torch) is missing are
skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

DEFAULT_SHAPES = [(1, 256, 32, 128), (32, 128, 128, 256), (128, 64, 256, 512)]
QUICK_SHAPES = [(2, 8, 4, 8)]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("jaxlstm") is None:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)
MODES = ("fwd", "fwdbwd")
MODE_LABELS = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
BASELINE = "jaxlstm"


class Shape(NamedTuple):
    B: int
    T: int
    D: int
    H: int

    def __str__(self) -> str:
        return f"({self.B}, {self.T}, {self.D}, {self.H})"

    def fwd_flops(self) -> int:
        """2·B·T·(D+H)·4H: the two matmuls of every step (the gate nonlinearities are not counted)."""
        return 2 * self.B * self.T * (self.D + self.H) * 4 * self.H


class Data(NamedTuple):
    """The inputs every implementation gets (numpy, float32)."""

    xs: np.ndarray  # (B, T, D), batch-first
    cotangent: np.ndarray  # (B, T, H), the fixed weights of the scalar loss sum(outputs * cotangent)
    seed: int


def make_data(shape: Shape, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    return Data(
        xs=rng.standard_normal((shape.B, shape.T, shape.D), dtype=np.float32),
        cotangent=rng.standard_normal((shape.B, shape.T, shape.H), dtype=np.float32),
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------------
# JAX helpers


def _jax_closures(apply: Callable, params: Any, data: Data) -> tuple[Callable, Callable]:
    """(fwd, fwdbwd) closures for ``apply(params, xs) -> outputs (B, T, H)``.

    Both are compiled ahead of time; each closure carries its ``compile_s`` (lower + compile seconds).
    """
    import jax
    import jax.numpy as jnp

    xs = jnp.asarray(data.xs)
    ct = jnp.asarray(data.cotangent)
    params = jax.device_put(params)

    def loss(params, xs, ct):
        return jnp.sum(apply(params, xs).astype(jnp.float32) * ct)

    grad = jax.grad(loss, argnums=(0, 1))

    def compiled(fn, *args):
        start = time.perf_counter()
        executable = jax.jit(fn).lower(*args).compile()
        elapsed = time.perf_counter() - start

        def call():
            return jax.block_until_ready(executable(*args))

        call.compile_s = elapsed
        return call

    return compiled(apply, params, xs), compiled(grad, params, xs, ct)


# --precision: the matmuls' precision on a GPU (None: leave JAX's and torch's defaults alone).
PRECISION: str | None = None
# --dtype: the computation dtype of every implementation ("float32" or "bfloat16").
DTYPE = "float32"
DTYPES = ("float32", "bfloat16")


def _jax_dtype(dtype: str | None = None):
    """The JAX dtype of ``dtype`` (default: this run's ``--dtype``)."""
    import jax.numpy as jnp

    return jnp.dtype(dtype or DTYPE)


def _narrow(params, xs, dtype):
    """``params`` and ``xs`` cast to ``dtype`` inside the timed function (as ``jl.LSTM(dtype=...)`` does)."""
    import jax

    return jax.tree.map(lambda a: a.astype(dtype), params), xs.astype(dtype)


def _cudnn_precision() -> str:
    """jaxlstm's ``cudnn_precision`` for this run: TF32 only under ``--precision tf32``."""
    return "tf32" if PRECISION == "tf32" else "float32"


def make_jaxlstm(shape: Shape, data: Data):
    """``jl.lstm(params, xs)``: the functional core, batch-first (``backend="auto"``: cuDNN on a CUDA GPU)."""
    import jax

    import jaxlstm as jl

    params = jl.init_params(jax.random.key(data.seed), shape.D, shape.H)
    precision, dtype = _cudnn_precision(), _jax_dtype()

    def apply(p, xs):
        return jl.lstm(*_narrow(p, xs, dtype), cudnn_precision=precision)[1]

    return _jax_closures(apply, params, data)


def make_jaxlstm_variant(cell=None, **options):
    """``jl.lstm`` with per-step flags, another gradient or a member of the LSTM family: a mask that
    is all True, resets every 32 steps, ``gradient="autodiff"`` (JAX differentiating the scan instead
    of the fused backward pass), or ``cell``, the options of a ``jl.LSTMVariant`` (``proj_size`` as a
    fraction of H)."""

    def make(shape: Shape, data: Data):
        import jax
        import jax.numpy as jnp

        import jaxlstm as jl

        flags = {}
        if cell is None:
            params = jl.init_params(jax.random.key(data.seed), shape.D, shape.H)
        else:
            fields = dict(cell)
            if "proj_size" in fields:
                fields["proj_size"] = max(1, int(shape.H * fields["proj_size"]))
            flags["variant"] = jl.LSTMVariant(**fields)
            params = jl.init_variant_params(jax.random.key(data.seed), shape.D, shape.H, flags["variant"])
            if flags["variant"].proj_size is not None:  # the outputs are P wide: a cotangent of that width
                data = data._replace(cotangent=data.cotangent[..., : flags["variant"].proj_size])
        if options.get("mask"):
            flags["mask"] = jnp.ones((shape.B, shape.T), bool)
        if options.get("resets"):
            flags["resets"] = (jnp.arange(shape.T) % 32 == 0)[None].repeat(shape.B, axis=0)
        gradient = options.get("gradient", "fused")
        if "backend" in options:
            flags["backend"] = options["backend"]
        dtype = _jax_dtype()
        return _jax_closures(
            lambda p, xs: jl.lstm(*_narrow(p, xs, dtype), gradient=gradient, **flags)[1], params, data
        )

    return make


def make_jaxlstm_linen(shape: Shape, data: Data, dtype: str | None = None):
    """``jl.LSTM(H, dtype=...).apply(variables, xs)``: the flax.linen module (float32 params)."""
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    dtype = _jax_dtype(dtype)
    if dtype != jnp.float32:
        data = data._replace(xs=data.xs.astype(dtype))
    model = jl.LSTM(shape.H, cudnn_precision=_cudnn_precision(), dtype=None if dtype == jnp.float32 else dtype)
    variables = model.init(jax.random.key(data.seed), jnp.asarray(data.xs))
    return _jax_closures(model.apply, variables, data)


def _flax_rnn(cell_cls, shape: Shape, data: Data):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    dtype = _jax_dtype()
    if dtype == jnp.float32:
        model = nn.RNN(cell_cls(shape.H))
    else:  # Flax's mixed precision: float32 params, the computation in dtype
        model = nn.RNN(cell_cls(shape.H, dtype=dtype, param_dtype=jnp.float32))
        data = data._replace(xs=data.xs.astype(dtype))
    variables = model.init(jax.random.key(data.seed), jnp.asarray(data.xs))
    return _jax_closures(model.apply, variables, data)


def make_flax_optimized(shape: Shape, data: Data):
    """``flax.linen.RNN(OptimizedLSTMCell(H))``, batch-first."""
    import flax.linen as nn

    return _flax_rnn(nn.OptimizedLSTMCell, shape, data)


def make_flax_lstmcell(shape: Shape, data: Data):
    """``flax.linen.RNN(LSTMCell(H))``, batch-first."""
    import flax.linen as nn

    return _flax_rnn(nn.LSTMCell, shape, data)


def make_haiku(shape: Shape, data: Data):
    """``hk.dynamic_unroll(hk.LSTM(H), xs, time_major=False)``.

    Haiku scans time-major; with ``time_major=False`` it transposes the batch-first input to (T, B, D)
    and the output back to (B, T, H) inside the jitted function, so those transposes are timed.
    """
    import haiku as hk
    import jax
    import jax.numpy as jnp

    def forward(xs):
        core = hk.LSTM(shape.H)
        outputs, _ = hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[0]), time_major=False)
        return outputs

    model = hk.without_apply_rng(hk.transform(forward))
    params = model.init(jax.random.key(data.seed), jnp.asarray(data.xs))
    return _jax_closures(model.apply, params, data)


def make_equinox(shape: Shape, data: Data):
    """``eqx.nn.LSTMCell`` stepped by ``jax.lax.scan`` over one sequence, ``jax.vmap`` over the batch.

    Equinox modules are unbatched; vmapping the per-sequence scan over the batch-first input is the
    idiomatic adapter (vmap moves the batch axis inside the scan; that layout change is timed).
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    cell = eqx.nn.LSTMCell(shape.D, shape.H, key=jax.random.key(data.seed))
    params, static = eqx.partition(cell, eqx.is_array)

    def apply(params, xs):
        cell = eqx.combine(params, static)

        def one_sequence(seq):  # (T, D) -> (T, H)
            def step(carry, x):
                carry = cell(x, carry)
                return carry, carry[0]

            zeros = jnp.zeros((shape.H,), seq.dtype)
            return jax.lax.scan(step, (zeros, zeros), seq)[1]

        return jax.vmap(one_sequence)(xs)

    return _jax_closures(apply, params, data)


# Steps per projection GEMM in the floor's forward, as in jaxlstm's fused forward loop.
FLOOR_CHUNK_STEPS = 4


def make_gemm_floor(shape: Shape, data: Data):
    """The GEMMs alone: a lower bound on what any LSTM built from XLA:CPU dots can take at this shape.

    Not an LSTM. ``fwd`` runs the forward's matmuls: x·W_ih for every step (one GEMM per chunk of
    ``FLOOR_CHUNK_STEPS`` steps) and T dependent (B, H)·(H, 4H) products h·W_hh. ``fwd+bwd`` runs those
    and the backward's: T dependent (B, 4H)·(4H, H) products dz·W_hhᵀ and the three whole-sequence
    GEMMs dW_ih = Xᵀ·dZ, dW_hh = H_prevᵀ·dZ and dX = dZ·W_ihᵀ, with Xᵀ, H_prevᵀ and W_ihᵀ handed over
    already transposed. No gate math, no saved activations, no transposes, no zero-filled buffers:
    between two dependent products there is only a tanh of the (B, H) sum of the four gate blocks (so
    XLA can neither drop nor narrow a product), and every product's result reaches the outputs.
    """
    import jax
    import jax.numpy as jnp

    B, T, D, H = shape
    rows, gates = B * T, 4 * H
    rng = np.random.default_rng(data.seed)

    def normal(*dims, scale=1.0):
        return jnp.asarray(rng.standard_normal(dims, dtype=np.float32) * np.float32(scale))

    w_ih, w_hh = normal(D, gates, scale=D**-0.5), normal(H, gates, scale=H**-0.5)
    operands = {
        "w_ih": w_ih,
        "w_hh": w_hh,
        "w_ih_t": w_ih.T.copy(),
        "w_hh_t": w_hh.T.copy(),
        "xs": jnp.asarray(data.xs),
        "x_t": jnp.asarray(data.xs.reshape(rows, D).T.copy()),
        "h_t": normal(H, rows),
        "dz": normal(rows, gates),
        "h0": normal(B, H),
    }

    def blocks_sum(z):  # (B, 4H) -> (B, H): needs every column of the product
        return jnp.tanh(z[:, :H] + z[:, H : 2 * H] + z[:, 2 * H : 3 * H] + z[:, 3 * H :])

    size = max(1, min(T, FLOOR_CHUNK_STEPS))
    starts = jnp.arange(0, T - T % size, size, dtype=jnp.int32)

    def forward(ops):
        """Chunks of ``size`` steps as in jaxlstm's forward loop: one GEMM projects a chunk's inputs,
        then its steps run unrolled, each adding h·W_hh to its block of the projection."""

        def chunk(h, first, length):
            x = jax.lax.dynamic_slice_in_dim(ops["xs"], first, length, axis=1)
            projected = (x.reshape(-1, D) @ ops["w_ih"]).reshape(B, length, gates)
            for j in range(length):
                h = blocks_sum(projected[:, j] + h @ ops["w_hh"])
            return h

        h, _ = jax.lax.scan(lambda h, first: (chunk(h, first, size), None), ops["h0"], starts)
        return chunk(h, jnp.int32(T - T % size), T % size) if T % size else h

    def forward_backward(ops):
        h = forward(ops)

        def step(dh, _):  # dz (B, 4H) · W_hhᵀ (4H, H): the backward recurrence's product
            return jnp.tanh(jnp.tile(dh, (1, 4)) @ ops["w_hh_t"]), None

        dh, _ = jax.lax.scan(step, h, None, length=T)
        return dh, ops["x_t"] @ ops["dz"], ops["h_t"] @ ops["dz"], ops["dz"] @ ops["w_ih_t"]

    def compiled(fn):
        start = time.perf_counter()
        executable = jax.jit(fn).lower(operands).compile()
        elapsed = time.perf_counter() - start

        def call():
            return jax.block_until_ready(executable(operands))

        call.compile_s = elapsed
        call.jaxpr = jax.make_jaxpr(fn)(operands)  # for tests: which matmuls it runs
        return call

    return compiled(forward), compiled(forward_backward)


TORCH_THREADS = os.cpu_count() or 1  # --torch-threads


def make_torch(shape: Shape, data: Data, dtype: str | None = None):
    """``torch.nn.LSTM(D, H, batch_first=True)`` with ``torch.set_num_threads(TORCH_THREADS)``; in bfloat16
    the module is converted with ``.to(torch.bfloat16)`` and the inputs are bfloat16.

    The forward runs under ``torch.inference_mode()`` (no autograd graph, like a jitted JAX forward).
    """
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(data.seed)
    torch_dtype = getattr(torch, dtype or DTYPE)
    lstm = torch.nn.LSTM(shape.D, shape.H, batch_first=True).to(torch_dtype)
    params = list(lstm.parameters())
    xs = torch.from_numpy(data.xs.copy()).to(torch_dtype)
    ct = torch.from_numpy(data.cotangent.copy()).to(torch_dtype)

    def fwd():
        with torch.inference_mode():
            return lstm(xs)[0]

    def fwdbwd():
        x = xs.detach().requires_grad_(True)
        loss = (lstm(x)[0] * ct).sum()
        return torch.autograd.grad(loss, [*params, x])

    return fwd, fwdbwd


def make_jaxlstm_gru(shape: Shape, data: Data):
    """``jl.gru(params, xs)``: the GRU cell on jaxlstm's engine (``jl.rnn(jl.cells.GRU(), ...)``)."""
    import jax

    import jaxlstm as jl

    params = jl.init_gru_params(jax.random.key(data.seed), shape.D, shape.H)
    dtype = _jax_dtype()

    def apply(p, xs):
        return jl.gru(*_narrow(p, xs, dtype))[1]

    return _jax_closures(apply, params, data)


def make_flax_gru(shape: Shape, data: Data):
    """``flax.linen.RNN(GRUCell(H))``, batch-first."""
    import flax.linen as nn

    return _flax_rnn(nn.GRUCell, shape, data)


def make_torch_gru(shape: Shape, data: Data, dtype: str | None = None):
    """``torch.nn.GRU(D, H, batch_first=True)``, timed as ``make_torch`` times the LSTM."""
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(data.seed)
    torch_dtype = getattr(torch, dtype or DTYPE)
    gru = torch.nn.GRU(shape.D, shape.H, batch_first=True).to(torch_dtype)
    params = list(gru.parameters())
    xs = torch.from_numpy(data.xs.copy()).to(torch_dtype)
    ct = torch.from_numpy(data.cotangent.copy()).to(torch_dtype)

    def fwd():
        with torch.inference_mode():
            return gru(xs)[0]

    def fwdbwd():
        x = xs.detach().requires_grad_(True)
        loss = (gru(x)[0] * ct).sum()
        return torch.autograd.grad(loss, [*params, x])

    return fwd, fwdbwd


def make_torch_cuda(shape: Shape, data: Data):
    """``torch.nn.LSTM(D, H, batch_first=True)`` on CUDA (cuDNN), each call ending in ``torch.cuda.synchronize()``.

    TF32 follows ``--precision``: off for ``float32`` (``torch.backends.cudnn.allow_tf32 = False``, whose
    default is True), on for ``tf32``; torch's own defaults without it.
    """
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device here (torch.cuda.is_available() is False)")
    if PRECISION is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = PRECISION == "tf32"
    torch.manual_seed(data.seed)
    device = torch.device("cuda")
    torch_dtype = getattr(torch, DTYPE)  # --dtype bfloat16: the module converted to bfloat16
    lstm = torch.nn.LSTM(shape.D, shape.H, batch_first=True).to(device, torch_dtype)
    params = list(lstm.parameters())
    xs = torch.from_numpy(data.xs.copy()).to(device, torch_dtype)
    ct = torch.from_numpy(data.cotangent.copy()).to(device, torch_dtype)

    def fwd():
        with torch.inference_mode():
            out = lstm(xs)[0]
        torch.cuda.synchronize()
        return out

    def fwdbwd():
        x = xs.detach().requires_grad_(True)
        loss = (lstm(x)[0] * ct).sum()
        grads = torch.autograd.grad(loss, [*params, x])
        torch.cuda.synchronize()
        return grads

    return fwd, fwdbwd


class Impl(NamedTuple):
    factory: Callable[[Shape, Data], tuple[Callable, Callable]]
    requires: tuple[str, ...]  # importable modules it needs
    label: str  # what it is, for the notes under the tables


IMPLS: dict[str, Impl] = {
    "jaxlstm": Impl(make_jaxlstm, ("jax",), "`jl.lstm(params, xs)`"),
    "jaxlstm.LSTM": Impl(make_jaxlstm_linen, ("jax", "flax"), "`jl.LSTM(H).apply` (flax.linen)"),
    "jaxlstm+mask": Impl(make_jaxlstm_variant(mask=True), ("jax",), "`jl.lstm(..., mask=all True)`"),
    "jaxlstm+resets": Impl(make_jaxlstm_variant(resets=True), ("jax",), "`jl.lstm(..., resets=every 32 steps)`"),
    "jaxlstm.autodiff": Impl(
        make_jaxlstm_variant(gradient="autodiff"), ("jax",), '`jl.lstm(..., gradient="autodiff")`'
    ),
    "jaxlstm.xla": Impl(make_jaxlstm_variant(backend="xla"), ("jax",), '`jl.lstm(..., backend="xla")`'),
    **{
        f"jaxlstm+{name}": Impl(
            make_jaxlstm_variant(cell=cell, gradient=gradient),
            ("jax",),
            f"`jl.lstm(..., variant=jl.LSTMVariant({label}), gradient={gradient!r})`",
        )
        for name, cell, label, gradient in (
            ("peepholes", {"peepholes": True}, "peepholes=True", "fused"),
            ("layer_norm", {"layer_norm": True}, "layer_norm=True", "fused"),
            ("cell_clip", {"cell_clip": 3.0}, "cell_clip=3.0", "fused"),
            ("cifg", {"cifg": True}, "cifg=True", "fused"),
            ("proj_size", {"proj_size": 0.5}, "proj_size=H/2", "fused"),
            ("peepholes.autodiff", {"peepholes": True}, "peepholes=True", "autodiff"),
        )
    },
    "flax.OptimizedLSTMCell": Impl(make_flax_optimized, ("jax", "flax"), "`nn.RNN(nn.OptimizedLSTMCell(H))`"),
    "flax.LSTMCell": Impl(make_flax_lstmcell, ("jax", "flax"), "`nn.RNN(nn.LSTMCell(H))`"),
    "haiku": Impl(
        make_haiku, ("jax", "haiku"), "`hk.dynamic_unroll(hk.LSTM(H), xs, time_major=False)`, transposes timed"
    ),
    "equinox": Impl(make_equinox, ("jax", "equinox"), "`vmap` over batch of `lax.scan` of `eqx.nn.LSTMCell`"),
    "torch": Impl(make_torch, ("torch",), "`torch.nn.LSTM(batch_first=True)`, forward in `inference_mode`"),
    "torch.cuda": Impl(make_torch_cuda, ("torch",), "`torch.nn.LSTM(batch_first=True)` on CUDA (cuDNN)"),
    "jaxlstm.gru": Impl(make_jaxlstm_gru, ("jax",), "`jl.gru(params, xs)` (the GRU cell on jaxlstm's engine)"),
    "flax.GRUCell": Impl(make_flax_gru, ("jax", "flax"), "`nn.RNN(nn.GRUCell(H))`"),
    "torch.GRU": Impl(make_torch_gru, ("torch",), "`torch.nn.GRU(batch_first=True)`, forward in `inference_mode`"),
    "jaxlstm.LSTM@float32": Impl(
        functools.partial(make_jaxlstm_linen, dtype="float32"), ("jax", "flax"), "`jl.LSTM(H)` in float32"
    ),
    "torch@float32": Impl(functools.partial(make_torch, dtype="float32"), ("torch",), "`torch.nn.LSTM` in float32"),
    "xla.gemms": Impl(
        make_gemm_floor,
        ("jax",),
        "not an LSTM: only the matmuls an LSTM's fwd / fwd+bwd must run, as XLA:CPU dots (`make_gemm_floor`)",
    ),
}
JAX_ANCHORS = ("flax.OptimizedLSTMCell", "flax.LSTMCell", "haiku", "equinox")
# The LSTM family against the plain LSTM: run only when named in --impls (e.g. --family).
FAMILY = tuple(name for name in IMPLS if name.startswith("jaxlstm+") and name not in ("jaxlstm+mask", "jaxlstm+resets"))
# For GPU runs (benchmarks/gpu.sh), run only when named: on CPU jaxlstm's default already is its XLA loop.
GPU_ONLY = ("jaxlstm.xla", "torch.cuda")
# --dtype bfloat16: the float32 twins that give the bfloat16/float32 ratios of one run, run only then.
FLOAT32_TWINS = ("jaxlstm.LSTM@float32", "torch@float32")
# The GRU (--gru): run only when named, beside the LSTMs whose ratios it is compared with in the same run.
GRU_IMPLS = ("jaxlstm.gru", "flax.GRUCell", "torch.GRU")
DEFAULT_IMPLS = [
    name for name in IMPLS if name not in FAMILY + GPU_ONLY + FLOAT32_TWINS + GRU_IMPLS
]
# What --dtype bfloat16 runs by default: the implementations with a mixed-precision mode, and the twins.
BFLOAT16_IMPLS = ["jaxlstm", "jaxlstm.LSTM", "flax.OptimizedLSTMCell", "flax.LSTMCell", "torch", *FLOAT32_TWINS]
FLOOR = "xla.gemms"  # not an implementation: the matmuls alone


def missing_modules(name: str) -> list[str]:
    return [module for module in IMPLS[name].requires if importlib.util.find_spec(module) is None]


# ----------------------------------------------------------------------------------------------------
# Matmul throughput and the --check


def make_matmul(n: int) -> Callable:
    """A closure running one jitted (n, n) @ (n, n) float32 matmul (2·n³ FLOPs)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    executable = jax.jit(jnp.matmul).lower(a, b).compile()

    def call():
        return jax.block_until_ready(executable(a, b))

    return call


def check_against_flax(shape: Shape, data: Data) -> float:
    """Max |jl.lstm - nn.RNN(OptimizedLSTMCell)| on the same (converted) weights; raises if not close."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    xs = jnp.asarray(data.xs)
    model = nn.RNN(nn.OptimizedLSTMCell(shape.H))
    variables = model.init(jax.random.key(data.seed), xs)
    cell = variables["params"]["cell"]
    gates = ("i", "f", "g", "o")  # Flax's gate names; the order is jaxlstm's
    params = jl.LSTMParams(
        w_ih=jnp.concatenate([cell["i" + g]["kernel"] for g in gates], axis=1),
        w_hh=jnp.concatenate([cell["h" + g]["kernel"] for g in gates], axis=1),
        b=jnp.concatenate([cell["h" + g]["bias"] for g in gates]),
    )
    ours = np.asarray(jax.jit(lambda p, x: jl.lstm(p, x)[1])(params, xs))
    theirs = np.asarray(jax.jit(model.apply)(variables, xs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5, err_msg=f"jl.lstm vs flax at {shape}")
    return float(np.max(np.abs(ours - theirs)))


def jaxlstm_backend(shape: Shape) -> dict:
    """Where ``jl.lstm(params, xs)`` (the "jaxlstm" row) runs at this shape, and why: ``jl.backend_for``."""
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    params = jax.eval_shape(lambda: jl.init_params(jax.random.key(0), shape.D, shape.H))
    xs = jax.ShapeDtypeStruct((shape.B, shape.T, shape.D), jnp.float32)
    choice = jl.backend_for(params, xs, cudnn_precision=_cudnn_precision())
    return {"backend": choice.backend, "reason": choice.reason}


# ----------------------------------------------------------------------------------------------------
# Running


def _time_one(call: Callable) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _summary(samples: list[float]) -> dict:
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "min_ms": min(samples) * 1e3,
        "max_ms": max(samples) * 1e3,
        "iqr_ms": (quartiles[2] - quartiles[0]) * 1e3,
        "samples_ms": [s * 1e3 for s in samples],
    }


def bench_shape(shape: Shape, impls: list[str], *, reps: int, warmup: int, seed: int, matmul: Callable, log) -> dict:
    data = make_data(shape, seed)
    closures: dict[str, dict[str, Callable]] = {}
    errors: dict[str, str] = {}
    for name in impls:
        try:
            fwd, fwdbwd = IMPLS[name].factory(shape, data)
            for _ in range(warmup):
                fwd(), fwdbwd()
        except Exception as exc:  # one broken implementation must not sink the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"  {name}: FAILED ({errors[name].splitlines()[0][:200]})")
            log("".join(traceback.format_exception(exc))[-2000:])
            continue
        closures[name] = {"fwd": fwd, "fwdbwd": fwdbwd}
        compile_s = {mode: getattr(fn, "compile_s", None) for mode, fn in closures[name].items()}
        if compile_s["fwd"] is not None:
            log(f"  {name}: compiled in {compile_s['fwd']:.2f} s (fwd), {compile_s['fwdbwd']:.2f} s (fwd+bwd)")
        else:
            log(f"  {name}: ready")

    samples: dict[str, dict[str, list[float]]] = {name: {mode: [] for mode in MODES} for name in closures}
    matmul_samples: list[float] = []
    names = list(closures)
    order = random.Random(seed)
    gc_was_enabled = gc.isenabled()
    try:
        for rep in range(reps):
            gc.collect()
            gc.disable()
            matmul_samples.append(_time_one(matmul))
            for name in order.sample(names, len(names)):
                for mode in MODES:
                    samples[name][mode].append(_time_one(closures[name][mode]))
            if gc_was_enabled:
                gc.enable()
            log(f"  rep {rep + 1}/{reps} done")
    finally:
        if gc_was_enabled:
            gc.enable()

    flops = {"fwd": shape.fwd_flops(), "fwdbwd": 3 * shape.fwd_flops()}
    results = {}
    for name in names:
        entry = {}
        for mode in MODES:
            stats = _summary(samples[name][mode])
            stats["gflops"] = flops[mode] / (stats["median_ms"] * 1e-3) / 1e9
            entry[mode] = stats
        entry["compile_s"] = {mode: getattr(closures[name][mode], "compile_s", None) for mode in MODES}
        results[name] = entry
    return {
        "shape": shape._asdict(),
        "flops": flops,
        "impls": results,
        "ratios": ratios(results),
        "errors": errors,
        "matmul_samples_s": matmul_samples,
    }


def ratios(results: dict) -> dict:
    """median(jaxlstm) / median(other) per mode; < 1 means jaxlstm is faster."""
    out: dict[str, dict] = {}
    if BASELINE not in results:
        return out
    for mode in MODES:
        base = results[BASELINE][mode]["median_ms"]
        row: dict[str, Any] = {
            name: base / entry[mode]["median_ms"] for name, entry in results.items() if name != BASELINE
        }
        anchors = [name for name in JAX_ANCHORS if name in results]
        if anchors:
            fastest = min(anchors, key=lambda name: results[name][mode]["median_ms"])
            row["fastest_jax_anchor"] = {"impl": fastest, "ratio": base / results[fastest][mode]["median_ms"]}
        out[mode] = row
    return out


def _source_digest() -> str | None:
    """sha256 over jaxlstm's .py files, to tell which code a result came from (the tree may be uncommitted)."""
    import hashlib

    spec = importlib.util.find_spec("jaxlstm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    digest = hashlib.sha256()
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def machine_info() -> dict:
    cpu_model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("jax", "jaxlib", "flax", "haiku", "equinox", "torch", "jaxlstm"):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "?")
        except ImportError:
            versions[module] = None
    info = {
        "jaxlstm_source_sha256": _source_digest(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd": sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"}),
        # the instructions that make bfloat16 matmuls fast (none: XLA and oneDNN convert to float32)
        "bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16"}),
        "platform": platform.platform(),
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # The allocator decides whether every call's large buffers are fresh pages (see docs/performance.md).
        "allocator_env": {
            k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")
        },
    }
    with contextlib.suppress(ImportError):
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


# ----------------------------------------------------------------------------------------------------
# Tables


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def fmt(row: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


def _num(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def tables(report: dict, markdown: bool) -> str:
    shapes = report["results"]
    impls = [name for name in IMPLS if any(name in s["impls"] for s in shapes)]
    bold = (lambda s: f"**{s}**") if markdown else (lambda s: s)
    out = []

    def pair(entry: dict | None, key: str, fmt=_num) -> str:
        if entry is None:
            return "—"
        return " / ".join(fmt(entry[mode][key]) for mode in MODES)

    mm = report["matmul"]
    out.append(
        f"{bold('Time')} (ms, median of {report['config']['reps']}, fwd / fwd+bwd, "
        f"computing in {report['config']['dtype']}), (B, T, D, H); "
        f"XLA float32 matmul ({mm['n']}²) in the same run: {mm['gflops']:.0f} GFLOP/s median, "
        f"{mm['best_gflops']:.0f} best"
    )
    rows = [[str(Shape(**s["shape"]))] + [pair(s["impls"].get(n), "median_ms") for n in impls] for s in shapes]
    out.append(render(["(B, T, D, H)"] + impls, rows, markdown))

    if any(s["ratios"] for s in shapes):
        others = [n for n in impls if n != BASELINE]
        out.append(f"\n{bold('Ratio')} {BASELINE} / other (median time; < 1: {BASELINE} faster), fwd / fwd+bwd")
        rows = []
        for s in shapes:
            r = s["ratios"]
            if not r:
                continue
            row = [str(Shape(**s["shape"]))]
            row += [" / ".join(f"{r[m][n]:.2f}" for m in MODES) if n in r["fwd"] else "—" for n in others]
            if "fastest_jax_anchor" in r["fwd"]:
                row.append(
                    " / ".join(
                        f"{r[m]['fastest_jax_anchor']['ratio']:.2f} ({r[m]['fastest_jax_anchor']['impl']})"
                        for m in MODES
                    )
                )
            else:
                row.append("—")
            rows.append(row)
        out.append(render(["(B, T, D, H)"] + others + ["fastest flax/haiku/equinox"], rows, markdown))

    twins = [("jaxlstm.LSTM", "jaxlstm.LSTM@float32"), ("torch", "torch@float32"), ("jaxlstm.LSTM", "torch")]
    twins = [(a, b) for a, b in twins if a in impls and b in impls]
    if report["config"]["dtype"] != "float32" and twins:
        out.append(
            f"\n{bold('Ratios in one run')} (median time / median time, fwd / fwd+bwd; the names without "
            f"@float32 compute in {report['config']['dtype']})"
        )
        rows = [
            [str(Shape(**s["shape"]))]
            + [
                " / ".join(f"{s['impls'][a][m]['median_ms'] / s['impls'][b][m]['median_ms']:.2f}" for m in MODES)
                if a in s["impls"] and b in s["impls"]
                else "—"
                for a, b in twins
            ]
            for s in shapes
        ]
        out.append(render(["(B, T, D, H)"] + [f"{a} / {b}" for a, b in twins], rows, markdown))

    if any(FLOOR in s["impls"] for s in shapes):
        others = [n for n in impls if n != FLOOR]
        out.append(
            f"\n{bold('Over the GEMM floor')} (median time / {FLOOR} median time, fwd / fwd+bwd; "
            f"1 would be matmuls alone, at the rate XLA:CPU gives them)"
        )
        rows = []
        for s in shapes:
            floor = s["impls"].get(FLOOR)
            row = [str(Shape(**s["shape"]))]
            for n in others:
                entry = s["impls"].get(n)
                if floor is None or entry is None:
                    row.append("—")
                else:
                    row.append(" / ".join(f"{entry[m]['median_ms'] / floor[m]['median_ms']:.2f}" for m in MODES))
            rows.append(row)
        out.append(render(["(B, T, D, H)"] + others, rows, markdown))

    out.append(
        f"\n{bold('Throughput')} (GFLOP/s achieved, fwd / fwd+bwd; fwd = 2·B·T·(D+H)·4H FLOPs, fwd+bwd = 3×; "
        f"XLA matmul here {mm['gflops']:.0f} median, {mm['best_gflops']:.0f} best)"
    )
    rows = [
        [str(Shape(**s["shape"]))] + [pair(s["impls"].get(n), "gflops", lambda v: f"{v:.3g}") for n in impls]
        for s in shapes
    ]
    out.append(render(["(B, T, D, H)"] + impls, rows, markdown))

    jax_impls = [n for n in impls if any((s["impls"].get(n) or {}).get("compile_s", {}).get("fwd") for s in shapes)]
    if jax_impls:
        out.append(f"\n{bold('Compile')} (s, jit lower + compile, fwd / fwd+bwd; one sample each)")
        rows = [
            [str(Shape(**s["shape"]))]
            + [
                " / ".join(f"{s['impls'][n]['compile_s'][m]:.2f}" for m in MODES) if n in s["impls"] else "—"
                for n in jax_impls
            ]
            for s in shapes
        ]
        out.append(render(["(B, T, D, H)"] + jax_impls, rows, markdown))

    notes = [f"{n}: {IMPLS[n].label}" for n in impls]
    for name in ("torch", "torch@float32"):
        if name in impls:
            notes[impls.index(name)] += f", `torch.set_num_threads({report['config']['torch_threads']})`"
    notes += [f"{n}: skipped ({why})" for n, why in report["skipped"].items()]
    for s in shapes:
        notes += [f"{n} at {Shape(**s['shape'])}: FAILED ({e.splitlines()[0][:160]})" for n, e in s["errors"].items()]
    spreads = [
        (e[mode]["iqr_ms"] / e[mode]["median_ms"], name, s_["shape"], mode)
        for s_ in shapes
        for name, e in s_["impls"].items()
        for mode in MODES
    ]
    if spreads:
        worst = max(spreads)
        notes.append(
            f"noise: largest IQR/median {worst[0]:.0%} ({worst[1]} {MODE_LABELS[worst[3]]} at {Shape(**worst[2])}); "
            f"median IQR/median {statistics.median(v[0] for v in spreads):.0%}; samples in the JSON"
        )
    if report.get("check"):
        notes.append(
            "check: jl.lstm == flax RNN(OptimizedLSTMCell) on converted weights, max |diff| "
            + ", ".join(f"{v:.1e} at {k}" for k, v in report["check"].items())
        )
    m = report["machine"]
    notes.append(
        f"machine: {m['cpu_model']}, {m['cpus_usable']} usable cores ({', '.join(m['simd'])}); "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    )
    notes.append(
        "bfloat16 instructions of this CPU (/proc/cpuinfo flags): "
        + (", ".join(m.get("bf16_instructions") or []) or "none (bfloat16 dots are converted to float32)")
    )
    allocator = m.get("allocator_env") or {}
    notes.append(
        "allocator: " + (", ".join(f"{k}={v}" for k, v in sorted(allocator.items())) or "the C library's defaults")
    )
    out.append("\n" + "\n".join(("- " if markdown else "  ") + n for n in notes))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# CLI


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for part in text.split(";"):
        if part.strip():
            values = [int(v) for v in part.replace("(", "").replace(")", "").split(",") if v.strip()]
            if len(values) != 4 or min(values) < 1:
                raise argparse.ArgumentTypeError(f"a shape is four positive ints B,T,D,H; got {part!r}")
            shapes.append(Shape(*values))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def parse_impls(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown implementations {unknown}; choose from {list(IMPLS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", type=parse_shapes, help=f'"B,T,D,H;B,T,D,H" (default: {DEFAULT_SHAPES})')
    p.add_argument("--reps", type=int, help="timed calls per implementation and mode (default 7; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after compiling (default 3)")
    p.add_argument("--impls", type=parse_impls, default=DEFAULT_IMPLS, help=f"comma-separated subset of {list(IMPLS)}")
    p.add_argument("--family", action="store_true", help=f"only jaxlstm and the LSTM family: {', '.join(FAMILY)}")
    p.add_argument(
        "--gru",
        action="store_true",
        help=f"the GRU ({', '.join(GRU_IMPLS)}) beside jaxlstm, flax.OptimizedLSTMCell and torch (the LSTM's ratios)",
    )
    p.add_argument("--matmul-size", type=int, default=None, help="n of the n×n matmul (default 2048; --quick 256)")
    p.add_argument("--json", metavar="PATH", help="write machine-readable results here")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--quick", action="store_true", help="CI smoke run: shape (2, 8, 4, 8), 2 reps, small matmul")
    p.add_argument("--check", action="store_true", help="first check jl.lstm == flax OptimizedLSTMCell per shape")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default os.cpu_count())")
    p.add_argument(
        "--precision",
        choices=("float32", "tf32"),
        default=None,
        help="GPU matmul precision: JAX's default_matmul_precision, jaxlstm's cudnn_precision, torch's TF32 "
        "flags (default: leave each library's own default)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="the computation dtype; bfloat16 runs jaxlstm, Flax and torch in bfloat16 beside float32 twins "
        "of jl.LSTM and torch (default impls then: " + ",".join(BFLOAT16_IMPLS) + ")",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    shapes = args.shapes or [Shape(*s) for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)]
    reps = args.reps if args.reps is not None else (2 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else 3  # torch's first calls are slow (thread pools)
    matmul_n = args.matmul_size or (256 if args.quick else 2048)
    if reps < 1:
        raise SystemExit("--reps must be at least 1")
    global TORCH_THREADS, PRECISION, DTYPE
    TORCH_THREADS = args.torch_threads or os.cpu_count() or 1
    PRECISION = args.precision
    DTYPE = args.dtype
    if DTYPE != "float32" and args.impls is DEFAULT_IMPLS and not args.family:
        args.impls = BFLOAT16_IMPLS

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    skipped = {}
    impls = []
    chosen = ["jaxlstm", *FAMILY] if args.family else args.impls
    if args.gru:
        chosen = ["jaxlstm", "flax.OptimizedLSTMCell", "torch", *GRU_IMPLS]
    for name in chosen:
        missing = missing_modules(name)
        if missing:
            skipped[name] = f"{', '.join(missing)} not installed"
            log(f"skipping {name}: {skipped[name]}")
        else:
            impls.append(name)

    import jax

    if args.precision is not None:  # XLA's float32 dots (jaxlstm's XLA loop, flax, the matmul reference)
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if args.precision == "tf32" else "float32")
    matmul = make_matmul(matmul_n)
    check = {}
    results = []
    for shape in shapes:
        log(f"shape (B, T, D, H) = {shape}")
        if args.check:
            check[str(shape)] = check_against_flax(shape, make_data(shape, args.seed))
            log(f"  check: jl.lstm matches flax OptimizedLSTMCell (max |diff| {check[str(shape)]:.1e})")
        results.append(bench_shape(shape, impls, reps=reps, warmup=warmup, seed=args.seed, matmul=matmul, log=log))
        results[-1]["jaxlstm_backend"] = jaxlstm_backend(shape)

    matmul_samples = [s for r in results for s in r.pop("matmul_samples_s")]
    matmul_median = statistics.median(matmul_samples)
    report = {
        "machine": machine_info(),
        "config": {
            "shapes": [list(s) for s in shapes],
            "reps": reps,
            "warmup": warmup,
            "impls": impls,
            "quick": args.quick,
            "seed": args.seed,
            "dtype": DTYPE,
            "loss": "sum(outputs * fixed random cotangent), grads w.r.t. params and inputs",
            "device": str(jax.devices()[0]),
            "device_kind": jax.devices()[0].device_kind,
            "precision": args.precision,
            "torch_threads": TORCH_THREADS if any(n.startswith("torch") for n in impls) else None,
        },
        "skipped": skipped,
        "matmul": {
            "n": matmul_n,
            "median_ms": matmul_median * 1e3,
            "gflops": 2 * matmul_n**3 / matmul_median / 1e9,
            "best_gflops": 2 * matmul_n**3 / min(matmul_samples) / 1e9,
            "samples_ms": [s * 1e3 for s in matmul_samples],
        },
        "check": check,
        "results": results,
    }
    print(tables(report, args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        log(f"wrote {args.json}")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
