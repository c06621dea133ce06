#!/usr/bin/env bash
# The CUDA path end to end on a machine with an NVIDIA GPU, PyTorch and no Rust toolchain, with
# lortflow's binaries built elsewhere and carried in the working tree.
#
# Build (on the development machine; no GPU or CUDA toolkit needed):
#
#     scripts/gpu-check.sh --build          # -> target-gpu.tar.gz: the stripped binaries
#                                           #    (target-gpu/) and the CPU table
#                                           #    (pipelines/expected/), ~40 MB; git-ignored:
#                                           #    carry it to the GPU machine
#
# Run (on the GPU machine, from the repository root; writes $OUT or ./gpu-results). Each part
# fits one 10-minute device command (every step has a time limit):
#
#     scripts/gpu-check.sh pipelines        # steps 1-2, at most 7.5 min
#     scripts/gpu-check.sh bench            # steps 3-4, at most 8 min
#     scripts/gpu-check.sh                  # both
#
# Steps, each timed and logged; a failing step is recorded and the next one still runs:
#  1. `smoke.kdl` on `--backend cuda`;
#  2. the Fashion-MNIST-LT default pipeline on cuda, and its table against the CPU table
#     (`pipelines/expected/fashion-mnist-lt.cpu.json`, written by `--build`) head by head;
#  3. ResNet-32 training on 32x32 inputs, batch 128: lortflow vs PyTorch, images/s;
#  4. one head 2048 -> 1000 on 100,000 synthetic features (batch 512, 10 epochs): lortflow vs
#     PyTorch, seconds.
# The summary is `results.md` in the output directory.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=target-gpu

if [[ "${1:-}" == "--build" ]]; then
    set -e
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
    cargo build --release --locked --features cuda --bin lortflow
    cargo build --release --locked -p lortflow-stdlib --features cuda,benchmarks \
        --example head_bench --example backbone_bench
    mkdir -p "$BIN" pipelines/expected
    cp "$CARGO_TARGET_DIR/release/lortflow" "$CARGO_TARGET_DIR/release/examples/head_bench" \
        "$CARGO_TARGET_DIR/release/examples/backbone_bench" "$BIN/"
    # The device tool carries at most 64 MiB of ignored paths: symbols are not needed there.
    strip "$BIN"/*
    # The CPU table to compare with (cached after the first run of the default pipeline).
    "$CARGO_TARGET_DIR/release/lortflow" run -q pipelines/fashion-mnist-lt.kdl
    "$CARGO_TARGET_DIR/release/lortflow" report pipelines/fashion-mnist-lt.kdl --format json \
        > pipelines/expected/fashion-mnist-lt.cpu.json
    # One compressed file to carry (the device tool carries at most 64 MiB).
    tar -czf target-gpu.tar.gz "$BIN" pipelines/expected
    ls -l "$BIN" pipelines/expected target-gpu.tar.gz
    exit 0
fi

if [[ ! -d "$BIN" && -f target-gpu.tar.gz ]]; then
    tar -xzf target-gpu.tar.gz
fi
if [[ ! -x "$BIN/lortflow" ]]; then
    echo "error: no $BIN/lortflow: run \`scripts/gpu-check.sh --build\` on a machine with Rust and carry target-gpu.tar.gz" >&2
    exit 2
fi

OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
RESULTS="$OUT/results.md"
PYTHON="${PYTHON:-python3}"
STORE="$OUT/store"
export NO_COLOR=1
chmod +x "$BIN"/* 2>/dev/null

{
    echo "# lortflow on CUDA: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
    "$BIN/lortflow" --version 2>&1
    echo '```'
} >> "$RESULTS"

# step NAME SECONDS COMMAND...: runs it with a timer and a time limit (the device session's
# budget is short: one stuck step must not take the rest), logs to $OUT/NAME.log, records the
# outcome (exit 124: timed out).
step() {
    local name="$1" limit="$2"
    shift 2
    local start ms rc
    start=$(date +%s%N)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '\n## %s\n\n`%s` exit %d, %d.%03d s\n\n```\n' "$name" "$*" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$RESULTS"
    tail -n 40 "$OUT/$name.log" >> "$RESULTS"
    printf '```\n' >> "$RESULTS"
    echo "$name: exit $rc"
    return 0
}

PART="${1:-all}"
case "$PART" in
    pipelines | bench | all) ;;
    *) echo "error: unknown part \`$PART\` (pipelines, bench or all)" >&2; exit 2 ;;
esac
if [[ "$PART" == pipelines || "$PART" == all ]]; then
step smoke 120 "$BIN/lortflow" run pipelines/smoke.kdl --backend cuda --store "$STORE"
step default-pipeline 300 "$BIN/lortflow" run pipelines/fashion-mnist-lt.kdl --backend cuda --store "$STORE"
"$BIN/lortflow" report pipelines/fashion-mnist-lt.kdl --format json --store "$STORE" \
    > "$OUT/fashion-mnist-lt.cuda.json" 2> "$OUT/report.log"
step cpu-vs-cuda 30 "$PYTHON" - "pipelines/expected/fashion-mnist-lt.cpu.json" "$OUT/fashion-mnist-lt.cuda.json" <<'EOF'
# Head-by-head top-1 of the CPU and CUDA runs. Backbone training is not bit-reproducible across
# devices (different kernels and reduction orders), so "within noise" means: the mean absolute
# difference over heads is small and no head moves by more than a few points.
import json, sys

def table(path):
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as err:
        sys.exit(f"{path}: no report to compare ({err}); see the pipeline step's log")
    return {
        head["name"]: head["top1"]["mean"]
        for evaluation in data["evaluations"]
        for head in evaluation["metrics"]["heads"]
    }

cpu, cuda = table(sys.argv[1]), table(sys.argv[2])
if not cpu or not cuda:
    sys.exit(f"no per-head top-1 found (cpu {len(cpu)} heads, cuda {len(cuda)} heads)")
diffs = []
print(f"{'head':<24} {'cpu':>7} {'cuda':>7} {'diff':>6}")
for head in sorted(cpu):
    if head in cuda:
        d = 100 * (cuda[head] - cpu[head])
        diffs.append(abs(d))
        print(f"{head:<24} {100 * cpu[head]:7.2f} {100 * cuda[head]:7.2f} {d:+6.2f}")
if not diffs:
    sys.exit("the two tables have no head in common")
print(f"mean |diff| {sum(diffs) / len(diffs):.2f} points, max {max(diffs):.2f} over {len(diffs)} heads")
EOF
fi
if [[ "$PART" == bench || "$PART" == all ]]; then
step resnet32-lortflow 120 "$BIN/backbone_bench" 50 50 --backend cuda --only resnet32
step resnet32-torch 120 "$PYTHON" bench/backbone_torch.py 50 50 --device cuda --only resnet32
HEAD_ARGS=(--samples 100000 --test-samples 10000 --dim 2048 --classes 1000 --epochs 10 --batch 512)
step head-lortflow 120 "$BIN/head_bench" --backend cuda --skip-sweep "${HEAD_ARGS[@]}"
step head-torch 120 "$PYTHON" bench/head_torch.py --device cuda "${HEAD_ARGS[@]}"
fi
echo "results: $RESULTS"
