"""What the examples share: options, the output folder, signals, verified checkpoints, the training loop.

Each example keeps its model, data and jit-compiled train step in its own file; this module only holds
the plumbing around them:

* ``parser``: the options every example has (--steps, --seed, --out, --resume, --overwrite, ...).
* ``start``: the output folder. An earlier run there is never resumed or destroyed silently: without
  ``--resume`` or ``--overwrite`` it is moved aside to ``OUT.1`` (``OUT.2``, ...).
* ``interruptible`` and ``script``: Ctrl-C (SIGINT) only raises a flag; the loop sees it after the
  step or save under way, writes a checkpoint and exits with status 130.
* checkpoints: orbax-checkpoint writes the arrays; ``checkpoint.json`` (the manifest) names the example,
  its options and the SHA-256 of every file, and ``--resume`` checks all of that before touching
  anything. Writes are atomic: a new checkpoint is complete on disk before the manifest points to it.
* ``data_mesh``, ``shard``, ``replicate``: data parallelism over every device of the run with
  ``jax.sharding``: a 1-D ``Mesh`` named ``"data"``, batches split along it, parameters copied to all.
* ``join``: several processes (one per host, or several on one host) through ``jax.distributed``:
  ``--coordinator HOST:PORT --num-processes N --process-id I``, or ``--distributed`` where JAX finds
  them in the cluster's environment (SLURM, Open MPI, a TPU pod, ...). Each process puts its own rows of
  every global batch on its devices; all of them write the checkpoints through orbax; process 0 alone
  shows the progress bar, evaluates and writes metrics.json and the plot. docs/scaling.md tells more.
* ``train``: the loop, with a tqdm progress bar showing the running loss.
* ``write_metrics``: ``metrics.json``.

Resuming gives exactly the parameters of an uninterrupted run because the state holds everything that
changes (parameters, optimizer state, step, ...) and each batch is a pure function of (seed, step).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import re
import secrets
import shutil
import signal
import sys
import time

EXTRA = "examples need the [examples] extra: pip install -e '.[examples]'"
# import name -> the package that provides it; all of them are in the [examples] extra.
NEEDS = {"tqdm": "tqdm", "matplotlib": "matplotlib", "statsmodels": "statsmodels", "sklearn": "scikit-learn"}
NEEDS |= {"threadpoolctl": "threadpoolctl"}


def fail(message: str) -> None:
    """Ends the program with a one-line error and exit status 1 (no traceback)."""
    raise SystemExit(f"error: {message}")


def _require_extra() -> None:
    """Fails with one line naming the [examples] extra when one of its packages is missing."""
    missing = [package for module, package in NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        fail(f"{', '.join(missing)} not installed; {EXTRA}")


_require_extra()  # before the imports below, so a missing extra is one line, not a ModuleNotFoundError

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

MANIFEST = "checkpoint.json"
FORMAT = "jaxlstm-examples-checkpoint/1"
DATA_DIR = re.compile(r"checkpoint-\d{6,}-[0-9a-f]{8}")  # the folder a manifest may name
# Options that may differ between an interrupted run and its resumption.
NOT_CONFIG = {"out", "resume", "overwrite", "stop_after", "checkpoint_every"}
NOT_CONFIG |= {"coordinator", "num_processes", "process_id", "distributed"}  # a run resumes in any layout
PAUSE_AT = "JAXLSTM_EXAMPLES_PAUSE_AT"  # test hook: "phase" or "phase@step", see phase_hook

OUT_HELP = """\
--out: a folder that holds one run: metrics.json, the plot, checkpoint.json and the checkpoint-* folder
it names. If --out already holds a run, --resume continues it, --overwrite deletes it first, and with
neither the earlier run is moved aside to OUT.1 (or OUT.2, ...) and a line says so; an --out that also
holds other files is refused instead. --resume checks the checkpoint (SHA-256 of every file, the
example and its options) before it changes anything: a damaged or foreign checkpoint is a one-line
error, exit status 1, with every file left as it was.

Ctrl-C (SIGINT): the step or save under way finishes, a checkpoint is written and the run exits with
status 130; --resume then ends exactly where an uninterrupted run ends. A second Ctrl-C stops at once,
keeping the last complete checkpoint (a save under way finishes its writes first, then is discarded).

