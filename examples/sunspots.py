"""Forecasting yearly sunspot numbers with an ensemble of small jaxlstm LSTMs, against classical baselines.

Data: the yearly sunspot numbers 1700-2008 bundled with statsmodels (``statsmodels.datasets.sunspots``,
nothing to download). The model trains on the years up to 1950, keeping the last --val-years of them
(1911-1950 by default) aside for early stopping, and is scored on one-step-ahead forecasts of 1951-2008:
each year is predicted from the true values of the --window years before it. The score is the RMSE in
sunspot numbers, next to two classical baselines fitted on the same years: persistence (next year = this
year) and statsmodels' AutoReg with 9 lags; a third, AutoReg(9) on the square roots of the counts, is
the same linear model given this script's transform.

With 200 training windows a plain LSTM overfits. What makes it work here is what practitioners use:

* the square root of the counts (it evens out the variance of big and small cycles), standardised;
* a linear skip path: a Dense layer on the window (an AR term), to which the LSTM adds a correction;
* the LSTM reads the *differences* of the window, so its correction does not depend on the level
  (1951-2008 has bigger peaks than any training year and an LSTM fed levels saturates on them);
* a small model (H = 8), AdamW weight decay, and early stopping: every member keeps its parameters
  from the step with the lowest error on the held-out years;
* an ensemble of --members LSTMs with different initialisations, trained together in one jit-compiled
  step by ``jax.vmap`` over the members, whose forecasts are averaged. Their parameters are stacked
  along a leading axis in one Flax ``TrainState``; each member gets its own gradient (vmap), and
  AdamW, elementwise, updates each member's slice as it would update that member alone.

Needs: pip install -e ".[examples]"   (tqdm, matplotlib, statsmodels, scikit-learn)
Run:  python examples/sunspots.py          (about 10 s on 2 CPU cores; --help for options)
Out:  runs/sunspots/metrics.json (test_rmse and the baselines), forecast.png, checkpoint.json and its
      checkpoint-* folder
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

LAST_TRAIN_YEAR = 1950
AR_LAGS = 9  # the AutoReg baselines' lags


def load() -> tuple[np.ndarray, np.ndarray]:
    """(years, sunspot numbers), 1700-2008."""
    from statsmodels.datasets import sunspots

    data = sunspots.load_pandas().data
    return data["YEAR"].to_numpy(int), data["SUNACTIVITY"].to_numpy(np.float32)


def rmse(prediction, truth) -> float:
    """Root-mean-square error, in the units of ``truth``."""
    return float(np.sqrt(np.mean((np.asarray(prediction, np.float64) - truth) ** 2)))


def autoreg_forecasts(series: np.ndarray, n_train: int, lags: int) -> np.ndarray:
    """One-step-ahead AutoReg(lags) forecasts of series[n_train:], fitted on series[:n_train]."""
    from statsmodels.tsa.ar_model import AutoReg
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # a tiny fit: more BLAS threads only add overhead (and stall on a busy machine)
        coef = AutoReg(series[:n_train], lags).fit().params  # intercept, then lags 1..p
    return np.array([coef[0] + coef[1:] @ series[t - lags : t][::-1] for t in range(n_train, len(series))])


def windows(z: np.ndarray, targets: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, window, 1): the ``window`` values before each target index; targets (n,)."""
    x = np.stack([z[t - window : t] for t in targets])[..., None]
    return x.astype(np.float32), z[targets].astype(np.float32)


class Forecaster(nn.Module):
    """A linear AR term on the window plus an LSTM's correction read from the window's differences.

    x (batch, window, 1), standardised sqrt counts -> the next year's, (batch,).
    """

    hidden: int

    @nn.compact
    def __call__(self, x):
        linear = nn.Dense(features=1, name="ar")(x[..., 0])  # (batch, 1): a weighted sum of the window
        h = jl.LSTM(features=self.hidden, return_sequences=False)(x[:, 1:] - x[:, :-1])  # (batch, H)
        return (linear + nn.Dense(features=1, name="head")(h))[:, 0]


