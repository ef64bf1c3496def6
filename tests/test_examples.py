"""The training examples (examples/adding.py, digits.py, nnx_digits.py, sunspots.py) in their --smoke mode.

Each runs in-process through its ``main(argv)`` and must write metrics.json, its plot and a checkpoint;
an interrupted run resumed from its checkpoint must end with exactly (bitwise) the state of an
uninterrupted one; data parallelism over 4 (forced CPU) devices must give the loss of 1 device; bad
options (a number that is not finite or out of range) and a missing [examples] extra must end in a
one-line error; --resume on a checkpoint whose manifest is gone must refuse and keep every file; a
second Ctrl-C, during a save or as the command leaves, must end in the documented line, without a
traceback or a half-done save. Compiled train steps are cached per configuration inside each example,
so repeated runs are cheap. Checkpoint integrity, overwrites and signals are tested in
test_checkpoints.py, several processes in test_distributed.py.

The examples run under JAX's default dtype promotion, as a user runs them: optax's Adam computes
``b1 ** count`` (a float and an int32 step count), which the suite's strict promotion refuses. Run with
strict promotion everywhere except inside the optimizer's update, all four examples pass; the rank
promotion stays "raise".
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = ("adding", "digits", "nnx_digits", "sunspots")
PLOTS = {"adding": "loss.png", "digits": "confusion.png", "nnx_digits": "confusion.png", "sunspots": "forecast.png"}
METRIC = {"adding": "test_mse", "digits": "test_accuracy", "nnx_digits": "test_accuracy", "sunspots": "test_rmse"}


def load(name: str):
    """examples/NAME.py as a module (they import their shared helpers as ``_common``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    module_name = f"jaxlstm_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # before running it: its dataclasses (linen modules) look it up
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def smoke(name: str, out: pathlib.Path, *argv: str) -> dict:
    with jax.numpy_dtype_promotion("standard"):  # as users run them: see the module's docstring
        return load(name).main(["--smoke", "--out", str(out), *argv])


def saved(out: pathlib.Path) -> dict:
    """The checkpoint in ``out``, read with orbax alone: its manifest, its leaves and losses as NumPy arrays."""
    manifest = json.loads((out / "checkpoint.json").read_text())
    tree = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(out / manifest["directory"] / "state")
    return {"manifest": manifest, "leaves": [np.asarray(a) for a in tree["leaves"]], "losses": tree["losses"]}


def assert_same_checkpoint(a: pathlib.Path, b: pathlib.Path) -> None:
    """The checkpoints in ``a`` and ``b`` hold the same step, parameters, optimizer state and losses, bit for bit."""
    x, y = saved(a), saved(b)
    assert x["manifest"]["step"] == y["manifest"]["step"]
    assert x["manifest"]["leaves"] == y["manifest"]["leaves"]  # the same paths, shapes and dtypes
    assert any("w_ih" in path for path, _, _ in x["manifest"]["leaves"])  # the LSTM's weights are there
    for (path, _, _), u, v in zip(x["manifest"]["leaves"], x["leaves"], y["leaves"], strict=True):
        np.testing.assert_array_equal(u, v, err_msg=path)
    np.testing.assert_array_equal(x["losses"], y["losses"])


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_metrics_plot_and_checkpoint(name, tmp_path):
    metrics = smoke(name, tmp_path / "run")

    out = tmp_path / "run"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / PLOTS[name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved(out)["manifest"]["step"] == 6 and saved(out)["manifest"]["example"] == name
    assert math.isfinite(metrics[METRIC[name]]) and math.isfinite(metrics["final_loss"])
    assert metrics["wall_time_s"] > 0 and metrics["steps"] == 6 and metrics["seed"] == 0
    if name == "sunspots":  # the classical baselines on the fixed split (1700-1950 / 1951-2008)
        assert metrics["baselines"]["persistence"] == pytest.approx(32.79, abs=0.01)
        assert metrics["baselines"]["autoreg9"] == pytest.approx(18.67, abs=0.01)
        assert metrics["baselines"]["autoreg9_sqrt"] == pytest.approx(16.29, abs=0.01)
        assert metrics["test_years"] == [1951, 2008]
    elif name in ("digits", "nnx_digits"):
        assert metrics["test_images"] == 450
        assert set(metrics["baselines"]) == {"logistic_regression", "svm_rbf"}
    else:
        assert 0.1 < metrics["baselines"]["always_1"] < 0.25


@pytest.mark.parametrize("name", ["adding", "nnx_digits", "sunspots"])
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(name, tmp_path, capsys):
    whole = smoke(name, tmp_path / "whole", "--checkpoint-every", "2")

    stopped = smoke(name, tmp_path / "parts", "--checkpoint-every", "2", "--stop-after", "3")
    assert stopped == {"stopped_at": 3}
    assert not (tmp_path / "parts" / "metrics.json").exists()
    assert saved(tmp_path / "parts")["manifest"]["step"] == 3
    capsys.readouterr()
    resumed = smoke(name, tmp_path / "parts", "--checkpoint-every", "2", "--resume")
    assert "resuming from step 3" in capsys.readouterr().out

    assert_same_checkpoint(tmp_path / "whole", tmp_path / "parts")  # parameters, optimizer state, step, losses
    assert without_time(resumed) == without_time(whole)


def test_four_devices_give_the_loss_of_one(tmp_path):
    """Data parallel: the batch split over 4 forced CPU devices, the parameters replicated."""
    one = smoke("adding", tmp_path / "one")
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "JAX_NUMPY_RANK_PROMOTION": "raise",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(EXAMPLES / "adding.py"), "--smoke", "--out", str(tmp_path / "four")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    four = json.loads((tmp_path / "four" / "metrics.json").read_text())

    assert four["devices"] == 4
    assert four["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    assert four["test_mse"] == pytest.approx(one["test_mse"], rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_out_that_is_a_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        smoke("digits", path)
    assert isinstance(exit_info.value.code, str)  # printed as one line; exit status 1
    assert "not a folder" in exit_info.value.code and "\n" not in exit_info.value.code

    # The real command line: exit status 1, one line on stderr, no traceback.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(EXAMPLES / "sunspots.py"), "--smoke", "--out", str(path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: --out {path} exists and is not a folder"]


@pytest.mark.parametrize("name", ["digits", "sunspots"])
def test_a_missing_extra_is_a_one_line_error(name):
    """Without the [examples] extra (here: scikit-learn or tqdm, blocked from importing) the script says
    which package is missing and how to install the extra, instead of a ModuleNotFoundError."""
    blocked, package = {"digits": ("sklearn", "scikit-learn"), "sunspots": ("tqdm", "tqdm")}[name]
    code = (
        f"import runpy, sys; sys.modules[{blocked!r}] = None; sys.argv = [{name!r}, '--smoke'];"
        f"runpy.run_path({str(EXAMPLES / f'{name}.py')!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {package} not installed; examples need the [examples] extra: pip install -e '.[examples]'"
    ]


def test_a_relative_out_folder_works_as_the_readme_runs_it(tmp_path):
    """The README's main job uses the default, relative --out (runs/NAME): orbax needs absolute paths."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(EXAMPLES / "sunspots.py"), "--smoke", "--out", "runs/relative"]
    # (A second run setting the first aside is tested in test_checkpoints; one subprocess fewer here.)
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "relative" / "checkpoint.json").is_file()
    resumed = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


# ----------------------------------------------------------------------------- options and Ctrl-C (issue 25)

BAD_OPTIONS = [
    ("digits", ["--lr", "nan"], "--lr must be a finite number, got nan"),
    ("digits", ["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    ("digits", ["--weight-decay", "-0.1"], "--weight-decay must be at least 0, got -0.1"),
    ("digits", ["--seed", "-1"], "--seed must be at least 0, got -1"),
    ("nnx_digits", ["--lr=-inf"], "--lr must be a finite number, got -inf"),
    ("sunspots", ["--lr", "0"], "--lr must be positive, got 0.0"),
    ("sunspots", ["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    ("adding", ["--clip", "0"], "--clip must be positive, got 0.0"),
    ("adding", ["--clip", "nan"], "--clip must be a finite number, got nan"),
    ("digits", ["--num-processes", "0"], "--num-processes must be positive, got 0"),
    ("digits", ["--num-processes", "2", "--process-id", "2"], "--process-id must be from 0 to 1, got 2"),
    ("digits", ["--coordinator", "127.0.0.1"], "--coordinator must be HOST:PORT (a port from 1 to 65535)"),
]


@pytest.mark.parametrize(("name", "argv", "message"), BAD_OPTIONS)
def test_a_numeric_option_out_of_range_is_a_one_line_error(name, argv, message, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        smoke(name, tmp_path / "run", *argv)
    assert isinstance(exit_info.value.code, str) and "\n" not in exit_info.value.code
    assert exit_info.value.code.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def snapshot(folder: pathlib.Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_resume_without_the_manifest_refuses_and_keeps_every_file(tmp_path):
    out = tmp_path / "run"
    smoke("digits", out, "--stop-after", "3")
    (out / "checkpoint.json").unlink()  # the checkpoint-* data folder is left without its manifest
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        smoke("digits", out, "--resume")
    assert "holds the checkpoint data checkpoint-000003-" in exit_info.value.code
    assert "but not its checkpoint.json" in exit_info.value.code and "\n" not in exit_info.value.code
    assert snapshot(out) == before


def run_with_sigints(out: pathlib.Path, phases: list[str]) -> subprocess.Popen:
    """examples/digits.py --smoke as the command line runs it, sending itself a SIGINT at each of
    ``phases`` (``phase@step``, as ``_common.phase_hook`` names them; a phase may come twice)."""
    code = (
        "import os, runpy, signal, sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "import _common\n"
        f"phases = {phases!r}\n"
        "def send(phase, step):\n"
        "    for _ in range(phases.count(f'{phase}@{step}')):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "_common.phase_hook = send\n"
        f"sys.argv = ['digits.py', '--smoke', '--checkpoint-every', '2', '--out', {str(out)!r}]\n"
        f"runpy.run_path({str(EXAMPLES / 'digits.py')!r}, run_name='__main__')\n"
    )
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_second_ctrl_c_ends_in_one_line_keeping_the_last_checkpoint(tmp_path):
    """A first Ctrl-C at step 2 (the last checkpoint is step 2's) makes the run save at step 3. A second
    one during that save: orbax's writes finish, then the half-done save is deleted. A second one as
    the command leaves (once saved, as jax's clean-up used to run): no traceback either."""
    during, leaving = tmp_path / "during_save", tmp_path / "leaving"
    runs = {
        during: run_with_sigints(during, ["step@2", "save@3"]),
        leaving: run_with_sigints(leaving, ["step@2", "exit@130"]),
    }
    try:
        results = {out: process.communicate(timeout=240) for out, process in runs.items()}
    finally:
        for process in runs.values():
            process.kill()
    for out, last_step in ((during, 2), (leaving, 3)):
        stderr = results[out][1]
        assert runs[out].returncode == 1, stderr[-3000:]
        assert (
            stderr.strip().splitlines()[-1]
            == "stopped at once by a second Ctrl-C; the last complete checkpoint is kept"
        )
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
        assert saved(out)["manifest"]["step"] == last_step
        assert sorted(p.name.split("-")[0] for p in out.iterdir()) == ["checkpoint", "checkpoint.json"]  # no staging
