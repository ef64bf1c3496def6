"""What the examples share: options, output folder, data-parallel sharding, checkpoints, the training loop.

Each example keeps its model, data and jit-compiled train step in its own file; this module only holds
the plumbing around them:

* ``parser``: the options every example has (--steps, --seed, --out, --resume, --stop-after, --smoke).
* ``output_dir`` and ``fail``: one-line errors (``SystemExit`` with a message, exit status 1).
* ``data_mesh``, ``shard``, ``replicate``: data parallelism over every visible device with
  ``jax.sharding``: a 1-D ``Mesh`` named ``"data"``, batches split along it, parameters copied to all.
* ``Checkpoint``: Flax msgpack (``flax.serialization.to_bytes``) of the whole training state.
* ``train``: the loop, with a tqdm progress bar showing the running loss, that checkpoints, resumes and
  can stop early (``--stop-after N``) to simulate an interruption.
* ``write_metrics``: ``metrics.json``.

Resuming gives exactly the parameters of an uninterrupted run because the state holds everything that
changes (parameters, optimizer state, step, ...) and each batch is a pure function of (seed, step).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import flax.serialization
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint.msgpack"
# Options that may differ between an interrupted run and its resumption.
NOT_CONFIG = {"out", "resume", "stop_after", "checkpoint_every"}


def fail(message: str) -> None:
    """Ends the program with a one-line error and exit status 1 (no traceback)."""
    raise SystemExit(f"error: {message}")


def parser(description: str, *, name: str, steps: int, checkpoint_every: int) -> argparse.ArgumentParser:
    """The options every example has; each example adds its own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=steps, help="training steps")
    p.add_argument("--seed", type=int, default=0, help="same seed, same numbers")
    p.add_argument("--out", default=f"runs/{name}", help="folder for metrics.json, plots and the checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="N", help="steps between saves")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (checkpointed) after step N, as if interrupted")
    p.add_argument(
        "--smoke", action="store_true", help="a tiny model for 6 steps, for CI (seconds); overrides the size options"
    )
    return p


def positive(args: argparse.Namespace, *names: str) -> None:
    """Fails with one line unless the named options (and the shared numeric ones) are positive."""
    for name in ("steps", "checkpoint_every", "stop_after", *names):
        value = getattr(args, name)
        if value is not None and value <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {value}")


def output_dir(path: str) -> pathlib.Path:
    """Creates ``path`` (and its parents) or fails with one line if it can't be a writable folder."""
    out = pathlib.Path(path)
    if out.exists() and not out.is_dir():
        fail(f"--out {path} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --out {path}: {e.strerror}")
    if not os.access(out, os.W_OK):
        fail(f"--out {path} is not writable")
    return out


# ----------------------------------------------------------------------------- data parallelism


def data_mesh(batch_size: int) -> Mesh:
    """A 1-D mesh over every visible device; the batch is split along its ``"data"`` axis."""
    devices = jax.devices()
    if batch_size % len(devices):
        fail(f"the batch size {batch_size} must be a multiple of the {len(devices)} devices")
    return Mesh(np.array(devices), ("data",))


