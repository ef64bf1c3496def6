#!/usr/bin/env bash
# One-shot GPU benchmark: jaxlstm on cuDNN (backend="auto") and on its XLA loop, jaxlstm autodiff,
# flax nn.RNN(OptimizedLSTMCell) and torch.nn.LSTM on CUDA, at (1,256,32,128), (32,128,128,256),
# (128,64,256,512) and (16,1024,768,768); forward and forward+backward; float32 with TF32 off, then TF32 on,
# then bfloat16 (compare.py --dtype bfloat16: jl.LSTM(dtype=bfloat16) beside its float32 twin, Flax, torch).
# Writes benchmarks/RESULTS-gpu.md and benchmarks/RESULTS-gpu.json (benchmarks/gpu.py does the work).
#
#   benchmarks/gpu.sh              # on a GPU machine, inside 8 minutes
#   benchmarks/gpu.sh --dry-run    # anywhere (CPU): tiny shape, 1 rep, results in a temporary directory
#
# Needs jax with CUDA (pip install "jax[cuda12]"), flax, and for the torch row torch with CUDA.
# PYTHON picks the interpreter (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# JAX preallocates 75% of GPU memory by default; leave torch room in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
"$PYTHON" -c 'import jax; print("jax", jax.__version__, "devices:", jax.devices())' >&2
if [[ " $* " != *" --dry-run "* ]] && [[ "$("$PYTHON" -c 'import jax; print(jax.default_backend())')" != gpu ]]; then
    echo "gpu.sh: JAX sees no GPU here (jax.default_backend() != 'gpu'); use --dry-run off a GPU machine" >&2
    exit 2
fi
# gpu.py stops starting shapes after --budget seconds (420 by default); the timeout is the last resort.
exec timeout --signal=INT 470 "$PYTHON" benchmarks/gpu.py "$@"
