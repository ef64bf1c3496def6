"""GEMM rates in float32 and bfloat16 on this CPU: XLA (three ways) against torch.

    python benchmarks/gemm_rates.py            # the three GEMMs of docs/performance.md, medians of 15, markdown

For each (M, K, N): XLA float32; XLA bfloat16 -> bfloat16; XLA bfloat16 -> float32
(``preferred_element_type=jnp.float32``, what ``jaxlstm.precision.matmul`` runs); torch float32 and
bfloat16. Then one step's h·W_hh inside a ``lax.scan`` of 128 steps, float32 against bfloat16 -> float32.
Every figure is interleaved with the others in one process; the CPU's bfloat16 instructions are printed.

    python benchmarks/gemm_rates.py --hide-cpuid bf16                 # as on a CPU without bf16 dot instructions
    python benchmarks/gemm_rates.py --hide-cpuid avx512 -- python benchmarks/compare.py ...   # an AVX2-only CPU

``--hide-cpuid`` emulates an older CPU on this one (x86-64 Linux with CPUID faulting, ``cpuid_fault`` in
/proc/cpuinfo, and a C compiler): it builds a small LD_PRELOAD library that makes every CPUID instruction of
the process trap and answers it with the real result minus the hidden bits, then runs this script (or the
command after ``--``) under it. ``bf16`` hides AVX512_BF16, AVX-NE-CONVERT, AMX (BF16, FP16, INT8, TILE) and
AVX512_FP16; ``avx512`` hides those and every AVX-512 bit. XLA's dots run in YNNPACK, which picks its
kernels from CPUID at run time: ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` does not reach them (measured: bfloat16
dots kept their rate under it), CPUID does. /proc/cpuinfo is the kernel's and still lists every flag, so
``jaxlstm.precision.narrow_dots`` must be told what it would pick there: ``JAXLSTM_NARROW_DOTS=float32``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
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


HIDE_CPUID_C = r"""
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#define ARCH_SET_CPUID 0x1012
static int level; /* 1: bf16, 2: avx512 */
static void on_segv(int sig, siginfo_t *info, void *context) {
  greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) { signal(SIGSEGV, SIG_DFL); return; } /* a real fault */
  unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  __cpuid_count(leaf, sub, a, b, c, d);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  if (leaf == 7 && sub == 0) {
    d &= ~((1u << 22) | (1u << 23) | (1u << 24) | (1u << 25)); /* AMX-BF16, AVX512_FP16, AMX-TILE, AMX-INT8 */
    if (level >= 2) { /* AVX-512 F DQ IFMA PF ER CD BW VL; VBMI VBMI2 VNNI BITALG VPOPCNTDQ; 4VNNIW 4FMAPS VP2I */
      b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
      c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
      d &= ~((1u << 2) | (1u << 3) | (1u << 8));
    }
  }
  if (leaf == 7 && sub == 1) {
    a &= ~((1u << 5) | (1u << 21)); /* AVX512_BF16, AMX-FP16 */
    d &= ~(1u << 5);                /* AVX-NE-CONVERT */
  }
  r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d; r[REG_RIP] += 2;
}
__attribute__((constructor)) static void init(void) {
  const char *hide = getenv("HIDE_CPUID");
  if (!hide || !*hide) return;
  level = strcmp(hide, "avx512") == 0 ? 2 : 1;
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, 0);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    static const char msg[] = "hide-cpuid: this kernel or CPU has no CPUID faulting\n";
    (void)!write(2, msg, sizeof msg - 1); _exit(3);
  }
}
"""


def run_with_hidden_cpuid(level: str, command: list[str]) -> int:
    """Run ``command`` (default: this script) with CPUID bits hidden (``level``: ``bf16`` or ``avx512``)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("--hide-cpuid needs a C compiler (cc or gcc) on PATH")
    build = pathlib.Path(tempfile.mkdtemp(prefix="hide-cpuid-"))
    (build / "hide_cpuid.c").write_text(HIDE_CPUID_C)
    library = build / "hide_cpuid.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(build / "hide_cpuid.c")], check=True)
    env = {**os.environ, "HIDE_CPUID": level, "LD_PRELOAD": str(library)}
    return subprocess.run(command or [sys.executable, __file__], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hide-cpuid", choices=["bf16", "avx512"], help="emulate a CPU without these (see above)")
    parser.add_argument("command", nargs="*", help="with --hide-cpuid: run this instead of the GEMM rates (after --)")
    args = parser.parse_args(argv)
    if args.hide_cpuid:
        return run_with_hidden_cpuid(args.hide_cpuid, args.command)
    if args.command:
        parser.error("a command is run only with --hide-cpuid")
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
    hidden = f" (hidden from CPUID here: {os.environ['HIDE_CPUID']})" if os.environ.get("HIDE_CPUID") else ""
    print(f"GFLOP/s, medians of {REPS}, interleaved; bfloat16 instructions: {bf16_flags()}{hidden}\n")
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
