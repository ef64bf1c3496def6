"""Smoke test of benchmarks/compare.py: its --quick run completes and writes complete JSON.

Runs in-process (the script is loaded from its path, not installed) under strict promotion, so every
implementation's adapter code must trace with jax_numpy_rank_promotion="raise" and
jax_numpy_dtype_promotion="strict". Timings are not checked, only that they exist and are positive.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

COMPARE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"
GPU_SH = COMPARE.parent / "gpu.sh"
ALWAYS = {
    "jaxlstm",
    "jaxlstm.LSTM",
    "jaxlstm+mask",
    "jaxlstm+resets",
    "jaxlstm.autodiff",
    "flax.OptimizedLSTMCell",
    "flax.LSTMCell",
    "xla.gemms",
}
OPTIONAL = {"haiku": "haiku", "equinox": "equinox", "torch": "torch"}  # implementation -> package
# The LSTM family, run only when asked for (--family or --impls)
FAMILY = {
    "jaxlstm+peepholes",
    "jaxlstm+layer_norm",
    "jaxlstm+cell_clip",
    "jaxlstm+cifg",
    "jaxlstm+proj_size",
    "jaxlstm+peepholes.autodiff",
}
GPU_ONLY = {"jaxlstm.xla", "torch.cuda"}  # run only when named (benchmarks/gpu.sh)
FLOAT32_TWINS = {"jaxlstm.LSTM@float32", "torch@float32"}  # run only with --dtype bfloat16 (or when named)
GRU = {"jaxlstm.gru", "flax.GRUCell", "torch.GRU"}  # run only with --gru (or when named)


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("jaxlstm_benchmarks_compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(compare, tmp_path, *argv) -> tuple[int, dict]:
    path = tmp_path / "bench.json"
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        rc = compare.main(["--quick", "--json", str(path), *argv])
    return rc, json.loads(path.read_text())


def test_quick_run_reports_every_installed_implementation(compare, tmp_path):
    installed = ALWAYS | {name for name, package in OPTIONAL.items() if importlib.util.find_spec(package)}
    assert set(compare.IMPLS) == ALWAYS | set(OPTIONAL) | FAMILY | GPU_ONLY | FLOAT32_TWINS | GRU
    assert not FLOAT32_TWINS & set(compare.DEFAULT_IMPLS) and not GRU & set(compare.DEFAULT_IMPLS)
    assert not GPU_ONLY & set(compare.DEFAULT_IMPLS) and set(compare.GPU_ONLY) == GPU_ONLY

    rc, report = run(compare, tmp_path, "--check")

    assert [r["errors"] for r in report["results"]] == [{}], "an implementation failed to build or run"
    assert rc == 0
    assert set(report["skipped"]) == set(OPTIONAL) - installed
    (result,) = report["results"]
    assert result["shape"] == {"B": 2, "T": 8, "D": 4, "H": 8}
    assert set(result["impls"]) == installed
    fwd_flops = 2 * 2 * 8 * (4 + 8) * 4 * 8
    assert result["flops"] == {"fwd": fwd_flops, "fwdbwd": 3 * fwd_flops}
    for name, entry in result["impls"].items():
        for mode in ("fwd", "fwdbwd"):
            stats = entry[mode]
            assert len(stats["samples_ms"]) == report["config"]["reps"] == 2, (name, mode)
            assert all(s > 0 for s in stats["samples_ms"]), (name, mode)
            assert stats["median_ms"] > 0 and stats["gflops"] > 0, (name, mode)
            if name != "torch":  # JAX implementations report their jit compile time
                assert entry["compile_s"][mode] > 0, (name, mode)

    for mode in ("fwd", "fwdbwd"):
        ratios = result["ratios"][mode]
        assert set(ratios) == (installed - {"jaxlstm"}) | {"fastest_jax_anchor"}
        for name in installed - {"jaxlstm"}:
            expected = result["impls"]["jaxlstm"][mode]["median_ms"] / result["impls"][name][mode]["median_ms"]
            assert ratios[name] == pytest.approx(expected) and ratios[name] > 0
        fastest = ratios["fastest_jax_anchor"]
        anchors = {"flax.OptimizedLSTMCell", "flax.LSTMCell", "haiku", "equinox"} & installed
        assert fastest["impl"] in anchors
        assert fastest["ratio"] == pytest.approx(max(ratios[name] for name in anchors))

    assert report["matmul"]["gflops"] > 0 and report["matmul"]["n"] == 256
    assert report["check"] and all(diff < 1e-5 for diff in report["check"].values())
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"]
    assert machine["versions"]["jax"] == jax.__version__


def test_missing_package_is_skipped_with_a_note(compare, tmp_path, monkeypatch, capsys):
    impl = compare.IMPLS["equinox"]
    monkeypatch.setitem(compare.IMPLS, "equinox", impl._replace(requires=("no_such_package_for_jaxlstm",)))

    rc, report = run(compare, tmp_path, "--impls", "jaxlstm,equinox", "--reps", "1")

    assert rc == 0
    assert report["skipped"] == {"equinox": "no_such_package_for_jaxlstm not installed"}
    assert set(report["results"][0]["impls"]) == {"jaxlstm"}
    assert "equinox: skipped (no_such_package_for_jaxlstm not installed)" in capsys.readouterr().out


def test_family_runs_when_asked_for(compare, tmp_path):
    """The LSTM family stays out of the default run (it would double its compile time); named, it
    runs, a projection timed against a cotangent of its own width P."""
    assert not FAMILY & set(compare.DEFAULT_IMPLS) and set(compare.FAMILY) == FAMILY
    rc, report = run(compare, tmp_path, "--impls", "jaxlstm,jaxlstm+proj_size", "--reps", "1")
    assert rc == 0 and [r["errors"] for r in report["results"]] == [{}]
    assert set(report["results"][0]["impls"]) == {"jaxlstm", "jaxlstm+proj_size"}


def test_gru_runs_beside_the_lstms_it_is_compared_with(compare, tmp_path):
    """--gru times the GRU (jaxlstm's, Flax's, torch's) beside jaxlstm, Flax's and torch's LSTMs."""
    assert set(compare.GRU_IMPLS) == GRU
    rc, report = run(compare, tmp_path, "--gru", "--reps", "1")
    assert rc == 0 and [r["errors"] for r in report["results"]] == [{}]
    expected = {"jaxlstm", "flax.OptimizedLSTMCell", "torch"} | GRU
    if importlib.util.find_spec("torch") is None:
        expected -= {"torch", "torch.GRU"}
    assert set(report["results"][0]["impls"]) == expected


def test_bfloat16_run_computes_in_bfloat16_beside_its_float32_twin(compare, tmp_path):
    rc, report = run(compare, tmp_path, "--dtype", "bfloat16", "--impls", "jaxlstm.LSTM,jaxlstm.LSTM@float32", "--reps", "1")
    assert rc == 0 and [r["errors"] for r in report["results"]] == [{}]
    assert report["config"]["dtype"] == "bfloat16"
    assert set(report["results"][0]["impls"]) == {"jaxlstm.LSTM", "jaxlstm.LSTM@float32"}
    assert isinstance(report["machine"]["bf16_instructions"], list)  # amx_bf16, avx512_bf16, ... or none


def test_bad_arguments_are_rejected(compare):
    with pytest.raises(SystemExit):
        compare.main(["--impls", "jaxlstm,nonsense"])
    with pytest.raises(SystemExit):
        compare.main(["--shapes", "1,2,3"])


def _matmul_flops(jaxpr) -> int:
    """2·M·N·K summed over every dot_general in a (closed) jaxpr, a scan's body counted once per step."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
            total += 2 * out.size * int(np.prod([lhs.shape[d] for d in lhs_contract]))
        for name, sub in eqn.params.items():
            if name in ("jaxpr", "call_jaxpr") and sub is not None:
                inner = getattr(sub, "jaxpr", sub)
                total += _matmul_flops(inner) * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    return total


@pytest.mark.parametrize("T", [8, 6])  # whole chunks of 4 steps, and a shorter last chunk
def test_gemm_floor_runs_exactly_an_lstms_matmuls(compare, T):
    """The floor is only a bound if it does the same matmul work as an LSTM: 2·B·T·(D+H)·4H FLOPs
    forward and 3x that forward+backward."""
    shape = compare.Shape(2, T, 3, 5)
    fwd, fwdbwd = compare.make_gemm_floor(shape, compare.make_data(shape, 0))
    assert _matmul_flops(fwd.jaxpr.jaxpr) == shape.fwd_flops()
    assert _matmul_flops(fwdbwd.jaxpr.jaxpr) == 3 * shape.fwd_flops()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(fwdbwd()))


def test_gpu_script_dry_run(tmp_path):
    """``benchmarks/gpu.sh --dry-run`` on this CPU: every implementation it can run here in float32, jaxlstm
    again with TF32, jl.LSTM in bfloat16 beside its float32 twin, RESULTS-gpu.md and .json written (into
    tmp_path), with where jl.lstm ran and the goals' ratios."""
    done = subprocess.run(
        ["bash", str(GPU_SH), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "RESULTS-gpu.json").read_text())
    assert summary["dry_run"] and not summary["skipped"]
    assert [(run["precision"], run["shape"]) for run in summary["runs"]] == [
        ("float32", [2, 8, 4, 8]),
        ("tf32", [2, 8, 4, 8]),
        ("bfloat16", [2, 8, 4, 8]),
    ]
    every = {"jaxlstm", "jaxlstm.xla", "jaxlstm.autodiff", "flax.OptimizedLSTMCell"} | (
        {"torch.cuda"} & set(summary["impls"])
    )
    for run in summary["runs"]:
        assert run["result"]["errors"] == {}
        expected = {"float32": every, "tf32": {"jaxlstm"}, "bfloat16": {"jaxlstm.LSTM", "jaxlstm.LSTM@float32"}}
        assert set(run["result"]["impls"]) == expected[run["precision"]]
        assert run["result"]["jaxlstm_backend"]["backend"] == ("cudnn" if jax.default_backend() == "gpu" else "xla")
        for entry in run["result"]["impls"].values():
            assert all(entry[mode]["median_ms"] > 0 for mode in ("fwd", "fwdbwd"))
    text = (tmp_path / "RESULTS-gpu.md").read_text()
    assert "## float32" in text and "## tf32" in text and "## bfloat16" in text and "DRY RUN" in text
    assert "jaxlstm.xla / flax.OptimizedLSTMCell (fwd+bwd) ≤ 0.8" in text


def test_precision_numerics_measures_drift_and_gradients(capsys):
    """benchmarks/precision_numerics.py, both tables at 3 steps and one seed: a row per cell, each figure a
    small error, not negative."""
    path = COMPARE.parent / "precision_numerics.py"
    spec = importlib.util.spec_from_file_location("jaxlstm_benchmarks_precision_numerics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # three cells (a projection changes the outputs' width; layer norm has the extra row) keep it quick
    module.VARIANTS = {name: module.VARIANTS[name] for name in ("plain", "proj_size=8", "layer_norm")}
    for argv, rows in ((["--gradients"], len(module.VARIANTS)), ([], len(module.VARIANTS) + 1)):
        assert module.main([*argv, "--steps", "3", "--seeds", "1"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2 + rows, lines
        for line in lines[2:]:
            value = float(line.split("|")[2].split()[0])
            assert 0 <= value < 0.1, line
