#!/usr/bin/env bash
# The one prepared GPU check (issue #16): at most 6 minutes on an H100/H200 with JAX 0.11, flax,
# optax, orbax, chex, pytest, torch and triton installed, and seqjax NOT installed: it runs from
# a plain copy of the source tree (PYTHONPATH, with seqjax.kernels mapped to kernels/ by a
# symlink that it removes again).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # default docs/results/gpu/<UTC timestamp>
#
# Writes into OUT_DIR: env.txt (device, versions), tests.log (tests/gpu: kernels vs scan on the
# device), bench_*.{json,md} (benchmarks/rnn_gpu.py: pallas vs scan vs cuDNN, ratios and errors
# measured side by side), main_{auto,scan}.log and main_{auto,scan}/ (the main job, 400 steps).
# Each stage has its own time limit, so one that hangs cannot take the others with it; a stage
# that fails is reported and the script goes on. Exit status: the number of failed stages.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-docs/results/gpu/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
py="${PYTHON:-python3}"

made_link=0
if [ ! -e seqjax/kernels ]; then ln -s ../kernels seqjax/kernels && made_link=1; fi
trap '[ "$made_link" = 1 ] && rm -f seqjax/kernels' EXIT
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch shares the GPU in the benchmark
export JAX_PLATFORMS=cuda

failed=0
stage() {  # stage NAME SECONDS CMD...: run CMD under a time limit, log to OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  if timeout --signal=INT --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - t0)) s"
  else
    echo "   FAILED (status $?) after $((SECONDS - t0)) s; tail of $out/$name.log:"
    tail -n 15 "$out/$name.log" | sed 's/^/   | /'
    failed=$((failed + 1))
  fi
}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$py" -c 'import jax, sys; print("python", sys.version.split()[0]); print("jax", jax.__version__, jax.devices())'
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1
  "$py" -c 'import triton; print("triton", triton.__version__)' 2>&1
  git rev-parse HEAD 2>/dev/null && git status --porcelain --untracked-files=no 2>/dev/null | head -5
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

stage tests 170 "$py" -m pytest -q -x -p no:cacheprovider tests/gpu
stage bench_bf16 100 "$py" benchmarks/rnn_gpu.py --cells lstm,gru --dtypes bfloat16 \
  --batch 16 --steps 1024 --hidden 768 --reps 10 --warmup 2 \
  --json "$out/bench_bf16_B16_T1024_H768.json" --markdown "$out/bench_bf16_B16_T1024_H768.md"
stage bench_f32 70 "$py" benchmarks/rnn_gpu.py --cells lstm,gru --dtypes float32 \
  --batch 64 --steps 256 --hidden 256,512 --reps 10 --warmup 2 \
  --json "$out/bench_f32_B64_T256.json" --markdown "$out/bench_f32_B64_T256.md"
for backend in auto scan; do
  stage "main_$backend" 45 "$py" experiments/tcn_vs_rnn.py --steps 400 --models lstm,gru \
    --backend "$backend" --no-progress --out "$out/main_$backend"
done

find "$out" -type d -name checkpoints -prune -exec rm -rf {} +  # figures only, no weights
echo "wrote $out (failed stages: $failed)"
exit "$failed"
