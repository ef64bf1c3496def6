"""The examples' checkpoints: verified before use, never silently overwritten, always written at a SIGINT.

Issue 17: a checkpoint with a flipped byte must be refused with one line and exit status 1, leaving
every file in --out as it was; another example's or another configuration's checkpoint must be named
as such; a second run must not resume or destroy the first silently; a SIGINT at any point (before
training, during the first step's compilation, during a step, during a save, during the evaluation)
must end in a checkpoint and exit status 130, from which --resume ends bit for bit where an
uninterrupted run ends.

Runs are --smoke sized and in-process (the compiled train steps are cached per configuration); the
signals are real SIGINTs, sent by ``os.kill`` from ``_common.phase_hook`` at a known phase, and once
from outside, to a separate process that pauses at the first step until it arrives.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest
from test_examples import EXAMPLES, NAMES, ROOT, assert_same_checkpoint, saved, smoke, without_time


def snapshot(folder: pathlib.Path) -> dict[str, str | None]:
    """{path: SHA-256 of its bytes, or None for a folder} of everything under ``folder``."""
    return {
        path.relative_to(folder).as_posix(): None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


def checkpoint_files(out: pathlib.Path) -> list[pathlib.Path]:
    """The manifest and every file of the checkpoint folder it names."""
    data = out / json.loads((out / "checkpoint.json").read_text())["directory"]
    return [out / "checkpoint.json", *sorted(path for path in data.rglob("*") if path.is_file())]


def one_line_error(exit_info) -> str:
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message, message  # printed as one line; exit status 1
    return message


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **extra,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One finished smoke run of each example, checkpointed once, at step 6."""
    root = tmp_path_factory.mktemp("runs")
    for name in NAMES:
        smoke(name, root / name)
    return {name: root / name for name in NAMES}


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    """An uninterrupted smoke run of examples/adding.py checkpointed every 2 steps: (its metrics, its --out)."""
    out = tmp_path_factory.mktemp("whole") / "adding"
    return smoke("adding", out, "--checkpoint-every", "2"), out


@pytest.fixture
def common(runs):
    return sys.modules["_common"]  # examples/_common.py, as the examples imported it


# ----------------------------------------------------------------------------- verified before use


