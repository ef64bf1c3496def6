"""Checks that examples/adding.py reaches its stated target, test MSE < 0.01, at every seed.

Each seed is a fresh run of the example with its defaults, ``python examples/adding.py --seed S``, in
its own process, writing to ``OUT/seedS``. The script prints one markdown row per seed (the per-seed
table of docs/examples.md): the test MSE, the wall time with the load average when the run started
(on a shared machine the wall time grows with the load), and the CPU time the process used. It exits
with status 1 if any seed misses the target.

Run:  python benchmarks/adding_seeds.py                    (seeds 0-4: about 5 minutes on 2 idle cores)
      python benchmarks/adding_seeds.py --seeds 5 6 7      (other seeds)
      python benchmarks/adding_seeds.py -- --smoke         (anything after -- goes to adding.py)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "adding.py"


def run_seed(seed: int, out: pathlib.Path, extra: list[str]) -> dict:
    """One fresh run at ``seed``: its metrics.json, with the wall time measured around the process."""
    folder = out / f"seed{seed}"
    command = [sys.executable, str(EXAMPLE), "--seed", str(seed), "--out", str(folder), "--overwrite", *extra]
    load = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"error: seed {seed}: {' '.join(command)} exited with {result.returncode}:\n{result.stderr}")
    metrics = json.loads((folder / "metrics.json").read_text())
    return {**metrics, "process_wall_s": wall, "process_cpu_s": cpu, "load_before": load}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="the seeds to run")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "adding-seeds", help="runs go here")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    print(f"{os.cpu_count()} CPUs; 1-minute load average {os.getloadavg()[0]:.1f} at the start")
    print("| seed | test MSE | target < 0.01 | steps | wall time (s) | CPU time (s) |")
    print("|---|---|---|---|---|---|")
    missed = []
    for seed in args.seeds:
        m = run_seed(seed, args.out, extra)
        print(
            f"| {seed} | {m['test_mse']:.5f} | {'reached' if m['reached_target'] else 'MISSED'} | {m['steps']} "
            f"| {m['process_wall_s']:.0f} (load {m['load_before']:.1f}) | {m['process_cpu_s']:.0f} |",
            flush=True,
        )
        if not m["reached_target"]:
            missed.append(seed)
    if missed:
        print(f"missed the target at seeds {missed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