class EnsembleState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state) plus early stopping: every member's best parameters
    so far and their error on the held-out years. Every parameter has a leading axis of --members."""

    best_params: dict
    best_val: jax.Array  # (members,)


@functools.lru_cache  # one compiled train step per configuration, shared by repeated main() calls
def build(hidden: int, lr: float, weight_decay: float):
    model = Forecaster(hidden)
    optimizer = optax.adamw(lr, weight_decay=weight_decay)

    def mse(params, x, y):
        return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

    members_mse = jax.vmap(mse, in_axes=(0, None, None))  # stacked params -> every member's error, (members,)

    @jax.jit
    def train_step(state: EnsembleState, x, y, *, x_val, y_val):
        """One AdamW step for every member at once, then early-stopping bookkeeping."""
        losses, grads = jax.vmap(jax.value_and_grad(mse), in_axes=(0, None, None))(state.params, x, y)
        state = state.apply_gradients(grads=grads)
        val = members_mse(state.params, x_val, y_val)  # (members,)
        better = val < state.best_val
        best = jax.tree.map(
            lambda old, new: jnp.where(better.reshape(better.shape + (1,) * (new.ndim - 1)), new, old),
            state.best_params,
            state.params,
        )
        return state.replace(best_params=best, best_val=jnp.minimum(val, state.best_val)), jnp.mean(losses)

    # Every member gets its own initialisation (its own key) and makes its own forecasts.
    init = jax.jit(jax.vmap(lambda key, x: model.init(key, x)["params"], in_axes=(0, None)))
    predict = jax.jit(jax.vmap(lambda params, x: model.apply({"params": params}, x), in_axes=(0, None)))
    return model, optimizer, init, train_step, predict


def parse(argv):
    p = common.parser(__doc__.split("\n")[0], name="sunspots", steps=1000, checkpoint_every=250)
    p.add_argument("--window", type=int, default=9, help="years of history each forecast reads")
    p.add_argument("--val-years", type=int, default=40, help="last training years held out for early stopping")
    p.add_argument("--members", type=int, default=16, help="ensemble size (trained together with vmap)")
    p.add_argument("--hidden", type=int, default=8, help="H, each LSTM's units")
    p.add_argument("--batch", type=int, default=64, help="windows per step (split over the devices)")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.members, args.hidden, args.batch = 6, 2, 4, 8
    common.positive(args, "val_years", "members", "hidden", "batch", "lr", non_negative=("weight_decay",))
    if args.window < 2:
        common.fail("--window must be at least 2 (the LSTM reads the window's differences)")
    return args


def main(argv=None) -> dict:
    """Trains and evaluates (see the module's docstring and --help); returns metrics.json's contents."""
    with common.interruptible():  # from here on, Ctrl-C ends in a checkpoint and exit status 130
        return train_and_evaluate(parse(argv))


def train_and_evaluate(args) -> dict:
    started = time.perf_counter()
    run = common.start(args, "sunspots", ("forecast.png",))
    out = run.out
    mesh = common.data_mesh(args.batch)
    model, optimizer, init, train_step, predict = build(args.hidden, args.lr, args.weight_decay)

    years, counts = load()
    n_train = int(np.sum(years <= LAST_TRAIN_YEAR))  # 251 years: 1700-1950
    n_fit = n_train - args.val_years  # years before that are fitted; the rest pick the early-stopping step
    if n_fit - args.window < args.batch:
        common.fail(f"--window {args.window} and --val-years {args.val_years} leave fewer than --batch windows")
    root = np.sqrt(counts)
    mean, std = root[:n_train].mean(), root[:n_train].std()
    z = (root - mean) / std  # standardised with training-year statistics only

    def to_counts(prediction):  # standardised sqrt -> sunspot numbers
        return np.maximum(np.asarray(prediction) * std + mean, 0.0) ** 2

    x_fit, y_fit = windows(z, np.arange(args.window, n_fit), args.window)
    x_val, y_val = windows(z, np.arange(n_fit, n_train), args.window)
    x_test, _ = windows(z, np.arange(n_train, len(z)), args.window)
    truth = counts[n_train:]

    keys = jax.random.split(jax.random.key(args.seed), args.members)
    params = init(keys, x_fit[:1])  # every leaf has a leading axis of size --members
    state = EnsembleState.create(
        apply_fn=model.apply,
        params=params,
        tx=optimizer,
        best_params=params,
        best_val=jnp.full((args.members,), jnp.inf, jnp.float32),
    )
    state = state.replace(step=jnp.zeros((), jnp.int32))  # an array from the start: one compiled step
    per_epoch = len(x_fit) // args.batch

    def batch_at(step):  # data order: a pure function of (seed, step)
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(x_fit))
        index = order[i * args.batch : (i + 1) * args.batch]
        return x_fit[index], y_fit[index]

    x_val_all, y_val_all = common.replicate(mesh, (x_val, y_val))  # every device scores all held-out years
    step = functools.partial(train_step, x_val=x_val_all, y_val=y_val_all)
    state, losses, finished = common.train(state, step, batch_at, args, run, mesh, desc="sunspots")
    if not finished:
        print(f"stopped after step {int(state.step)}; continue with --resume")
        return {"stopped_at": int(state.step)}

    forecast = to_counts(predict(state.best_params, x_test)).mean(axis=0)  # the ensemble's mean, in counts
    baseline_forecasts = {  # fitted on 1700-1950 like the LSTM, forecasting each year from the true past
        "persistence": counts[n_train - 1 : -1],
        "autoreg9": autoreg_forecasts(counts.astype(np.float64), n_train, AR_LAGS),
        "autoreg9_sqrt": np.maximum(autoreg_forecasts(root.astype(np.float64), n_train, AR_LAGS), 0) ** 2,
    }
    baselines = {name: rmse(f, truth) for name, f in baseline_forecasts.items()}
    test_rmse = rmse(forecast, truth)
    beats = [name for name, value in baselines.items() if test_rmse < value]

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    test_years = years[n_train:]
    recent = slice(n_train - 30, n_train + 1)
    ax.plot(years[recent], counts[recent], color="lightgray", label="training years")
    ax.plot(test_years, truth, "k-o", ms=3, label="observed")
    ax.plot(test_years, forecast, color="tab:red", lw=2, label=f"LSTM ensemble  RMSE {test_rmse:.1f}")
    for name, label, style in [("autoreg9", "AutoReg(9)", "--"), ("persistence", "persistence", ":")]:
        ax.plot(test_years, baseline_forecasts[name], style, label=f"{label}  RMSE {baselines[name]:.1f}")
    ax.set(xlabel="year", ylabel="sunspot number", title="One-step-ahead forecasts of the yearly sunspot number")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=110)
    plt.close(fig)

    metrics = {
        "example": "sunspots",
        "test_rmse": test_rmse,
        "baselines": baselines,
        "beats": beats,
        "test_years": [int(test_years[0]), int(test_years[-1])],
        "val_rmse": rmse(to_counts(predict(state.best_params, x_val)).mean(axis=0), counts[n_fit:n_train]),
        "final_loss": float(losses[-1]),
        "steps": args.steps,
        "members": args.members,
        "seed": args.seed,
    }
    metrics = common.write_metrics(run, metrics, started)
    print(f"test RMSE, 1951-2008: LSTM ensemble {test_rmse:.2f} sunspots")
    for name, value in baselines.items():
        print(f"  {name:<14} {value:6.2f}  {'beaten' if name in beats else 'NOT beaten'}")
    print(f"{metrics['wall_time_s']:.0f} s; outputs in {out}")
    return metrics


if __name__ == "__main__":
    common.script(main)
