"""The one-shot GPU benchmark behind ``benchmarks/gpu.sh``: compare.py on the device, float32 then TF32.

    python benchmarks/gpu.py              # on a GPU machine: writes benchmarks/RESULTS-gpu.md and .json
    python benchmarks/gpu.py --dry-run    # anywhere: tiny shape, 1 rep, into a temporary directory
                                          # (its TF32 pass runs jaxlstm alone: TF32 changes no other code)

What runs, in one process (JAX and torch imported once), per precision and shape:
``compare.main`` with ``jaxlstm`` (``backend="auto"``: cuDNN on a CUDA GPU), ``jaxlstm.xla``,
``jaxlstm.autodiff``, ``flax.OptimizedLSTMCell`` and ``torch.cuda`` (when torch sees CUDA), forward and
forward+backward. First ``--precision float32`` (TF32 off everywhere, and ``--check``: jl.lstm equals flax on
converted weights), then ``--precision tf32`` (TF32 on everywhere), then ``--dtype bfloat16`` (mixed
precision: ``jl.lstm`` and ``jl.LSTM(dtype=bfloat16)`` beside ``jl.LSTM`` in float32, Flax with
``dtype=bfloat16``, torch converted to bfloat16). The results files are rewritten after
every shape, so a run cut short keeps what it measured; shapes that would start after ``--budget`` seconds
are skipped and listed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
SHAPES = [(1, 256, 32, 128), (32, 128, 128, 256), (128, 64, 256, 512), (16, 1024, 768, 768)]
DRY_SHAPES = [(2, 8, 4, 8)]
IMPLS = ["jaxlstm", "jaxlstm.xla", "jaxlstm.autodiff", "flax.OptimizedLSTMCell", "torch.cuda"]
PRECISIONS = ("float32", "tf32", "bfloat16")  # "bfloat16": compare.py --dtype bfloat16
BF16_IMPLS = ["jaxlstm", "jaxlstm.LSTM", "jaxlstm.LSTM@float32", "flax.OptimizedLSTMCell", "torch.cuda"]
# The goals of issue 15 on an H100/H200, float32: (impl, other, mode, at most this ratio of median times)
GOALS = [("jaxlstm", "torch.cuda", "fwdbwd", 1.1), ("jaxlstm.xla", "flax.OptimizedLSTMCell", "fwdbwd", 0.8)]
LABELS = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}


def load_compare():
    spec = importlib.util.spec_from_file_location("jaxlstm_benchmarks_compare", HERE / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_name() -> str | None:
    """``nvidia-smi``'s name, driver and memory of GPU 0, if there is one."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader", "--id=0"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def torch_cuda() -> str | None:
    """Why ``torch.cuda`` can't run here (``None`` if it can)."""
    if importlib.util.find_spec("torch") is None:
        return "torch not installed"
    import torch

    return None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"


def _ms(entry: dict | None, mode: str) -> float | None:
    return None if entry is None else entry[mode]["median_ms"]


def markdown(summary: dict) -> str:
    """RESULTS-gpu.md: per precision, the times, the ratios the goals are about, and where jl.lstm ran."""
    lines = [
        "# GPU results",
        "",
        f"Written by `benchmarks/gpu.sh` on {summary['date']} ({'DRY RUN on ' if summary['dry_run'] else ''}"
        f"{summary['device_kind']}; {summary['gpu'] or 'nvidia-smi: none'}). Median ms of "
        f"{summary['reps']} calls, fwd / fwd+bwd, float32 inputs and weights, batch-first (B, T, D, H).",
        "",
        "- **float32**: TF32 off everywhere: `jax_default_matmul_precision=float32` (jaxlstm's XLA loop, flax), "
        'jaxlstm\'s `cudnn_precision="float32"` (cuDNN FMA math), torch `allow_tf32=False` (cuDNN and matmul).',
        '- **tf32**: TF32 on everywhere: `tensorfloat32`, `cudnn_precision="tf32"`, torch `allow_tf32=True`.',
        "- **bfloat16**: every implementation computes in bfloat16 with float32 parameters where it has that mode "
        "(`compare.py --dtype bfloat16`); `jaxlstm.LSTM@float32` is the float32 twin of `jaxlstm.LSTM`.",
        '- `jaxlstm` is `jl.lstm(params, xs)` with `backend="auto"`; the Backend column says where it ran '
        "(`jl.backend_for`).",
    ]
    for note in summary["notes"]:
        lines.append(f"- {note}")
    for precision in PRECISIONS:
        runs = [run for run in summary["runs"] if run["precision"] == precision]
        if not runs:
            continue
        columns = dict.fromkeys(IMPLS + BF16_IMPLS)
        impls = [name for name in columns if any(name in run["result"]["impls"] for run in runs)]
        lines += ["", f"## {precision}", "", "| (B, T, D, H) | Backend | " + " | ".join(impls) + " |"]
        lines.append("|---|---|" + "---|" * len(impls))
        for run in runs:
            result = run["result"]
            cells = []
            for name in impls:
                entry = result["impls"].get(name)
                cells.append("—" if entry is None else " / ".join(f"{_ms(entry, m):.3g}" for m in LABELS))
            backend = result.get("jaxlstm_backend", {})
            lines.append(f"| {tuple(run['shape'])} | {backend.get('backend', '?')} | " + " | ".join(cells) + " |")
        lines += ["", "| (B, T, D, H) | " + " | ".join(f"{a} / {b} ({LABELS[m]}) ≤ {g}" for a, b, m, g in GOALS) + " |"]
        lines.append("|---|" + "---|" * len(GOALS))
        for run in runs:
            cells = []
            for a, b, mode, goal in GOALS:
                ours, theirs = (_ms(run["result"]["impls"].get(name), mode) for name in (a, b))
                if ours is None or theirs is None:
                    cells.append("—")
                else:
                    ratio = ours / theirs
                    cells.append(f"{ratio:.2f} {'met' if ratio <= goal else 'MISSED'}")
            lines.append(f"| {tuple(run['shape'])} | " + " | ".join(cells) + " |")
        errors = [
            f"{name} at {tuple(run['shape'])}: {error.splitlines()[0][:200]}"
            for run in runs
            for name, error in run["result"]["errors"].items()
        ]
        lines += [f"- FAILED {e}" for e in errors]
    if summary["skipped"]:
        lines += ["", "Skipped (over the time budget): " + ", ".join(summary["skipped"])]
    return "\n".join(lines) + "\n"


