"""jaxlstm quick start: a 2-layer LSTM and a Dense head, with the shape printed at every stage.

Run with:  python examples/quickstart.py

An LSTM layer is one cell applied once per time step. ``features`` (Keras' ``units``) is H,
the size of the state vector the cell carries from step to step, not a number of cells or of steps.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxlstm as jl

BATCH, TIME, INPUT = 4, 10, 8  # x is (batch, time, input)
UNITS, CLASSES = 32, 3


class SequenceClassifier(nn.Module):
    """x (batch, time, input) -> 2-layer LSTM -> last step -> Dense -> logits (batch, classes)."""

    units: int
    classes: int

    @nn.compact
    def __call__(self, x, *, verbose: bool = False):
        sequences = jl.LSTM(features=self.units, num_layers=2, name="lstm")(x)
        # No padding here, so the last step is index -1; jl.LSTM(..., return_sequences=False) gives it directly.
        last = sequences[..., -1, :]
        logits = nn.Dense(features=self.classes, name="head")(last)
        if verbose:
            print(f"  input                      (batch, time, input)  {x.shape}")
            print(f"  LSTM output, every step    (batch, time, units)  {sequences.shape}")
            print(f"  last time step             (batch, units)        {last.shape}")
            print(f"  Dense output (logits)      (batch, classes)      {logits.shape}")
        return logits


def show_params(tree) -> None:
    """Prints every parameter's path and shape."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        print(f"  {name:<24} {leaf.shape}")


def main() -> None:
    x = jax.random.normal(jax.random.key(0), (BATCH, TIME, INPUT))
    model = SequenceClassifier(units=UNITS, classes=CLASSES)
    variables = model.init(jax.random.key(1), x)

    print(f"linen model: 2-layer jl.LSTM(features={UNITS}) -> last step -> nn.Dense({CLASSES})")
    logits = model.apply(variables, x, verbose=True)
    print(f"  logits[0] = {logits[0]}")

    print("\nparameters (named like PyTorch's; gates packed i, f, g, o along the 4H axis):")
    show_params(variables["params"])
    n = sum(leaf.size for leaf in jax.tree.leaves(variables))
    print(f"  total: {n} numbers. Layer 0 reads input D={INPUT}, layer 1 reads layer 0's H={UNITS}.")

    # The model's first LSTM layer through the functional core: a pure function of (params, inputs).
    print("\nfunctional core, on the weights of layer_0:")
    params = jl.LSTMParams(**variables["params"]["lstm"]["layer_0"])
    print(f"  jl.LSTMParams  w_ih {params.w_ih.shape}  w_hh {params.w_hh.shape}  b {params.b.shape}")
    final, hs = jl.lstm(params, x)
    print(f"  jl.lstm(params, x) -> hs {hs.shape} (batch, time, units), final.h {final.h.shape} (batch, units)")
    # jl.lstm is one cell applied TIME times; the same thing as a Python loop:
    carry = jl.zeros_carry(UNITS, (BATCH,))
    steps = []
    for t in range(TIME):
        carry, h = jl.lstm_cell(params, carry, x[:, t])  # x[:, t] is (batch, input), h is (batch, units)
        steps.append(h)
    looped = jnp.stack(steps, axis=1)
    print(f"  jl.lstm_cell applied {TIME} times -> each h {h.shape}, stacked {looped.shape}")
    print(f"  max |loop - jl.lstm| = {float(jnp.max(jnp.abs(looped - hs))):.1e}")


if __name__ == "__main__":
    main()