Several processes (hosts): start the same command once per process with --coordinator HOST:PORT
(process 0's address) --num-processes N --process-id I, or with --distributed where jax.distributed
finds them itself (SLURM, Open MPI, a TPU pod). The global --batch is split over every device of every
process and the run computes what one process with all those devices computes; --out must be a folder
all of them see. Process 0 shows the progress bar and writes metrics.json and the plot. See
docs/scaling.md."""


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the epilog's line breaks."""


def parser(description: str, *, name: str, steps: int, checkpoint_every: int) -> argparse.ArgumentParser:
    """The options every example has; each example adds its own."""
    p = argparse.ArgumentParser(description=description, epilog=OUT_HELP, formatter_class=_Help)
    p.add_argument("--steps", type=int, default=steps, help="training steps")
    p.add_argument("--seed", type=int, default=0, help="same seed, same numbers")
    p.add_argument("--out", default=f"runs/{name}", help="the run's folder; see below")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --out and start afresh")
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="N", help="steps between saves")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (checkpointed) after step N, as if interrupted")
    p.add_argument(
        "--smoke", action="store_true", help="a tiny model for 6 steps, for CI (seconds); overrides the size options"
    )
    g = p.add_argument_group("several processes (jax.distributed; without these options, one process)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, which every process joins")
    g.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0 to N-1")
    g.add_argument(
        "--distributed", action="store_true", help="let jax.distributed find the above in a cluster's environment"
    )
    return p


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def positive(args: argparse.Namespace, *names: str, non_negative: tuple[str, ...] = ()) -> None:
    """Fails with one line unless every numeric option is finite, the named ones (and the shared ones:
    --steps, --checkpoint-every, --stop-after) positive and those in ``non_negative`` at least 0."""
    if args.resume and args.overwrite:
        fail("--resume continues the run in --out and --overwrite deletes it: give one of them")
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"{_flag(name)} must be a finite number, got {value}")
    rules = {name: "positive" for name in ("steps", "checkpoint_every", "stop_after", *names)}
    rules |= {name: "at least 0" for name in ("seed", *non_negative)}  # NumPy's generators refuse a negative seed
    for name, rule in rules.items():
        value = getattr(args, name)
        if value is not None and not (value > 0 if rule == "positive" else value >= 0):
            fail(f"{_flag(name)} must be {rule}, got {value}")
    _check_processes(args)


# ----------------------------------------------------------------------------- signals

_sigints = 0  # SIGINTs received inside ``interruptible``
_holding = False  # a save or the exit is under way: a second SIGINT must not cut it at a random point
SECOND_CTRL_C = "stopped at once by a second Ctrl-C; the last complete checkpoint is kept"


def _on_sigint(signum, frame) -> None:
    """Only counts: an exception raised here could land in a ``__del__``, a weakref callback or an
    ``atexit`` function, where Python prints "Exception ignored" and carries on (a lost Ctrl-C)."""
    global _sigints
    _sigints += 1
    if _sigints > 1 and not _holding:  # a second Ctrl-C: stop now; the last complete checkpoint stays as it is
        raise KeyboardInterrupt


def interrupted() -> bool:
    return _sigints > 0


def stopping() -> bool:
    """Whether a second SIGINT arrived (one held back by ``holding``)."""
    return _sigints > 1


