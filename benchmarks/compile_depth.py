"""Compile time against depth: ``jax.jit(jax.grad(...))`` lower + compile of jaxlstm and Flax stacks.

Research code recompiles often, and layers 2..N of a stack have identical
shapes: ``jl.stacked_lstm`` runs them (and layer 0, when it reads D <= F
features) under one ``lax.scan`` over stacked weights, so compiling an
N-layer stack costs about what one layer costs. This script measures it, for
jaxlstm and for Flax ``nn.RNN(OptimizedLSTMCell)`` stacks, unidirectional and
bidirectional, in one process with the configurations interleaved and
repeated (medians; every compile is a fresh function, so nothing is cached).

    python benchmarks/compile_depth.py                    # (8, 64, 64) -> 128, depths 1 2 4 8, 3 reps
    python benchmarks/compile_depth.py --quick            # CI smoke: tiny shapes, depths 1 3, 1 rep
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def _jaxlstm_loss(depth: int, bidirectional: bool, batch: int, time_steps: int, input_size: int, hidden: int):
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    stack = jl.init_stack(jax.random.key(0), input_size, hidden, num_layers=depth, bidirectional=bidirectional)
    xs = jnp.ones((batch, time_steps, input_size))
    return (lambda stack, xs: jnp.sum(jl.stacked_lstm(stack, xs)[1])), (stack, xs)


def _flax_loss(depth: int, bidirectional: bool, batch: int, time_steps: int, input_size: int, hidden: int):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, xs):
            for _ in range(depth):
                if bidirectional:
                    xs = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(hidden)), nn.RNN(nn.OptimizedLSTMCell(hidden)))(
                        xs
                    )
                else:
                    xs = nn.RNN(nn.OptimizedLSTMCell(hidden))(xs)
            return xs

    xs = jnp.ones((batch, time_steps, input_size))
    model = Stack()
    variables = model.init(jax.random.key(0), xs)
    return (lambda variables, xs: jnp.sum(model.apply(variables, xs))), (variables, xs)


IMPLS = {"jaxlstm": _jaxlstm_loss, "flax": _flax_loss}


def compile_seconds(impl: str, depth: int, bidirectional: bool, shape) -> float:
    import jax

    loss, args = IMPLS[impl](depth, bidirectional, *shape)
    grad = jax.jit(jax.grad(lambda *a: loss(*a)))  # a fresh function: nothing cached
    start = time.perf_counter()
    grad.lower(*args).compile()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="1,2,4,8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--shape", default="8,64,64,128", help="B,T,D,H")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    shape = tuple(int(n) for n in args.shape.split(","))
    reps = args.reps
    if args.quick:
        depths, shape, reps = [1, 3], (2, 4, 3, 4), 1
    configs = [(impl, d, bi) for impl in IMPLS for d in depths for bi in (False, True)]
    samples = {c: [] for c in configs}
    order = random.Random(args.seed)
    for _ in range(reps):
        for config in order.sample(configs, len(configs)):
            samples[config].append(compile_seconds(*config, shape))
    median = {c: statistics.median(s) for c, s in samples.items()}
    print(f"jit(grad) lower + compile, seconds (median of {reps}), (B, T, D, H) = {shape}; ratio to 1 layer")
    print("| depth | jaxlstm | jaxlstm bidir | flax | flax bidir |")
    print("|---|---|---|---|---|")
    for d in depths:
        cells = []
        for impl in IMPLS:
            for bi in (False, True):
                base = median[(impl, depths[0], bi)]
                cells.append(f"{median[(impl, d, bi)]:.2f} ({median[(impl, d, bi)] / base:.2f}x)")
        print(f"| {d} | " + " | ".join(cells) + " |")
    return median


if __name__ == "__main__":
    main()