@pytest.mark.parametrize("name", NAMES)
def test_a_flipped_byte_in_any_checkpoint_file_is_refused_and_nothing_changes(name, runs, tmp_path):
    out = tmp_path / name
    shutil.copytree(runs[name], out)
    files = checkpoint_files(out)
    assert len(files) >= 8  # the manifest, orbax's metadata and its array data
    for path in files:
        original = path.read_bytes()
        for offset in sorted({0, len(original) // 2, len(original) - 1}):
            damaged = bytearray(original)
            damaged[offset] ^= 0x01  # the smallest change: one bit
            path.write_bytes(bytes(damaged))
            before = snapshot(out)
            with pytest.raises(SystemExit) as exit_info:
                smoke(name, out, "--resume")
            message = one_line_error(exit_info)
            assert message.startswith(f"error: checkpoint in {out} is corrupt: "), (path, offset, message)
            assert snapshot(out) == before, (path, offset)
        path.write_bytes(original)

    # Intact again, the same checkpoint is accepted: nothing is left to train, the metrics are the same.
    metrics = smoke(name, out, "--resume")
    assert without_time(metrics) == without_time(json.loads((runs[name] / "metrics.json").read_text()))


def test_a_corrupt_checkpoint_on_the_command_line_is_one_line_on_stderr_and_exit_1(runs, tmp_path):
    out = tmp_path / "sunspots"
    shutil.copytree(runs["sunspots"], out)
    data = checkpoint_files(out)[-1]
    data.write_bytes(bytes([data.read_bytes()[0] ^ 0xFF]) + data.read_bytes()[1:])
    before = snapshot(out)
    cmd = [sys.executable, str(EXAMPLES / "sunspots.py"), "--smoke", "--out", str(out), "--resume"]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    relative = data.relative_to(out / json.loads((out / "checkpoint.json").read_text())["directory"]).as_posix()
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint in {out} is corrupt: "), result.stderr
    assert f"{relative} does not match its SHA-256" in lines[0]
    assert snapshot(out) == before


def test_another_examples_or_configurations_checkpoint_is_named_as_such(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs["digits"], out)
    before = snapshot(out)
    expected = {
        ("sunspots",): f"error: checkpoint in {out} was written by examples/digits.py, not sunspots.py",
        ("nnx_digits",): f"error: checkpoint in {out} was written by examples/digits.py, not nnx_digits.py",
        ("digits", "--seed", "1"): f"error: checkpoint in {out} was written with --seed 0, this run has --seed 1: "
        "resume with the same options, or choose another --out",
        ("digits", "--no-augment"): f"error: checkpoint in {out} was written with --augment, this run has "
        "no --augment: resume with the same options, or choose another --out",
    }
    for (name, *argv), message in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            smoke(name, out, "--resume", *argv)
        assert one_line_error(exit_info) == message
    with pytest.raises(SystemExit) as exit_info:  # the full-size configuration, not --smoke's
        sys.modules["jaxlstm_example_digits"].main(["--out", str(out), "--resume"])
    assert "was written with --batch 8 --hidden 8 --smoke --steps 6, this run has --batch 64 --hidden 128" in (
        one_line_error(exit_info)
    )
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- no silent overwrite


def test_a_second_run_sets_the_first_aside_and_overwrite_replaces_it(runs, tmp_path, capsys):
    out = tmp_path / "adding"
    shutil.copytree(runs["adding"], out)
    first = snapshot(out)
    capsys.readouterr()

    again = smoke("adding", out)  # the same command again: the earlier run moves to adding.1
    assert f"{out} held an earlier run: moved it to {out}.1 (--resume continues" in capsys.readouterr().out
    assert snapshot(tmp_path / "adding.1") == first
    assert without_time(again) == without_time(json.loads((tmp_path / "adding.1" / "metrics.json").read_text()))
    assert_same_checkpoint(out, tmp_path / "adding.1")

    second = snapshot(out)
    smoke("adding", out, "--overwrite")
    assert f"--overwrite: deleted the earlier run in {out}" in capsys.readouterr().out
    assert snapshot(out).keys() != second.keys()  # a new checkpoint folder (new name), a new run
    assert snapshot(tmp_path / "adding.1") == first and not (tmp_path / "adding.2").exists()

    (out / "notes.txt").write_text("not the example's")  # a folder that holds more than a run is not moved
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        smoke("adding", out)
    message = one_line_error(exit_info)
    assert "holds an earlier run and other files (notes.txt, ...)" in message
    assert "--resume" in message and "--overwrite" in message
    with pytest.raises(SystemExit) as exit_info:
        smoke("adding", out, "--resume", "--overwrite")
    assert "give one of them" in one_line_error(exit_info)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- signals and crashes

# phase@step where the SIGINT is sent -> the step of the checkpoint it leaves (saves every 2 steps)
SIGINT_AT = {"start@0": 0, "step@3": 4, "save@4": 4, "save@6": 6, "evaluate@6": 6}


@pytest.mark.parametrize("phase", SIGINT_AT)
def test_a_sigint_in_any_phase_checkpoints_exits_130_and_resumes_exactly(
    phase, whole, common, tmp_path, monkeypatch, capsys
):
    def send_sigint(name, step):
        if f"{name}@{step}" == phase:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "adding"
    monkeypatch.setattr(common, "phase_hook", send_sigint)
    with pytest.raises(SystemExit) as exit_info:
        smoke("adding", out, "--checkpoint-every", "2")
    assert exit_info.value.code == 130
    assert "continue with --resume" in capsys.readouterr().err or phase == "evaluate@6"
    assert saved(out)["manifest"]["step"] == SIGINT_AT[phase]
    assert not (out / "metrics.json").exists()

    monkeypatch.setattr(common, "phase_hook", lambda name, step: None)
    resumed = smoke("adding", out, "--checkpoint-every", "2", "--resume")
    assert without_time(resumed) == without_time(whole[0])
    assert_same_checkpoint(whole[1], out)


def test_a_sigint_that_lands_in_a_finalizer_is_not_lost(whole, common, tmp_path, monkeypatch):
    """The Ctrl-C lost in issue 17: Python's default handler raises KeyboardInterrupt wherever the main
    thread is, and one raised inside a ``__del__`` (or a weakref or atexit callback) is printed as
    "Exception ignored" and dropped; the run went on to exit 0. The handler now only counts."""

    class SendsSigintWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, inside __del__
                pass

    def collect_one(name, step):
        if f"{name}@{step}" == "step@2":
            SendsSigintWhenCollected()  # no reference kept: __del__ runs at once

    out = tmp_path / "adding"
    monkeypatch.setattr(common, "phase_hook", collect_one)
    with pytest.raises(SystemExit) as exit_info:
        smoke("adding", out, "--checkpoint-every", "2")
    assert exit_info.value.code == 130
    assert saved(out)["manifest"]["step"] == 3


def test_a_crash_in_the_middle_of_a_save_keeps_the_previous_checkpoint(whole, common, tmp_path, monkeypatch):
    def crash(name, step):
        if f"{name}@{step}" == "save@4":  # step 4's arrays are written, not yet committed
            raise RuntimeError("simulated crash")

    out = tmp_path / "adding"
    monkeypatch.setattr(common, "phase_hook", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        smoke("adding", out, "--checkpoint-every", "2")
    assert saved(out)["manifest"]["step"] == 2  # the manifest still names step 2's checkpoint
    assert len(list(out.glob(".checkpoint-staging-*"))) == 1  # the half-done save, named by nothing

    monkeypatch.setattr(common, "phase_hook", lambda name, step: None)
    resumed = smoke("adding", out, "--checkpoint-every", "2", "--resume")
    assert without_time(resumed) == without_time(whole[0])
    assert_same_checkpoint(whole[1], out)
    assert not list(out.glob(".checkpoint-staging-*"))  # cleaned up by the next save


def test_a_real_sigint_during_compilation_of_digits(runs, tmp_path):
    """From outside, to a separate process paused at its first step (the one that compiles)."""
    out = tmp_path / "digits"
    cmd = [sys.executable, str(EXAMPLES / "digits.py"), "--smoke", "--out", str(out)]
    process = subprocess.Popen(
        cmd, env=env(JAXLSTM_EXAMPLES_PAUSE_AT="compile"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if "paused at compile@0" in line:
                process.send_signal(signal.SIGINT)
                break
        rest = process.stderr.read()
        assert process.wait(timeout=240) == 130, "".join(seen) + rest
    finally:
        process.kill()
    assert f"interrupted at step 1; saved {out / 'checkpoint.json'}; continue with --resume" in rest
    assert saved(out)["manifest"]["step"] == 1

    resumed = smoke("digits", out, "--resume")
    assert without_time(resumed) == without_time(json.loads((runs["digits"] / "metrics.json").read_text()))
    assert_same_checkpoint(runs["digits"], out)
