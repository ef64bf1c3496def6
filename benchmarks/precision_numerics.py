"""How far bfloat16 drifts from float32 over long sequences, for the plain LSTM and every variant.

    python benchmarks/precision_numerics.py                 # T = 1000 and 2000, seeds 0-3, markdown table
    python benchmarks/precision_numerics.py --steps 200 --seeds 1

For each cell, ``jl.LSTM(16, dtype=jnp.bfloat16, variant=...)`` and its float32 twin run on the same
float32 variables and inputs ``(4, T, 8)`` (standard normal); the table gives max |h_bf16 - h_f32| over
every step, unit and sequence, the largest over the seeds, and the range over the seeds. One more
row measures layer norm's own sensitivity in float32: the same cell, its input multiplied by
(1 + 1e-6), against the unperturbed run.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--seeds", type=int, default=4)
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
