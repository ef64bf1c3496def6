"""Peak memory of one training step on one long sequence, with and without ``checkpoint_every``.

    python benchmarks/long_sequence.py --time 100000 --batch 8 --size 256 --checkpoint-every 1000

Runs the gradient of a scalar loss w.r.t. the parameters (the usual training
step; ``--loss last``: of the last step's output, ``--loss all``: of every
step's output) in a fresh process and reports that process's peak
resident memory (``ru_maxrss``) and the wall time. The input itself, float32
(B, T, D), is part of the peak: 819 MB at the default shape.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlstm as jl

    params = jl.init_params(jax.random.key(0), args.size, args.size)
    # The data as a user would hold it: one float32 array, drawn without a float64 or bits temporary.
    host = np.random.default_rng(1).standard_normal((args.batch, args.time, args.size), dtype=np.float32)
    xs = jax.device_put(host)
    del host
    gc.collect()
    rss_before_mb = _rss_mb()

    @jax.jit
    def train_step(params, xs):
        def loss(params):
            final, hs = jl.lstm(params, xs, checkpoint_every=args.checkpoint_every)
            if args.loss == "last":  # sequence classification/regression: the last step's output
                return jnp.mean(final.h**2)
            return jnp.mean(hs**2)  # every step's output: (B, T, H) and its cotangent must exist

        return jax.value_and_grad(loss)(params)

    start = time.perf_counter()
    value, grads = jax.block_until_ready(train_step(params, xs))
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    compiled = train_step.lower(params, xs).compile().memory_analysis()
    return {
        "time": args.time,
        "batch": args.batch,
        "size": args.size,
        "checkpoint_every": args.checkpoint_every,
        "loss_on": args.loss,
        "peak_rss_mb": round(peak_mb),
        "rss_before_step_mb": round(rss_before_mb),
        "input_mb": round(xs.nbytes / 2**20),
        "xla_temp_mb": round(compiled.temp_size_in_bytes / 2**20) if compiled else None,
        "seconds": round(elapsed, 1),
        "loss": float(value),
        "grad_finite": bool(all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="D = H")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="0: no checkpointing")
    parser.add_argument("--loss", choices=["last", "all"], default="last", help="loss on the last output or on all")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.checkpoint_every == 0:
        args.checkpoint_every = None
    if args.child:
        print(json.dumps(run_one(args)))
        return 0
    command = [sys.executable, __file__, "--child", "--time", str(args.time), "--batch", str(args.batch)]
    command += ["--size", str(args.size), "--checkpoint-every", str(args.checkpoint_every or 0), "--loss", args.loss]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return result.returncode
    print(result.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
