"""How far bfloat16 drifts from float32 over long sequences, for the plain LSTM and every variant.

    python benchmarks/precision_numerics.py                 # T = 1000 and 2000, seeds 0-3, markdown table
    python benchmarks/precision_numerics.py --steps 200 --seeds 1
    python benchmarks/precision_numerics.py --gradients --steps 300 1000   # the training gradients instead

For each cell, ``jl.LSTM(16, dtype=jnp.bfloat16, variant=...)`` and its float32 twin run on the same
float32 variables and inputs ``(4, T, 8)`` (standard normal); the table gives max |h_bf16 - h_f32| over
every step, unit and sequence, the largest over the seeds, and the range over the seeds. One more
row measures layer norm's own sensitivity in float32: the same cell, its input multiplied by
(1 + 1e-6), against the unperturbed run.

With ``--gradients``: the gradient of ``sum(h · w)`` (``w`` fixed, standard normal) with respect to the
params and the inputs of ``jl.lstm`` in bfloat16 against the same gradient in float64 on the same
bfloat16-rounded params and inputs; per gradient, max |g_bf16 - g_f64| relative to its largest entry,
the largest over the gradients, then over the seeds (the range over the seeds beside it).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm as jl

VARIANTS = {
    "plain": None,
    "peepholes": jl.LSTMVariant(peepholes=True),
    "proj_size=8": jl.LSTMVariant(proj_size=8),
    "cifg": jl.LSTMVariant(cifg=True),
    "forget_bias=1": jl.LSTMVariant(forget_bias=1.0),
    "cell_clip=3": jl.LSTMVariant(cell_clip=3.0),
    "zoneout 0.1/0.1": jl.LSTMVariant(zoneout_h=0.1, zoneout_c=0.1),
    "layer_norm": jl.LSTMVariant(layer_norm=True),
}
HIDDEN, BATCH, FEATURES = 16, 4, 8


def drift(variant, steps: int, seed: int, *, perturb: float | None = None) -> float:
    """max |h_bf16 - h_f32| (or, with ``perturb``, float32 against float32 on inputs times 1 + perturb)."""
    xs = jax.random.normal(jax.random.key(1000 + seed), (BATCH, steps, FEATURES))
    reference = jl.LSTM(HIDDEN, variant=variant)
    variables = reference.init(jax.random.key(seed), xs[:, :2])
    if perturb is None:
        other, other_xs = jl.LSTM(HIDDEN, variant=variant, dtype=jnp.bfloat16), xs
    else:
        other, other_xs = reference, xs * (1.0 + perturb)
    want = jax.jit(reference.apply)(variables, xs)
    got = jax.jit(other.apply)(variables, other_xs).astype(jnp.float32)
    return float(jnp.max(jnp.abs(got - want)))


def gradient_error(variant, steps: int, seed: int) -> float:
    """max over the gradients (params, inputs) of max |g_bf16 - g_f64| / max |g_f64|, on the same rounded values."""
    make = jl.init_params if variant is None else lambda key, d, h: jl.init_variant_params(key, d, h, variant)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), make(jax.random.key(seed), FEATURES, HIDDEN))
    xs = jax.random.normal(jax.random.key(1000 + seed), (BATCH, steps, FEATURES)).astype(jnp.bfloat16)
    options = {} if variant is None else {"variant": variant}
    weights = jax.random.normal(jax.random.key(2000 + seed), (BATCH, steps, variant_width(variant)))

    def gradients(params, xs):
        def loss(params, xs):
            hs = jl.lstm(params, xs, **options)[1]
            return jnp.sum(hs.astype(weights.dtype) * weights)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, xs)

    got = gradients(params, xs)
    with jax.enable_x64(True):
        wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, xs))
        weights = weights.astype(jnp.float64)
        want = jax.tree.map(np.asarray, gradients(*wide))
    errors = [
        float(np.max(np.abs(np.asarray(g, np.float64) - w))) / max(float(np.max(np.abs(w))), 1e-30)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]
    return max(errors)


def variant_width(variant) -> int:
    """The width of the outputs h: the projection's, else the hidden size."""
    return HIDDEN if variant is None else variant.recurrent_size(HIDDEN)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--gradients", action="store_true", help="bfloat16 gradients against float64 (relative)")
    args = p.parse_args(argv)
    if args.gradients:
        return gradient_table(args)
    header = ["cell"] + [f"T = {t}: max (range over {args.seeds} seeds)" for t in args.steps]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    rows = [(name, variant, None) for name, variant in VARIANTS.items()]
    rows.append(("layer_norm, float32, input x (1 + 1e-6)", VARIANTS["layer_norm"], 1e-6))
    for name, variant, perturb in rows:
        cells = []
        for steps in args.steps:
            values = [drift(variant, steps, seed, perturb=perturb) for seed in range(args.seeds)]
            cells.append(f"{max(values):.2e} ({min(values):.1e}-{max(values):.1e})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


def gradient_table(args) -> int:
    header = ["cell"] + [f"T = {t}: max (range over {args.seeds} seeds)" for t in args.steps]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, variant in VARIANTS.items():
        cells = []
        for steps in args.steps:
            values = [gradient_error(variant, steps, seed) for seed in range(args.seeds)]
            cells.append(f"{max(values):.2e} ({min(values):.1e}-{max(values):.1e})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
