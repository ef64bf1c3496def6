"""examples/digits.py across processes with jax.distributed, on this machine (issue 26).

The same --smoke run in two layouts of 4 CPU devices: 1 process with 4 devices, and 2 processes with 2
devices each (``--coordinator 127.0.0.1:PORT --num-processes 2 --process-id I``, gloo collectives). Both
train on the same global batches split 4 ways, so they must give the same metrics and the same
checkpoint to float32 rounding (only the all-reduce's implementation differs), and a checkpoint written
by either layout must resume in the other. Every process is a subprocess bounded in time and ended by
its pid in a ``finally``; the port is a free one on 127.0.0.1. docs/scaling.md's snippets run here too,
on 4 CPU devices.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_examples import EXAMPLES, ROOT, saved

SECONDS = 300  # for one launch, all its processes together


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: pathlib.Path, processes: int, devices: int, *argv: str, pause: int | None = None) -> list[str]:
    """Runs ``examples/digits.py --smoke --out OUT ARGV`` as ``processes`` processes of ``devices`` CPU
    devices each; returns their stdout, process 0's first. Fails with their stderr if one fails.

    With ``pause=I``, process I alone waits at its first step (``JAXLSTM_EXAMPLES_PAUSE_AT=compile``)
    until it gets a SIGINT, sent from here; every process must then exit with status 130."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(EXAMPLES / "digits.py"), "--smoke", "--out", str(out), *argv]
    if processes > 1:
        cmd += ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(processes)]
    logs = out.parent / f"{out.name}-logs"
    logs.mkdir(exist_ok=True)
    running = []
    try:
        for i in range(processes):
            which = ["--process-id", str(i)] if processes > 1 else []
            paused = {"JAXLSTM_EXAMPLES_PAUSE_AT": "compile"} if i == pause else {}
            with open(logs / f"{i}.out", "w") as stdout, open(logs / f"{i}.err", "w") as stderr:
                process = subprocess.Popen([*cmd, *which], env=env | paused, stdout=stdout, stderr=stderr, text=True)
                running.append(process)
        deadline = time.monotonic() + SECONDS
        if pause is not None:
            while "paused at compile@0" not in (logs / f"{pause}.err").read_text():
                assert time.monotonic() < deadline and running[pause].poll() is None, "process did not pause"
                time.sleep(0.1)
            running[pause].send_signal(signal.SIGINT)
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in running]
    finally:
        for p in running:  # each by its pid, whatever happened above
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = [(logs / f"{i}.err").read_text() for i in range(processes)]
    expected = [0 if pause is None else 130] * processes
    assert codes == expected, "\n".join(f"process {i}: {e[-3000:]}" for i, e in enumerate(errors))
    return [(logs / f"{i}.out").read_text() for i in range(processes)]


def metrics(out: pathlib.Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def assert_same_metrics(a: dict, b: dict) -> None:
    assert a["test_accuracy"] == b["test_accuracy"] and a["baselines"] == b["baselines"]
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-5)  # float32 rounding of 6 steps
    assert a["devices"] == b["devices"] == 4


def assert_close_checkpoints(a: pathlib.Path, b: pathlib.Path) -> None:
    """The same step, options and leaves (paths, shapes, dtypes); the same values to float32 rounding."""
    x, y = saved(a), saved(b)
    for key in ("step", "config", "leaves", "example"):
        assert x["manifest"][key] == y["manifest"][key], key
    assert any("w_ih" in path for path, _, _ in x["manifest"]["leaves"])
    for (path, _, _), u, v in zip(x["manifest"]["leaves"], x["leaves"], y["leaves"], strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(x["losses"], y["losses"], rtol=1e-5)


def test_two_processes_train_as_one_process_with_the_same_devices(tmp_path):
    """Steps 0-2 in one layout, 3-5 in the other, both ways round: the checkpoints of step 3 and of
    step 6 and the metrics agree to float32 rounding, so each layout computes what the other does."""
    one_then_two, two_then_one = tmp_path / "one_then_two", tmp_path / "two_then_one"

    launch(one_then_two, 1, 4, "--stop-after", "3")
    outputs = launch(two_then_one, 2, 2, "--stop-after", "3")  # orbax writes from both processes
    assert "process 1: trained to step 3" in outputs[1]
    assert_close_checkpoints(one_then_two, two_then_one)

    outputs = launch(one_then_two, 2, 2, "--resume")  # one process's checkpoint, resumed by two
    assert "resuming from step 3" in outputs[0] and "resuming from step 3" not in outputs[1]
    assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]  # process 0 alone reports
    assert "process 1: trained to step 6" in outputs[1]
    launch(two_then_one, 1, 4, "--resume")  # two processes' checkpoint, resumed by one

    assert metrics(one_then_two)["processes"] == 2 and metrics(two_then_one)["processes"] == 1
    assert_same_metrics(metrics(one_then_two), metrics(two_then_one))
    assert_close_checkpoints(one_then_two, two_then_one)
    assert sorted(p.name for p in one_then_two.iterdir() if not p.name.startswith("checkpoint-")) == [
        "checkpoint.json",
        "confusion.png",
        "metrics.json",
    ]


def test_a_ctrl_c_in_one_process_stops_every_process_at_the_same_step(tmp_path):
    """Process 1 alone gets the SIGINT (at its first step): both processes agree to stop after that
    step, save the checkpoint of step 1 together and exit 130 (``launch`` checks every exit status)."""
    out = tmp_path / "run"
    launch(out, 2, 2, pause=1)
    assert saved(out)["manifest"]["step"] == 1 and not (out / "metrics.json").exists()
    for i in (0, 1):
        assert "interrupted at step 1; saved" in (tmp_path / "run-logs" / f"{i}.err").read_text()


def python_snippets(page: pathlib.Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order, dedented (a block may sit in a list item)."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", page.read_text(), re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


def test_the_scaling_guide_runs_on_four_devices(tmp_path):
    """docs/scaling.md's snippets, one after the other in one process with 4 CPU devices (set before jax
    is imported, which a doctest in this process cannot do)."""
    snippets = python_snippets(ROOT / "docs" / "scaling.md")
    assert len(snippets) >= 5
    script = tmp_path / "scaling.py"
    script.write_text("\n\n".join(snippets))
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=SECONDS)
    assert result.returncode == 0, result.stderr[-3000:]
    # What the page's comments say each print shows, with 4 devices.
    assert result.stdout.splitlines() == ["(8, 50, 8) True", "['all-reduce']", "0 1 slice(0, 32, None)", "{5}", "True"]