def shard(mesh: Mesh, batch):
    """Puts each array of ``batch`` on the mesh, split along its first (batch) axis."""
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def replicate(mesh: Mesh, tree):
    """Puts a full copy of every array of ``tree`` (parameters, optimizer state) on every device."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


# ----------------------------------------------------------------------------- checkpoints


class Checkpoint:
    """The training state as one Flax msgpack file, ``OUT/checkpoint.msgpack``.

    What is saved is a dict: ``state`` (the example's pytree: params, optimizer state, step, ...),
    ``losses`` (the training loss of every step so far) and ``config`` (the options that must not
    change between an interrupted run and its resumption, as JSON).
    """

    def __init__(self, out: pathlib.Path, args: argparse.Namespace):
        self.path = out / CHECKPOINT
        self.config = json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in NOT_CONFIG})

    def save(self, state, losses: np.ndarray) -> None:
        data = flax.serialization.to_bytes({"state": state, "losses": losses, "config": self.config})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)  # atomic: an interruption never leaves half a checkpoint

    def load(self, state, steps: int) -> tuple[object, np.ndarray]:
        """The saved state (``state`` is the template: same structure, shapes, dtypes) and losses."""
        template = {"state": state, "losses": np.zeros(steps, np.float32), "config": ""}
        try:
            saved = flax.serialization.from_bytes(template, self.path.read_bytes())
        except OSError as e:
            fail(f"cannot read checkpoint {self.path}: {e.strerror}")
        except Exception as e:  # msgpack and Flax raise many types on garbage; all mean the same here
            fail(f"checkpoint {self.path} is corrupt ({type(e).__name__}): delete it or run without --resume")
        if saved["config"] != self.config:
            fail(f"checkpoint {self.path} was written with other options: {saved['config']}")

        def shapes(tree):
            return jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), tree)

        if shapes((saved["state"], saved["losses"])) != shapes((template["state"], template["losses"])):
            fail(f"checkpoint {self.path} does not match this model's parameter shapes")
        return saved["state"], np.array(saved["losses"])  # a writable copy


# ----------------------------------------------------------------------------- the loop


def train(state, train_step, batch_at, args, out: pathlib.Path, mesh: Mesh, *, desc: str):
    """Runs ``state, loss = train_step(state, *batch_at(step))`` from the state's step to ``args.steps``.

    ``state`` must be a dict with an integer ``"step"``; it is resumed from ``OUT/checkpoint.msgpack``
    with ``--resume`` and saved there every ``--checkpoint-every`` steps and at the end. Returns
    ``(state, losses, finished)``: ``finished`` is False when ``--stop-after`` ended the run early.
    """
    checkpoint = Checkpoint(out, args)
    losses = np.full(args.steps, np.nan, np.float32)
    if args.resume:
        if checkpoint.path.exists():
            state, losses = checkpoint.load(state, args.steps)
            print(f"resuming from step {int(state['step'])} ({checkpoint.path})")
        else:
            print(f"no checkpoint at {checkpoint.path}: starting from step 0")
    state = replicate(mesh, state)
    start = int(state["step"])
    stop = args.steps if args.stop_after is None else min(args.stop_after, args.steps)
    pending = {}  # step -> loss still on the device: reading each one at once would stall the loop

    def record():
        for step, loss in jax.device_get(pending).items():
            losses[step] = loss
        pending.clear()

    with tqdm(total=args.steps, initial=start, desc=desc, unit="step", dynamic_ncols=True) as bar:
        try:
            for step in range(start, stop):
                state, pending[step] = train_step(state, *shard(mesh, batch_at(step)))
                bar.update(1)
                if (step + 1) % 20 == 0:
                    record()
                    bar.set_postfix(loss=f"{np.mean(losses[max(start, step - 19) : step + 1]):.4g}")  # last 20
                if (step + 1) % args.checkpoint_every == 0:
                    record()
                    checkpoint.save(state, losses)
        except KeyboardInterrupt:  # Ctrl-C: keep what was done
            record()
            checkpoint.save(state, losses)
            bar.close()
            print(f"interrupted at step {int(state['step'])}; saved {checkpoint.path}; continue with --resume")
            raise SystemExit(130) from None
    record()
    checkpoint.save(state, losses)
    return state, losses, stop == args.steps


def write_metrics(out: pathlib.Path, metrics: dict, started: float) -> dict:
    """Adds the wall time since ``started`` (``time.perf_counter()``) and writes ``OUT/metrics.json``."""
    metrics = {**metrics, "wall_time_s": round(time.perf_counter() - started, 2), "devices": jax.device_count()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def pyplot():
    """matplotlib.pyplot with a file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