@contextlib.contextmanager
def holding():
    """Holds a second SIGINT back inside the block: a KeyboardInterrupt raised inside orbax's writes
    (their threads, their futures) ends in a traceback or an abort, with half a save left on disk.
    The block checks ``stopping()`` where it can end cleanly; after it, a held-back second SIGINT
    raises KeyboardInterrupt as usual."""
    global _holding
    outer, _holding = _holding, True
    try:
        yield
    finally:
        _holding = outer
    if stopping() and not outer:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible():
    """SIGINT sets a flag that ``train`` and ``write_metrics`` act on, until the block ends."""
    global _sigints
    previous = signal.signal(signal.SIGINT, _on_sigint)
    if previous is not _on_sigint:
        _sigints = 0
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def script(main) -> None:
    """Runs ``main()`` as the command line does, and leaves through ``os._exit``.

    Every way out (the end, an error, a first or a second Ctrl-C) ends in one line at most and
    ``os._exit``: a SIGINT during the interpreter's shutdown (jax's and orbax's ``atexit`` clean-up can
    take a while) would otherwise be printed as a traceback or as "Exception ignored", or lost.
    """
    global _holding
    code, message = 0, None
    with interruptible():
        try:
            try:
                main()
                code = 130 if interrupted() else 0
                if interrupted():
                    message = "interrupted after the run had finished; its outputs are complete"
            except KeyboardInterrupt:  # a second Ctrl-C
                code, message = 1, SECOND_CTRL_C
            except SystemExit as e:  # fail(), an interrupted run (130), --help
                code, message = (1, e.code) if isinstance(e.code, str) else (e.code or 0, None)
        except KeyboardInterrupt:  # a second Ctrl-C while the first way out was being taken
            code, message = 1, SECOND_CTRL_C
        _holding = True  # from here on, a Ctrl-C cannot cut the exit short; a second one still says so
        phase_hook("exit", code)
        if _joined and message != SECOND_CTRL_C:
            _leave_together()
        if stopping():
            code, message = 1, SECOND_CTRL_C
        if message is not None:
            print(message, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _leave_together() -> None:
    """jax.distributed.shutdown: every process waits for the others, so that none of them loses its
    coordinator (process 0) while it still works. A process that cannot shut down cleanly leaves anyway."""
    try:
        jax.distributed.shutdown()
    except Exception as e:
        print(
            f"jax.distributed.shutdown: {str(e).strip().splitlines()[0][:200] if str(e).strip() else e!r}",
            file=sys.stderr,
        )


def phase_hook(phase: str, step: int) -> None:
    """Called when the loop reaches a phase: ``"start"``, ``"compile"`` (the first step of this process),
    ``"step"``, ``"save"`` (between writing a checkpoint and committing it), ``"evaluate"`` and ``"exit"``
    (with the exit status as ``step``, as the command line leaves).

    For tests: with the environment variable ``JAXLSTM_EXAMPLES_PAUSE_AT=phase`` (or ``phase@step``) the run
    prints ``paused at PHASE@STEP`` on stderr there and waits (at most 60 s) for a further SIGINT, so a test can
    send one at a known point without sleeping blindly. Tests running in-process replace this function.
    """
    wanted = os.environ.get(PAUSE_AT)
    if wanted not in (phase, f"{phase}@{step}"):
        return
    print(f"paused at {phase}@{step}", file=sys.stderr, flush=True)
    deadline, seen = time.monotonic() + 60, _sigints
    while _sigints == seen and time.monotonic() < deadline:
        time.sleep(0.01)


# ----------------------------------------------------------------------------- processes

_joined = False  # whether ``join`` started jax.distributed in this process


def _check_processes(args: argparse.Namespace) -> None:
    """One-line errors for --coordinator, --num-processes and --process-id that jax.distributed would refuse."""
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            fail(f"--coordinator must be HOST:PORT (a port from 1 to 65535), got {args.coordinator!r}")
    if args.num_processes is not None and args.num_processes < 1:
        fail(f"--num-processes must be positive, got {args.num_processes}")
    if args.process_id is not None:
        n = args.num_processes
        if args.process_id < 0 or (n is not None and args.process_id >= n):
            fail(f"--process-id must be from 0 to {'N-1' if n is None else n - 1}, got {args.process_id}")


def join(args: argparse.Namespace) -> None:
    """Joins the other processes of the run with ``jax.distributed.initialize``, before JAX uses a device.

    Called with --coordinator, --num-processes, --process-id (or JAX's own ``JAX_COORDINATOR_ADDRESS``),
    or --distributed, where JAX reads what is missing from the cluster's environment. With none of
    them, the run stays in one process. CPU devices of several processes talk through gloo.
    """
    global _joined
    given = (args.coordinator, args.num_processes, args.process_id)
    wanted = args.distributed or any(v is not None for v in given) or "JAX_COORDINATOR_ADDRESS" in os.environ
    if not wanted or _joined or jax.distributed.is_initialized():
        return
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:  # a user's choice (mpi) stays
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except Exception as e:  # ValueError for what it could not find, XlaRuntimeError for a coordinator not reached
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        fail(f"cannot join the other processes with jax.distributed.initialize: {first}")
    _joined = True


def is_main() -> bool:
    """Whether this is process 0, the one that shows the progress bar and writes metrics and plots."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agreed_interrupt() -> bool:
    """Whether any process has seen a SIGINT: every process gets the same answer at the same step, so
    that all of them stop together (one host-side all-gather per call when there are several)."""
    if jax.process_count() == 1:
        return interrupted()
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(interrupted(), np.int32))))


def _same_token() -> str:
    """A random hex token, process 0's in every process (names a checkpoint's folders)."""
    from jax.experimental import multihost_utils

    token = np.frombuffer(secrets.token_bytes(4), np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint8)).hex()


# ----------------------------------------------------------------------------- the output folder


@dataclasses.dataclass
class Run:
    """Where a run writes, and what it resumes: ``manifest`` is the verified checkpoint's, or None."""

    out: pathlib.Path
    example: str
    config: dict
    manifest: dict | None = None