def write(out: pathlib.Path, summary: dict) -> None:
    (out / "RESULTS-gpu.json").write_text(json.dumps(summary, indent=2))
    (out / "RESULTS-gpu.md").write_text(markdown(summary))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shape, 1 rep, no --check, TF32 pass jaxlstm only, a temp directory"
    )
    parser.add_argument("--out", type=pathlib.Path, help="where RESULTS-gpu.md/.json go (default benchmarks/)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per implementation and mode (default 5)")
    parser.add_argument("--budget", type=float, default=420.0, help="start no shape after this many seconds")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out or (pathlib.Path(tempfile.mkdtemp(prefix="jaxlstm-gpu-")) if args.dry_run else HERE)
    out.mkdir(parents=True, exist_ok=True)
    shapes, reps = (DRY_SHAPES, 1) if args.dry_run else (SHAPES, 5)
    reps = args.reps or reps
    compare = load_compare()
    import jax

    impls, notes = list(IMPLS), []
    why_not_torch = torch_cuda()
    if why_not_torch:
        impls.remove("torch.cuda")
        notes.append(f"torch.cuda skipped: {why_not_torch}")
    summary = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "dry_run": args.dry_run,
        "device_kind": jax.devices()[0].device_kind,
        "gpu": gpu_name(),
        "reps": reps,
        "impls": impls,
        "goals": [dict(impl=a, other=b, mode=m, at_most=g) for a, b, m, g in GOALS],
        "notes": notes,
        "skipped": [],
        "runs": [],
    }
    failed = False
    for precision in PRECISIONS:
        for shape in shapes:
            label = f"{precision} {tuple(shape)}"
            if time.monotonic() - started > args.budget:
                summary["skipped"].append(label)
                continue
            print(f"== {label}", file=sys.stderr, flush=True)
            path = out / f"compare-{precision}-{'x'.join(map(str, shape))}.json"
            # A dry run checks the plumbing: TF32 changes no code of an implementation, so one is enough there.
            names = ["jaxlstm"] if args.dry_run and precision == "tf32" else impls
            if precision == "bfloat16":  # a dry run: jl.LSTM and its float32 twin check the plumbing
                names = [name for name in BF16_IMPLS if name in impls or name not in IMPLS]
                names = ["jaxlstm.LSTM", "jaxlstm.LSTM@float32"] if args.dry_run else names
            argv = ["--shapes", ",".join(map(str, shape)), "--impls", ",".join(names), "--reps", str(reps)]
            argv += ["--warmup", "0" if args.dry_run else "2", "--json", str(path)]
            argv += ["--dtype", "bfloat16"] if precision == "bfloat16" else ["--precision", precision]
            argv += ["--matmul-size", "256" if args.dry_run else "4096"]
            if precision == "float32" and not args.dry_run:
                argv.append("--check")
            try:
                failed |= compare.main(argv) != 0
            except Exception as exc:  # e.g. --check's tolerance: record it, measure the rest
                failed = True
                summary["notes"].append(f"{label}: compare.py FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                write(out, summary)
                continue
            report = json.loads(path.read_text())
            summary["runs"].append({"precision": precision, "shape": list(shape), "result": report["results"][0]})
            summary.setdefault("machine", report["machine"])
            summary.setdefault("check", {}).update(report["check"])
            write(out, summary)
    write(out, summary)
    print(f"wrote {out / 'RESULTS-gpu.md'} and {out / 'RESULTS-gpu.json'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
