#!/usr/bin/env bash
# tests/gpu/check.sh - the CUDA backend on a machine with an NVIDIA GPU: agreement with the CPU build, training, speed.
#
#   tests/gpu/check.sh [BUILD_DIR]        (default: build-gpu)
#
# Needs the NVIDIA driver and a GPU, the CUDA toolkit ($CUDA_HOME, else
# /usr/local/cuda), the Debian build packages (installed with
# scripts/install-deps when they are missing and apt is there), and PyTorch
# with CUDA for the speed comparison (without it that part is skipped, said so).
# Data: $FLOWC_DATA, else ../shared/data/mnist-digits-10k, else Debian's
# Fashion-MNIST, else a generated stand-in (then no accuracy floor).
#
# 1. Agreement, for each of the four examples: one forward+backward+update
#    step from the same checkpoint on the same batch (same seed, so the same
#    shuffle and the same dropout masks), on the GPU and on the CPU. The two
#    checkpoints agree when, for every tensor, max|gpu - cpu| <= R * max|cpu|
#    with R = 1e-4 for optimizer slots (Adam's m and v: the gradients and
#    their squares) and R = 1e-3 for variables (Adam's first steps divide a
#    gradient by its own magnitude, so near-zero gradients change a weight's
#    step by up to the learning rate); integers exactly. Deep MNIST also runs
#    3 steps (the CUDA graph is captured at step 2 and replayed at step 3)
#    against the CPU, and with FLOWC_CUDA_GRAPHS=0 against itself.
# 2. Training: Deep MNIST on the GPU reaches the CPU test's floor, test
#    accuracy >= 0.85 after 300 steps on the digits (0.75 on Fashion-MNIST).
# 3. Speed: the Deep MNIST step (batch 50) against PyTorch eager and
#    torch.compile on the same GPU, with the ratios and the goals (flowc <=
#    0.33x eager, <= 1x torch.compile); the full 20000-step run's wall time
#    (goal: under 15 s on an H100).
# Exit status: 0 when 1 and 2 pass, 1 otherwise (3 reports its goals only).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
build=${1:-build-gpu}
cuda=${CUDA_HOME:-/usr/local/cuda}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok:   $*"; }

echo "== prerequisites"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi not found: the programs will say what is missing"; fi
if [ ! -f "$cuda/include/nvrtc.h" ]; then
  echo "the CUDA toolkit was not found in $cuda (no include/nvrtc.h): install it or point CUDA_HOME at it"
  exit 1
fi
missing=0
for tool in meson ninja pkg-config cc; do command -v "$tool" >/dev/null || missing=1; done
pkg-config --exists openblas zlib libcurl 2>/dev/null || missing=1
if [ "$missing" = 1 ]; then
  if command -v apt-get >/dev/null; then
    scripts/install-deps || exit 1
  else
    echo "install meson, ninja, pkg-config, a C compiler and the OpenBLAS, zlib and libcurl development files"
    exit 1
  fi
fi