def config_of(args: argparse.Namespace) -> dict:
    """The options that must be the same in an interrupted run and its resumption."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_CONFIG}


def start(args: argparse.Namespace, example: str, outputs: tuple[str, ...]) -> Run:
    """Prepares ``--out`` for ``examples/EXAMPLE.py``; ``outputs`` are the file names it writes (the plot).

    Joins the other processes first (``join``). With --resume, verifies the checkpoint there before
    anything is written. Every process makes the same checks on the same folder (so all of them fail
    alike, with the same line); only process 0 moves or deletes an earlier run.
    """
    join(args)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {args.out} exists and is not a folder")
    run = Run(out, example, config_of(args))
    earlier = out.is_dir() and not args.resume and _earlier_run(out, args.overwrite, ("metrics.json", *outputs))
    barrier("--out checked")  # every process has looked at --out before process 0 changes it
    if earlier and is_main():
        _clear_earlier_run(out, args.overwrite, ("metrics.json", *outputs))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --out {args.out}: {e.strerror}")
    if not os.access(out, os.W_OK):
        fail(f"--out {args.out} is not writable")
    if args.resume:
        if (out / MANIFEST).exists():
            run.manifest = verify(run)
        elif orphans := sorted(path.name for path in out.glob("checkpoint-*") if DATA_DIR.fullmatch(path.name)):
            fail(
                f"--resume: {out} holds the checkpoint data {orphans[0]} but not its {MANIFEST}, so it cannot be "
                "verified; nothing was changed: restore the manifest, or start afresh with --overwrite"
            )
        elif is_main():
            print(f"no checkpoint at {out / MANIFEST}: starting from step 0")
    barrier("--out ready")
    return run


def _run_files(out: pathlib.Path, outputs: tuple[str, ...]) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(the files of an earlier run in ``out``, everything else there)."""
    ours, others = [], []
    for path in sorted(out.iterdir()):
        name = path.name
        is_ours = name in (MANIFEST, "checkpoint.msgpack", *outputs) or name.startswith(
            ("checkpoint-", ".checkpoint-", f".{MANIFEST}", ".metrics.json")
        )
        (ours if is_ours else others).append(path)
    return ours, others


def _earlier_run(out: pathlib.Path, overwrite: bool, outputs: tuple[str, ...]) -> bool:
    """Whether ``out`` holds an earlier run to move aside (or delete, with --overwrite); fails with one
    line where it may do neither. Reads only."""
    ours, others = _run_files(out, outputs)
    if not ours or overwrite:
        return bool(ours)
    cwd = pathlib.Path.cwd()
    if others or out.resolve() in (cwd, *cwd.parents):  # only a folder that holds nothing else moves aside
        what = f"other files ({others[0].name}, ...)" if others else "is the folder this command runs in"
        fail(
            f"--out {out} holds an earlier run and {what}: "
            "continue it with --resume, replace it with --overwrite, or choose another --out"
        )
    return True


