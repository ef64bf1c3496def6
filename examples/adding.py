"""The adding problem (Hochreiter & Schmidhuber, 1997) at T = 100, learned by a jaxlstm LSTM.

Each input is a (T, 2) sequence: channel 0 holds uniform random values in [0, 1), channel 1 is a marker
that is 1 at exactly two steps (one in each half of the sequence) and 0 elsewhere. The target is the sum
of the two marked values. To solve it the LSTM must carry one number across up to 100 steps while
ignoring everything else. Always answering 1 (the mean) gives an MSE of about 1/6 ≈ 0.167; the goal is
a test MSE below 0.01, which the defaults reach at every seed checked (benchmarks/adding_seeds.py).

The data are synthetic: every training batch is a pure function of (--seed, step), and the test set is
fixed, so nothing is downloaded and a resumed run sees exactly the batches an uninterrupted one would.

Needs: pip install -e ".[examples]"   (tqdm, matplotlib, statsmodels, scikit-learn)
Run:  python examples/adding.py            (about 37 s of CPU time on 2 cores; --help for options)
Out:  runs/adding/metrics.json (test_mse), loss.png (the loss curve), checkpoint.json and its checkpoint-* folder
"""

from __future__ import annotations

import functools
import time

import _common as common
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import jaxlstm as jl

TARGET_MSE = 0.01
TEST_SEED = 2024  # the test set is the same for every --seed
FORGET_BIAS = 3.0  # the forget gates' initial bias: see with_forget_bias


def make_batch(rng: np.random.Generator, size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` adding-problem sequences: x (size, length, 2) and the targets y (size,)."""
    values = rng.uniform(size=(size, length)).astype(np.float32)
    rows = np.arange(size)
    markers = np.zeros((size, length), np.float32)
    markers[rows, rng.integers(0, length // 2, size)] = 1.0  # one marker in the first half
    markers[rows, rng.integers(length // 2, length, size)] = 1.0  # and one in the second
    return np.stack([values, markers], axis=-1), (values * markers).sum(axis=1)


class Adder(nn.Module):
    """x (batch, T, 2) -> LSTM -> last step's h (batch, H) -> Dense -> the predicted sum (batch,).

    The values are centred (x - 0.5, mean 0) before the LSTM: uncentred, the 98 unmarked values push
    every gate the same way at every step, and at some seeds training stays on the always-1 plateau.
    """

    hidden: int

    @nn.compact
    def __call__(self, x):
        x = x.at[..., 0].add(-0.5)  # channel 0, the values; channel 1, the markers, stays 0 or 1
        h = jl.LSTM(features=self.hidden, return_sequences=False)(x)
        return nn.Dense(features=1)(h)[:, 0]


def with_forget_bias(params, value: float):
    """``params`` with the LSTM's forget-gate biases set to ``value`` (jaxlstm's b packs gates i, f, g, o).

    At initialisation the default bias of 1 keeps about sigmoid(1) = 73% of the cell state per step,
    0.73^50 ≈ 1e-7 over the 50 steps between the markers; a bias of 3 keeps about 95% (0.95^50 ≈ 0.09),
    so the first marked value's gradient reaches the loss before training has learned to keep it.
    """
    lstm = params["LSTM_0"]["layer_0"]
    hidden = lstm["b"].shape[0] // 4
    return {**params, "LSTM_0": {"layer_0": {**lstm, "b": lstm["b"].at[hidden : 2 * hidden].set(value)}}}


@functools.lru_cache  # one compiled train step per configuration, shared by repeated main() calls
def build(hidden: int, lr: float, clip: float, steps: int):
    model = Adder(hidden)
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optax.adam(optax.cosine_decay_schedule(lr, steps)))

    @jax.jit
    def train_step(state: train_state.TrainState, x, y):
        def loss_fn(params):
            return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    init = jax.jit(lambda key, x: with_forget_bias(model.init(key, x)["params"], FORGET_BIAS))
    return model, optimizer, init, train_step, jax.jit(model.apply)


def parse(argv):
    p = common.parser(__doc__.split("\n")[0], name="adding", steps=2000, checkpoint_every=500)
    p.add_argument("--length", type=int, default=100, help="T, the sequence length")
    p.add_argument("--hidden", type=int, default=64, help="H, the LSTM's units")
    p.add_argument("--batch", type=int, default=64, help="sequences per step (split over the devices)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak Adam learning rate (cosine decay to 0)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping (global norm)")
    p.add_argument("--test-size", type=int, default=2000, help="test sequences")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.hidden, args.batch, args.test_size = 6, 8, 8, 64
    common.positive(args, "length", "hidden", "batch", "lr", "clip", "test_size")
    if args.length < 2:
        common.fail("--length must be at least 2")
    return args


def main(argv=None) -> dict:
    """Trains and evaluates (see the module's docstring and --help); returns metrics.json's contents."""
    with common.interruptible():  # from here on, Ctrl-C ends in a checkpoint and exit status 130
        return train_and_evaluate(parse(argv))


def train_and_evaluate(args) -> dict:
    started = time.perf_counter()
    run = common.start(args, "adding", ("loss.png",))
    out = run.out
    mesh = common.data_mesh(args.batch)
    model, optimizer, init, train_step, predict = build(args.hidden, args.lr, args.clip, args.steps)

    x_test, y_test = make_batch(np.random.default_rng(TEST_SEED), args.test_size, args.length)
    params = init(jax.random.key(args.seed), x_test[:1])
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)
    state = state.replace(step=jnp.zeros((), jnp.int32))  # an array from the start: one compiled step

    def batch_at(step):  # data order: a pure function of (seed, step)
        return make_batch(np.random.default_rng([args.seed, step]), args.batch, args.length)

    state, losses, finished = common.train(state, train_step, batch_at, args, run, mesh, desc="adding")
    if not finished:
        print(f"stopped after step {int(state.step)}; continue with --resume")
        return {"stopped_at": int(state.step)}

    test_mse = float(np.mean((np.asarray(predict({"params": state.params}, x_test)) - y_test) ** 2))
    baseline = float(np.mean((1.0 - y_test) ** 2))  # always answer 1, the mean of the sum

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(np.arange(1, args.steps + 1), losses, lw=0.6, alpha=0.5, label="training loss (batch MSE)")
    window = min(50, args.steps)
    ax.semilogy(
        np.arange(window, args.steps + 1),
        np.convolve(losses, np.ones(window) / window, "valid"),
        label=f"mean of {window} steps",
    )
    ax.axhline(baseline, color="gray", ls="--", label=f"always 1: {baseline:.3f}")
    ax.axhline(TARGET_MSE, color="green", ls=":", label=f"target: {TARGET_MSE}")
    ax.axhline(test_mse, color="red", lw=1, label=f"test MSE: {test_mse:.4f}")
    ax.set(xlabel="step", ylabel="MSE", title=f"Adding problem, T = {args.length}, LSTM H = {args.hidden}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)

    metrics = {
        "example": "adding",
        "test_mse": test_mse,
        "baselines": {"always_1": baseline},
        "beats": ["always_1"] if test_mse < baseline else [],
        "target_mse": TARGET_MSE,
        "reached_target": test_mse < TARGET_MSE,
        "final_loss": float(losses[-1]),
        "steps": args.steps,
        "seed": args.seed,
    }
    metrics = common.write_metrics(run, metrics, started)
    print(
        f"test MSE {test_mse:.5f} (always 1: {baseline:.3f}, target < {TARGET_MSE}) "
        f"in {metrics['wall_time_s']:.0f} s; outputs in {out}"
    )
    return metrics


if __name__ == "__main__":
    common.script(main)
