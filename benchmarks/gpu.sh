#!/usr/bin/env bash
# One-shot GPU benchmark: jaxlstm on cuDNN (backend="auto") and on its XLA loop, jaxlstm autodiff,
# flax nn.RNN(OptimizedLSTMCell) and torch.nn.LSTM on CUDA, at (1,256,32,128), (32,128,128,256),
# (128,64,256,512) and (16,1024,768,768); forward and forward+backward; float32 with TF32 off, then TF32 on,
# then bfloat16 (compare.py --dtype bfloat16: jl.LSTM(dtype=bfloat16) beside its float32 twin, Flax, torch).
# Writes benchmarks/RESULTS-gpu.md and benchmarks/RESULTS-gpu.json (benchmarks/gpu.py does the work).
# The bfloat16 pass comes last there and is the first to fall to gpu.py's time budget, so a short bfloat16
# pass runs FIRST, on its own (issue 24's two shapes, 3 reps, at most 150 s), into RESULTS-gpu-bfloat16.md and
# .json beside them; gpu.py then gets what is left of the 420 s budget (its own bfloat16 pass runs if it fits).
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
# Where the results go: gpu.py's --out, else benchmarks/ (a temporary directory on --dry-run).
out=""
dry_run=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --dry-run) dry_run=1 ;;
        --out) out="${args[i + 1]:-}" ;;
        --out=*) out="${args[i]#--out=}" ;;
    esac
done
if [[ -z "$out" ]]; then
    if ((dry_run)); then out=$(mktemp -d -t jaxlstm-gpu-bf16-XXXXXX); else out=benchmarks; fi
fi
mkdir -p "$out"
# The bfloat16 pass first (issue 24): jl.lstm and jl.LSTM(dtype=bfloat16) beside jl.LSTM in float32, Flax in
# bfloat16 and torch.nn.LSTM on CUDA in bfloat16; torch.cuda only where torch sees CUDA. A failure or the 150 s
# cap is reported and does not stop the rest.
if ((dry_run)); then
    bf16=(--shapes 2,8,4,8 --impls jaxlstm.LSTM,jaxlstm.LSTM@float32 --reps 1 --warmup 0 --matmul-size 256)
else
    impls=jaxlstm,jaxlstm.LSTM,jaxlstm.LSTM@float32,flax.OptimizedLSTMCell
    if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        impls+=,torch.cuda
    fi
    bf16=(--shapes "32,128,128,256;128,64,256,512" --impls "$impls" --reps 3 --warmup 2 --matmul-size 4096)
fi
started=$SECONDS
echo "== bfloat16 first: ${bf16[*]}" >&2
if ! timeout --signal=INT 150 "$PYTHON" benchmarks/compare.py --dtype bfloat16 "${bf16[@]}" --markdown \
    --json "$out/RESULTS-gpu-bfloat16.json" >"$out/RESULTS-gpu-bfloat16.md"; then
    echo "gpu.sh: the first bfloat16 pass failed or ran past 150 s; see $out/RESULTS-gpu-bfloat16.md" >&2
fi
used=$((SECONDS - started))
# gpu.py stops starting shapes after --budget seconds (what is left of 420); the timeout is the last resort.
# A --budget given to gpu.sh comes later on gpu.py's command line and wins.
exec timeout --signal=INT $((470 - used)) "$PYTHON" benchmarks/gpu.py --budget $((420 - used)) "$@"