echo "== building flowc in $build"
[ -f "$build/build.ninja" ] || meson setup "$build" -Dtests=disabled >/dev/null || exit 1
ninja -C "$build" >/dev/null || exit 1
case $build in /*) flowc="$build/compiler/flowc" ;; *) flowc="$root/$build/compiler/flowc" ;; esac
work=$(mktemp -d /tmp/flowc-gpu-check-XXXXXX)
echo "(work files in $work)"
cc -std=c99 -O2 -o "$work/compare" tests/gpu/compare_checkpoints.c -lm || exit 1

data=""
floor=0.85
for candidate in "${FLOWC_DATA:-}" "$root/../shared/data/mnist-digits-10k" /usr/share/datasets/fashion-mnist; do
  if [ -n "$candidate" ] && { [ -e "$candidate/train-images-idx3-ubyte.gz" ] || [ -e "$candidate/train-images-idx3-ubyte" ]; }; then
    data=$candidate
    break
  fi
done
case "$data" in *fashion*) floor=0.75 ;; esac
if [ -z "$data" ]; then
  echo "no MNIST-format data found (set FLOWC_DATA): a generated stand-in serves the agreement checks, no accuracy floor"
  data="$work/data"
  mkdir -p "$data"
  python3 - "$data" <<'EOF'
import os, random, struct, sys
d = sys.argv[1]
random.seed(1)
for prefix, n in (("train", 2000), ("t10k", 500)):
    labels = bytes(random.randrange(10) for _ in range(n))
    pixels = bytes((((p * 7 + i * 31) % 256) if (p // 28) % 10 == labels[i] else random.randrange(64))
                   for i in range(n) for p in range(784))
    open(os.path.join(d, prefix + "-images-idx3-ubyte"), "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + pixels)
    open(os.path.join(d, prefix + "-labels-idx1-ubyte"), "wb").write(struct.pack(">II", 0x801, n) + labels)
EOF
  floor=""
fi
echo "data: $data"

echo "== 0. the GPU"
"$flowc" build examples/basic_usage.flow --device cuda -o "$work/probe" >/dev/null || exit 1
if ! "$work/probe" >"$work/probe.log" 2>&1; then
  cat "$work/probe.log"
  echo "check.sh: no usable GPU here (above: why); nothing else can be checked"
  exit 1
fi
grep '^flowc:' "$work/probe.log"

echo "== 1. one step on the GPU and on the CPU, from the same checkpoint and batch"
for ex in line_fit basic_usage mnist_softmax mnist_deep; do
  "$flowc" build "examples/$ex.flow" -o "$work/$ex.cpu" >/dev/null || { fail "$ex: CPU build"; continue; }
  "$flowc" build "examples/$ex.flow" --device cuda -o "$work/$ex.gpu" >/dev/null || { fail "$ex: CUDA build"; continue; }
  args=()
  case $ex in mnist_*) args=(--data "$data" --validation 0) ;; esac
  "$work/$ex.cpu" "${args[@]}" --steps 0 --save "$work/$ex.init" --quiet >/dev/null || { fail "$ex: initial checkpoint"; continue; }
  "$work/$ex.cpu" "${args[@]}" --steps 1 --resume "$work/$ex.init" --save "$work/$ex.cpu1" --quiet >"$work/$ex.cpu1.log" 2>&1 ||
    { fail "$ex: CPU step"; continue; }
  if ! "$work/$ex.gpu" "${args[@]}" --steps 1 --resume "$work/$ex.init" --save "$work/$ex.gpu1" --quiet >"$work/$ex.gpu1.log" 2>&1; then
    fail "$ex: GPU step:"
    cat "$work/$ex.gpu1.log"
    continue
  fi
  if "$work/compare" "$work/$ex.cpu1" "$work/$ex.gpu1" >"$work/$ex.compare" 2>&1; then
    ok "$ex: $(tail -1 "$work/$ex.compare")"
  else
    fail "$ex: the GPU's step differs from the CPU's:"
    cat "$work/$ex.compare"
  fi
done
if cmp -s <("$work/basic_usage.cpu") <(FLOWC_CUDA_QUIET=1 "$work/basic_usage.gpu" 2>/dev/null); then
  ok "basic_usage prints the same on both"
else
  fail "basic_usage prints differently on the GPU"
fi
deep=(--data "$data" --validation 0 --quiet)
"$work/mnist_deep.cpu" "${deep[@]}" --steps 3 --resume "$work/mnist_deep.init" --save "$work/deep.cpu3" >/dev/null 2>&1
"$work/mnist_deep.gpu" "${deep[@]}" --steps 3 --resume "$work/mnist_deep.init" --save "$work/deep.gpu3" >/dev/null 2>&1
FLOWC_CUDA_GRAPHS=0 "$work/mnist_deep.gpu" "${deep[@]}" --steps 3 --resume "$work/mnist_deep.init" --save "$work/deep.eager3" >/dev/null 2>&1
if "$work/compare" "$work/deep.cpu3" "$work/deep.gpu3" >"$work/deep3.compare" 2>&1; then
  ok "mnist_deep, 3 steps with a captured and replayed CUDA graph: $(tail -1 "$work/deep3.compare")"
else
  fail "mnist_deep, 3 steps: the GPU differs from the CPU:"
  cat "$work/deep3.compare"
fi
if cmp -s "$work/deep.gpu3" "$work/deep.eager3"; then
  ok "mnist_deep: CUDA graphs on and off give identical checkpoints"
elif "$work/compare" --rtol 1e-6 --slot-rtol 1e-6 "$work/deep.eager3" "$work/deep.gpu3" >"$work/graphs.compare" 2>&1; then
  ok "mnist_deep: CUDA graphs on and off agree within 1e-6 (not bit for bit: cuBLAS chose other kernels)"
else
  fail "mnist_deep: replaying the CUDA graph changes the results:"
  cat "$work/graphs.compare"
fi

echo "== 2. Deep MNIST trains on the GPU (300 steps)"
"$work/mnist_deep.gpu" --data "$data" --validation 0 --steps 300 --log-every 100 >"$work/train300.log" 2>&1
cat "$work/train300.log"
accuracy=$(grep -o 'test accuracy [0-9.]*' "$work/train300.log" | tail -1 | awk '{print $3}')
if [ -z "$floor" ]; then
  echo "(generated data: no accuracy floor)"
elif [ -n "$accuracy" ] && awk -v a="$accuracy" -v f="$floor" 'BEGIN { exit !(a >= f) }'; then
  ok "test accuracy $accuracy after 300 steps (floor $floor)"
else
  fail "test accuracy '${accuracy:-none}' after 300 steps is below the floor $floor"
fi

echo "== 3. speed: the Deep MNIST step (batch 50) against PyTorch on the same GPU"
"$flowc" emit examples/mnist_deep.flow --device cuda -o "$work/bench_src" >/dev/null 2>&1
cudalib="$cuda/lib64"
[ -d "$cudalib" ] || cudalib="$cuda/lib"
sources=()
for file in "$work"/bench_src/*.c; do [ "$(basename "$file")" = main.c ] || sources+=("$file"); done
cc -std=c99 -O3 -march=native -DFLRT_NO_BLAS -I"$cuda/include" -I"$work/bench_src" -Ibench -o "$work/bench_cuda" \
  bench/bench_cuda.c "${sources[@]}" -L"$cudalib" -Wl,--enable-new-dtags,-rpath,"$cudalib" -lcublas -lnvrtc -ldl -lz \
  -lcurl -lm || fail "bench_cuda does not build"
value() { awk -v k="$1" '$1 == k { print $2 }' <<<"$2"; }
flowc_out=$(FLOWC_CUDA_QUIET=1 "$work/bench_cuda" 2000 2>&1)
echo "$flowc_out"
torch_out=""
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  torch_out=$(python3 bench/torch_gpu.py 1000)
  echo "$torch_out"
else
  echo "PyTorch with CUDA is not installed here: no comparison (pip install torch)"
fi
fs=$(value train_step_ms "$flowc_out")
te=$(value eager_step_ms "$torch_out")
tc=$(value compile_step_ms "$torch_out")
tg=$(value compile_cudagraphs_step_ms "$torch_out")
[ -n "$fs" ] || echo "(bench_cuda failed: above)"
awk -v fs="$fs" -v te="$te" -v tc="$tc" -v tg="$tg" 'BEGIN {
  if (fs == "") exit
  printf "%-44s %10s\n", "Deep MNIST train step, batch 50", "ms/step"
  printf "%-44s %10.3f\n", "flowc (CUDA graph, batch gathered on the GPU)", fs
  if (te != "") printf "%-44s %10.3f   flowc/eager   = %.2fx (goal <= 0.33x: %s)\n", "PyTorch eager", te, fs / te, fs / te <= 0.33 ? "met" : "MISSED"
  if (tc != "") printf "%-44s %10.3f   flowc/compile = %.2fx (goal <= 1x: %s)\n", "PyTorch torch.compile", tc, fs / tc, fs / tc <= 1 ? "met" : "MISSED"
  if (tg != "") printf "%-44s %10.3f   flowc/that    = %.2fx\n", "PyTorch torch.compile(mode=reduce-overhead)", tg, fs / tg
}'

echo "== 3b. the full Deep MNIST run on the GPU (20000 steps, batch 50)"
start=$(date +%s.%N)
if "$work/mnist_deep.gpu" --data "$data" --validation 0 --quiet >"$work/full.log" 2>&1; then
  end=$(date +%s.%N)
  cat "$work/full.log"
  awk -v s="$start" -v e="$end" -v gpu="$(nvidia-smi -L 2>/dev/null | head -1)" 'BEGIN {
    printf "20000 steps: %.1f s wall, start-up and test included, on %s (goal on an H100: under 15 s: %s)\n",
           e - s, gpu, e - s < 15 ? "met" : "missed, or another GPU" }'
else
  cat "$work/full.log"
  fail "the full Deep MNIST run on the GPU failed"
fi

echo
if [ "$failures" -eq 0 ]; then
  echo "check.sh: the CUDA backend agrees with the CPU build and trains (work files: $work)"
else
  echo "check.sh: $failures check(s) failed (work files: $work)"
fi
[ "$failures" -eq 0 ]