def _clear_earlier_run(out: pathlib.Path, overwrite: bool, outputs: tuple[str, ...]) -> None:
    if overwrite:
        for path in _run_files(out, outputs)[0]:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        print(f"--overwrite: deleted the earlier run in {out}")
        return
    aside = next(path for i in range(1, 10**6) if not (path := out.with_name(f"{out.name}.{i}")).exists())
    os.rename(out, aside)
    print(f"{out} held an earlier run: moved it to {aside} (--resume continues a run, --overwrite replaces it)")


# ----------------------------------------------------------------------------- checkpoints


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(tree) -> bytes:
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()


def _file_hashes(folder: pathlib.Path) -> dict[str, str]:
    """{path relative to ``folder``: SHA-256} of every file under ``folder``."""
    return {
        path.relative_to(folder).as_posix(): _sha256(path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if not path.is_dir()
    }


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _leaf_specs(state) -> list[list]:
    """[path, shape, dtype] of every leaf of ``state``, as the manifest records them."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return [[jax.tree_util.keystr(path), list(np.shape(leaf)), str(np.dtype(leaf.dtype))] for path, leaf in leaves]


def _options(config: dict, keys) -> str:
    """``--hidden 64 --seed 1`` for the given keys of a config."""

    def option(key):
        flag, value = f"--{key.replace('_', '-')}", config.get(key)
        if isinstance(value, bool) or value is None:
            return flag if value else f"no {flag}"
        return f"{flag} {value}"

    return " ".join(option(key) for key in keys)


def save_checkpoint(run: Run, state, losses: np.ndarray, step: int) -> None:
    """Writes the checkpoint of ``step`` atomically: data, fsync, rename, then the manifest (fsync, rename).

    Until the new manifest replaces the old one, the old checkpoint stays whole; afterwards the old
    data folder (and anything a crash left behind) is deleted. A second Ctrl-C during the save is held
    back until orbax has written (see ``holding``); the half-done save is then deleted, not committed.

    With several processes every one of them calls this: orbax writes the arrays (process 0 writes
    these host copies), process 0 alone creates, hashes, renames and commits, and the barriers keep
    the others from going on before the manifest names the new checkpoint.
    """
    token = _same_token() if jax.process_count() > 1 else secrets.token_hex(4)
    staging = run.out / f".checkpoint-staging-{token}"
    leaves = [np.asarray(leaf) for leaf in jax.device_get(jax.tree.leaves(state))]
    with holding():
        if is_main():
            staging.mkdir()
        barrier(f"staging {token}")
        ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(
            (staging / "state").absolute(),
            ocp.args.StandardSave({"leaves": leaves, "losses": losses}),  # orbax: absolute
        )
        if is_main():
            for path in [*sorted(staging.rglob("*"), reverse=True), staging]:  # files, then their folders
                _fsync(path)
            files = _file_hashes(staging)
            phase_hook("save", step)
            if stopping():  # a second Ctrl-C: the previous checkpoint stays the last complete one
                shutil.rmtree(staging, ignore_errors=True)
                raise KeyboardInterrupt
            _commit(run, state, staging, step, token, files)
        barrier(f"committed {token}")


def _commit(run: Run, state, staging: pathlib.Path, step: int, token: str, files: dict) -> None:
    data = run.out / f"checkpoint-{step:06d}-{token}"
    os.rename(staging, data)
    _fsync(run.out)
    body = {
        "format": FORMAT,
        "example": run.example,
        "config": run.config,
        "config_sha256": _sha256(_canonical(run.config)),
        "step": step,
        "directory": data.name,
        "files": files,
        "leaves": _leaf_specs(state),
    }
    manifest = run.out / f".{MANIFEST}.{token}"
    with open(manifest, "wb") as f:
        f.write(json.dumps({**body, "sha256": _sha256(_canonical(body))}, indent=1).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(manifest, run.out / MANIFEST)
    _fsync(run.out)
    for stale in [*run.out.glob("*checkpoint-*"), *run.out.glob(f".{MANIFEST}.*")]:  # older, or left by a crash
        if stale != data:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def verify(run: Run) -> dict:
    """The manifest of the checkpoint in ``run.out``, once every check passed; else a one-line error."""
    where = f"checkpoint in {run.out}"
    advice = "nothing was changed; delete it, or start afresh with --overwrite"
    try:
        manifest = json.loads((run.out / MANIFEST).read_bytes())
        body = {k: v for k, v in manifest.items() if k != "sha256"}
        intact = manifest["sha256"] == _sha256(_canonical(body))
    except OSError as e:
        fail(f"cannot read {run.out / MANIFEST}: {e.strerror}")
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or JSON of another shape
        intact = False
    if not intact:
        fail(f"{where} is corrupt: {MANIFEST} does not match its SHA-256; {advice}")
    if manifest.get("format") != FORMAT:
        fail(f"{where} has format {manifest.get('format')!r}, not {FORMAT!r} (another version of the examples)")
    if manifest["example"] != run.example:
        fail(f"{where} was written by examples/{manifest['example']}.py, not {run.example}.py")
    theirs = manifest["config"]
    differ = sorted(k for k in {*theirs, *run.config} if theirs.get(k) != run.config.get(k))
    if differ:
        fail(
            f"{where} was written with {_options(theirs, differ)}, this run has {_options(run.config, differ)}: "
            "resume with the same options, or choose another --out"
        )
    data = run.out / str(manifest["directory"])
    if not DATA_DIR.fullmatch(str(manifest["directory"])) or not data.is_dir():
        fail(f"{where} is corrupt: its data folder {data.name} is missing; {advice}")
    found = _file_hashes(data)
    for name in sorted({*found, *manifest["files"]}):
        if found.get(name) != manifest["files"].get(name):
            problem = "does not match its SHA-256"
            if name not in found or name not in manifest["files"]:
                problem = "is missing" if name not in found else "is not in its manifest"
            fail(f"{where} is corrupt: {data.name}/{name} {problem}; {advice}")
    return manifest


def restore_checkpoint(run: Run, template, steps: int):
    """(state, losses, step) from the verified checkpoint; ``template`` gives the state's structure."""
    manifest = run.manifest
    specs = _leaf_specs(template)
    if manifest["leaves"] != specs:
        theirs = next((a, b) for a, b in zip(manifest["leaves"], specs, strict=False) if a != b)
        fail(f"checkpoint in {run.out} holds another model: {theirs[0]} where this one has {theirs[1]}")
    target = {
        "leaves": [np.zeros(shape, dtype) for _, shape, dtype in specs],
        "losses": np.zeros(steps, np.float32),
    }
    try:
        saved = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
            (run.out / manifest["directory"] / "state").absolute(), ocp.args.StandardRestore(target)
        )
    except Exception as e:  # verified files orbax still can't read (another orbax version, ...)
        fail(f"cannot restore the checkpoint in {run.out} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    state = jax.tree.unflatten(jax.tree.structure(template), saved["leaves"])
    return state, np.array(saved["losses"]), int(manifest["step"])


# ----------------------------------------------------------------------------- data parallelism


def data_mesh(batch_size: int) -> Mesh:
    """A 1-D mesh over every device of every process; the batch is split along its ``"data"`` axis.

    The devices go in order of their process, so that each process holds one block of the batch's rows.
    """
    devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    if batch_size % len(devices):
        where = f" of the {jax.process_count()} processes" if jax.process_count() > 1 else ""
        fail(f"the batch size {batch_size} must be a multiple of the {len(devices)} devices{where}")
    return Mesh(np.array(devices), ("data",))


def local_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> slice:
    """The rows of a global array of ``shape`` that this process's devices hold under ``sharding``
    (all of them in one process): the slice of every global batch this process loads or derives."""
    starts_stops = {
        (index[0].start or 0, shape[0] if index[0].stop is None else index[0].stop)
        for index in sharding.addressable_devices_indices_map(shape).values()
    }
    first, last = min(start for start, _ in starts_stops), max(stop for _, stop in starts_stops)
    if sum(stop - start for start, stop in starts_stops) != last - first:
        fail("this process's devices do not hold one block of the batch's rows")  # not with data_mesh's order
    return slice(first, last)


def _global(sharding: NamedSharding, x, *, split: bool = False):
    """A global array from the same host value in every process: each process puts on its devices
    the rows (``local_rows``) that they hold, and JAX assembles them without copying between hosts."""
    x = np.asarray(x)
    local = x[local_rows(sharding, x.shape)] if split else x
    return jax.make_array_from_process_local_data(sharding, local, x.shape)


def shard(mesh: Mesh, batch):
    """Puts each array of ``batch`` on the mesh, split along its first (batch) axis: every process
    takes its own rows of the global batch, which stays the one a single process would train on."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda x: _global(sharding, x, split=True), batch)


def replicate(mesh: Mesh, tree):
    """Puts a full copy of every array of ``tree`` (parameters, optimizer state) on every device."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _global(sharding, x), jax.device_get(tree))


# ----------------------------------------------------------------------------- the loop


def train(state, train_step, batch_at, args, run: Run, mesh: Mesh, *, desc: str):
    """Runs ``state, loss = train_step(state, *batch_at(step))`` from the checkpoint's step to ``args.steps``.

    ``state`` is any pytree of arrays (a ``TrainState``, an ``nnx.State``); with --resume it is replaced
    by the checkpoint's, saved every ``--checkpoint-every`` steps, at a SIGINT and at the end.
    ``batch_at(step)`` gives the global batch; each process puts its own rows of it on its devices.
    Returns ``(state, losses, finished)``, the state as host (NumPy) arrays, for an evaluation in one
    process: ``finished`` is False when ``--stop-after`` ended the run early. With several processes,
    only process 0 returns; the others end here, once the last checkpoint is committed.
    """
    from tqdm.auto import tqdm

    losses, first = np.full(args.steps, np.nan, np.float32), 0
    if run.manifest is not None:
        state, losses, first = restore_checkpoint(run, state, args.steps)
        if is_main():
            print(f"resuming from step {first} ({run.out / MANIFEST})")
    state = replicate(mesh, state)
    stop = args.steps if args.stop_after is None else min(args.stop_after, args.steps)
    pending = {}  # step -> loss still on the device: reading each one at once would stall the loop
    saved_at = first if run.manifest is not None else None  # the step of the checkpoint on disk

    def record():
        for done, loss in jax.device_get(pending).items():
            losses[done] = loss
        pending.clear()

    def save(step):
        nonlocal saved_at
        record()
        if saved_at != step:
            save_checkpoint(run, state, losses, step)
            saved_at = step

    def stop_here(step):
        save(step)
        bar.close()
        print(f"interrupted at step {step}; saved {run.out / MANIFEST}; continue with --resume", file=sys.stderr)
        raise SystemExit(130)

    phase_hook("start", first)
    bar = tqdm(total=args.steps, initial=first, desc=desc, unit="step", dynamic_ncols=True, disable=not is_main())
    with bar:
        for step in range(first, stop):
            if agreed_interrupt():  # a SIGINT since the last step (or before training began), in any process
                stop_here(step)
            phase_hook("compile" if step == first else "step", step)
            state, pending[step] = train_step(state, *shard(mesh, batch_at(step)))
            bar.update(1)
            if (step + 1) % 20 == 0:
                record()
                bar.set_postfix(loss=f"{np.mean(losses[max(first, step - 19) : step + 1]):.4g}")  # last 20
            if (step + 1) % args.checkpoint_every == 0:
                save(step + 1)
        if agreed_interrupt():
            stop_here(stop)
        save(stop)
        if agreed_interrupt():  # a SIGINT during the last save
            stop_here(stop)
    if not is_main():  # process 0 evaluates and writes the outputs; the others are done
        print(f"process {jax.process_index()}: trained to step {stop}; process 0 writes the outputs")
        raise SystemExit(0)
    return jax.device_get(state), losses, stop == args.steps


def write_metrics(run: Run, metrics: dict, started: float) -> dict:
    """Adds the wall time since ``started`` (``time.perf_counter()``) and writes ``OUT/metrics.json``."""
    phase_hook("evaluate", metrics.get("steps", 0))
    if interrupted():
        print(
            f"interrupted before metrics.json was written; the checkpoint in {run.out} holds the finished "
            "training: --resume writes the metrics",
            file=sys.stderr,
        )
        raise SystemExit(130)
    metrics = {**metrics, "wall_time_s": round(time.perf_counter() - started, 2), "devices": jax.device_count()}
    metrics["processes"] = jax.process_count()
    tmp = run.out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, run.out / "metrics.json")
    return metrics


def pyplot():
    """matplotlib.pyplot with a file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
