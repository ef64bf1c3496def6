"""Handwritten digits, read row by row by a jaxlstm LSTM: 8×8 images as sequences of T = 8 rows of D = 8 pixels.

The data are scikit-learn's bundled digits (``sklearn.datasets.load_digits``: 1,797 images, nothing to
download), split once into 75% training and 25% test images, stratified by class, with a fixed seed.
The LSTM reads one row per step and the last step's state is classified by a Dense layer. Two classical
baselines are fitted on the same split: logistic regression and an RBF support-vector machine, on the 64
pixels at once.

Needs: pip install -e ".[examples]"   (tqdm, matplotlib, statsmodels, scikit-learn)
Run:  python examples/digits.py            (about 10 s on 2 CPU cores; --help for options)
Out:  runs/digits/metrics.json (test_accuracy), confusion.png, checkpoint.json and its checkpoint-* folder
"""

from __future__ import annotations

import argparse
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

SPLIT_SEED = 0  # the train/test split is the same for every --seed


def load_split():
    """(x_train, y_train, x_test, y_test); x as (N, 8 rows, 8 pixels) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8): rows are the time steps
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int32), test_size=0.25, stratify=digits.target, random_state=SPLIT_SEED
    )
    return x_train, y_train, x_test, y_test


def baselines(x_train, y_train, x_test, y_test) -> dict:
    """Test accuracy of classical classifiers on the flattened 64 pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    with threadpool_limits(1):  # tiny fits: more BLAS threads only add overhead (and stall on a busy machine)
        return {
            "logistic_regression": float(
                LogisticRegression(max_iter=1000).fit(flat_train, y_train).score(flat_test, y_test)
            ),
            "svm_rbf": float(SVC().fit(flat_train, y_train).score(flat_test, y_test)),
        }


def shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Moves each image by up to one pixel up/down and left/right (zeros fill in): data augmentation."""
    n, height, width = images.shape
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, size=(2, n))
    rows = (dy[:, None] + np.arange(height))[:, :, None]  # (n, height, 1)
    cols = (dx[:, None] + np.arange(width))[:, None, :]  # (n, 1, width)
    return padded[np.arange(n)[:, None, None], rows, cols]


class RowReader(nn.Module):
    """x (batch, 8, 8) -> LSTM over the rows -> last step's h (batch, H) -> Dense -> logits (batch, 10)."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        h = jl.LSTM(features=self.hidden, return_sequences=False)(x)
        return nn.Dense(features=10)(h)


@functools.lru_cache  # one compiled train step per configuration, shared by repeated main() calls
def build(hidden: int, lr: float, weight_decay: float, steps: int):
    model = RowReader(hidden)
    optimizer = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)

    @jax.jit
    def train_step(state: train_state.TrainState, x, y):
        def loss_fn(params):
            return optax.softmax_cross_entropy_with_integer_labels(state.apply_fn({"params": params}, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    init = jax.jit(lambda key, x: model.init(key, x)["params"])
    return model, optimizer, init, train_step, jax.jit(model.apply)


def parse(argv, name: str = "digits", description: str = __doc__.split("\n")[0]):
    p = common.parser(description, name=name, steps=2000, checkpoint_every=500)
    p.add_argument("--hidden", type=int, default=128, help="H, the LSTM's units")
    p.add_argument("--batch", type=int, default=64, help="images per step (split over the devices)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate (cosine decay to 0)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="shift images by ±1 pixel")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.hidden, args.batch = 6, 8, 8
    common.positive(args, "hidden", "batch", "lr", non_negative=("weight_decay",))
    return args


def main(argv=None) -> dict:
    """Trains and evaluates (see the module's docstring and --help); returns metrics.json's contents."""
    with common.interruptible():  # from here on, Ctrl-C ends in a checkpoint and exit status 130
        return train_and_evaluate(parse(argv))


def train_and_evaluate(args) -> dict:
    started = time.perf_counter()
    run = common.start(args, "digits", ("confusion.png",))
    mesh = common.data_mesh(args.batch)
    model, optimizer, init, train_step, predict = build(args.hidden, args.lr, args.weight_decay, args.steps)

    split = load_split()
    params = init(jax.random.key(args.seed), split[0][:1])
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)
    state = state.replace(step=jnp.zeros((), jnp.int32))  # an array from the start: one compiled step
    batch_at = batches(args, *split[:2])
    state, losses, finished = common.train(state, train_step, batch_at, args, run, mesh, desc="digits")
    if not finished:
        print(f"stopped after step {int(state.step)}; continue with --resume")
        return {"stopped_at": int(state.step)}
    predicted = np.asarray(predict({"params": state.params}, split[2])).argmax(axis=-1)
    return report(run, args, split, predicted, losses, started)


def batches(args, x_train: np.ndarray, y_train: np.ndarray):
    """``batch_at(step)``: the training batch of a step, a pure function of (seed, step)."""
    if args.batch > len(x_train):
        common.fail(f"--batch {args.batch} is larger than the {len(x_train)} training images")
    per_epoch = len(x_train) // args.batch  # the remainder of each shuffled epoch is dropped

    def batch_at(step):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(x_train))
        index = order[i * args.batch : (i + 1) * args.batch]
        x = x_train[index]
        if args.augment:
            x = shift(x, np.random.default_rng([args.seed, epoch, i]))
        return x, y_train[index]

    return batch_at


def report(run, args, split, predicted: np.ndarray, losses: np.ndarray, started: float, example="digits") -> dict:
    """The test accuracy of ``predicted`` (test images' classes) against the baselines: confusion.png,
    metrics.json and a printed line; returns the metrics."""
    y_test = split[3]
    accuracy = float(np.mean(predicted == y_test))
    classical = baselines(*split)
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (y_test, predicted), 1)

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), n in np.ndenumerate(confusion):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > confusion.max() / 2 else "black")
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted digit",
        ylabel="true digit",
        title=f"LSTM on digit rows: test accuracy {accuracy:.1%}",
    )
    fig.tight_layout()
    fig.savefig(run.out / "confusion.png", dpi=110)
    plt.close(fig)

    beats = [name for name, value in classical.items() if accuracy > value]
    metrics = {
        "example": example,
        "test_accuracy": accuracy,
        "baselines": classical,
        "beats": beats,
        "test_images": len(y_test),
        "final_loss": float(losses[-1]),
        "steps": args.steps,
        "seed": args.seed,
    }
    metrics = common.write_metrics(run, metrics, started)
    print(
        f"test accuracy {accuracy:.2%}  (logistic regression {classical['logistic_regression']:.2%}, "
        f"RBF SVM {classical['svm_rbf']:.2%}; beats: {', '.join(beats) or 'neither'}) "
        f"in {metrics['wall_time_s']:.0f} s; outputs in {run.out}"
    )
    return metrics


if __name__ == "__main__":
    common.script(main)
