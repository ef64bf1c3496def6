"""Handwritten digits with Flax NNX: examples/digits.py written with ``jl.nnx.LSTM`` and ``nnx.Optimizer``.

The same task, data, split, augmentation, options, checkpoints and outputs as ``examples/digits.py``
(read its docstring); only the model and the train step change. The model is an ``nnx.Module`` that
holds its parameters; ``nnx.Optimizer`` holds the optax state and the step count. The train step is
NNX's functional pattern: ``nnx.split`` the (model, optimizer) pair once into a graph definition and a
``State`` (a pytree of arrays), and inside the jit-compiled step ``nnx.merge`` them, take the gradient
with ``nnx.value_and_grad``, ``optimizer.update(model, grads)`` and return the new ``State``. That
``State`` is what the shared loop shards, checkpoints (orbax) and resumes.

Needs: pip install -e ".[examples]"   (tqdm, matplotlib, statsmodels, scikit-learn)
Run:  python examples/nnx_digits.py        (about 10 s on 2 CPU cores; --help for options)
Out:  runs/nnx_digits/metrics.json (test_accuracy), confusion.png, checkpoint.json and its checkpoint-* folder
"""

from __future__ import annotations

import functools
import time

import _common as common
import digits
import jax
import numpy as np
import optax
from flax import nnx

import jaxlstm as jl

ROWS, PIXELS, CLASSES = 8, 8, 10  # an image is T = 8 rows of D = 8 pixels


class RowReader(nnx.Module):
    """x (batch, 8, 8) -> LSTM over the rows -> last step's h (batch, H) -> Linear -> logits (batch, 10)."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.lstm = jl.nnx.LSTM(PIXELS, hidden, return_sequences=False, rngs=rngs)
        self.head = nnx.Linear(hidden, CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(self.lstm(x))


def create(hidden: int, lr: float, weight_decay: float, steps: int, seed: int) -> tuple[RowReader, nnx.Optimizer]:
    """A freshly initialised model and its AdamW optimizer (cosine decay to 0 over ``steps``)."""
    model = RowReader(hidden, rngs=nnx.Rngs(seed))
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@functools.lru_cache  # one compiled train step per configuration, shared by repeated main() calls
def build(hidden: int, lr: float, weight_decay: float, steps: int):
    graphdef, _ = nnx.split(create(hidden, lr, weight_decay, steps, seed=0))  # the structure, not the numbers

    @jax.jit
    def train_step(state: nnx.State, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def predict(state: nnx.State, x):
        model, _ = nnx.merge(graphdef, state)
        return model(x)

    return train_step, predict


def main(argv=None) -> dict:
    """Trains and evaluates (see the module's docstring and --help); returns metrics.json's contents."""
    with common.interruptible():  # from here on, Ctrl-C ends in a checkpoint and exit status 130
        return train_and_evaluate(digits.parse(argv, name="nnx_digits", description=__doc__.split("\n")[0]))


def train_and_evaluate(args) -> dict:
    started = time.perf_counter()
    run = common.start(args, "nnx_digits", ("confusion.png",))
    mesh = common.data_mesh(args.batch)
    train_step, predict = build(args.hidden, args.lr, args.weight_decay, args.steps)

    split = digits.load_split()
    _, state = nnx.split(create(args.hidden, args.lr, args.weight_decay, args.steps, args.seed))
    batch_at = digits.batches(args, *split[:2])
    state, losses, finished = common.train(state, train_step, batch_at, args, run, mesh, desc="nnx_digits")
    if not finished:
        print(f"stopped after step {args.stop_after}; continue with --resume")
        return {"stopped_at": args.stop_after}
    predicted = np.asarray(predict(state, split[2])).argmax(axis=-1)
    return digits.report(run, args, split, predicted, losses, started, example="nnx_digits")


if __name__ == "__main__":
    common.script(main)
