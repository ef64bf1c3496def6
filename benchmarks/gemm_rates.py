"""GEMM rates in float32 and bfloat16 on this CPU: XLA (three ways) against torch.

    python benchmarks/gemm_rates.py            # the three GEMMs of docs/performance.md, medians of 15, markdown

For each (M, K, N): XLA float32; XLA bfloat16 -> bfloat16; XLA bfloat16 -> float32
(``preferred_element_type=jnp.float32``, what ``jaxlstm.precision.matmul`` runs); torch float32 and
bfloat16. Then one step's h·W_hh inside a ``lax.scan`` of 128 steps, float32 against bfloat16 -> float32.
Every figure is interleaved with the others in one process; the CPU's bfloat16 instructions are printed.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [(2048, 2048, 2048), (4096, 128, 1024), (32, 256, 1024)]
LABELS = {(4096, 128, 1024): " (input projection)", (32, 256, 1024): " (one step's h·W_hh)"}
REPS = 15


def bf16_flags() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})) or "none"
    return "unknown"


def xla_gemm(m, k, n, dtype, out):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, k)), dtype)
    b = jnp.asarray(rng.standard_normal((k, n)), dtype)
    dot = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=out))
    executable = dot.lower(a, b).compile()
    return lambda: jax.block_until_ready(executable(a, b))


def torch_gemm(m, k, n, dtype):
    import torch

    a = torch.randn(m, k).to(getattr(torch, dtype))
    b = torch.randn(k, n).to(getattr(torch, dtype))
    return lambda: a @ b


def scan_of_steps(dtype):
    """128 steps of (32, 256) · (256, 1024) in a lax.scan, h fed back (as an LSTM's recurrence)."""
    w = jnp.asarray(np.random.default_rng(1).standard_normal((256, 1024)) * 0.05, dtype)
    h0 = jnp.zeros((32, 256), dtype)

    def run(w, h0):
        def step(h, _):
            z = jax.lax.dot_general(h, w, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            return jnp.tanh(z[:, :256]).astype(dtype), None

        return jax.lax.scan(step, h0, None, length=128)[0]

    executable = jax.jit(run).lower(w, h0).compile()
    return lambda: jax.block_until_ready(executable(w, h0))


def main() -> int:
    calls = {}
    for m, k, n in SHAPES:
        calls[(m, k, n, "XLA f32")] = xla_gemm(m, k, n, jnp.float32, jnp.float32)
        calls[(m, k, n, "XLA bf16 -> bf16")] = xla_gemm(m, k, n, jnp.bfloat16, jnp.bfloat16)
        calls[(m, k, n, "XLA bf16 -> f32")] = xla_gemm(m, k, n, jnp.bfloat16, jnp.float32)
        calls[(m, k, n, "torch f32")] = torch_gemm(m, k, n, "float32")
        calls[(m, k, n, "torch bf16")] = torch_gemm(m, k, n, "bfloat16")
    calls[("scan", "f32")] = scan_of_steps(jnp.float32)
    calls[("scan", "bf16 -> f32")] = scan_of_steps(jnp.bfloat16)
    for call in calls.values():
        call(), call()
    samples = {name: [] for name in calls}
    for _ in range(REPS):
        for name in random.sample(list(calls), len(calls)):
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in samples.items()}
    columns = ["XLA f32", "XLA bf16 -> bf16", "XLA bf16 -> f32", "torch f32", "torch bf16"]
    print(f"GFLOP/s, medians of {REPS}, interleaved; bfloat16 instructions: {bf16_flags()}\n")
    print("| GEMM | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1))
    for m, k, n in SHAPES:
        rates = [2 * m * k * n / median[(m, k, n, c)] / 1e9 for c in columns]
        print(f"| {m}x{k}x{n}{LABELS.get((m, k, n), '')} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")
    print(
        f"\nlax.scan of 128 steps of (32, 256)·(256, 1024): f32 {median[('scan', 'f32')] * 1e3:.1f} ms, "
        f"bf16 -> f32 {median[('scan', 'bf16 -> f32')] * 1e3:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
