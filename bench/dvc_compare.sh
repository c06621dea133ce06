#!/usr/bin/env bash
# Orchestration overhead of lortflow against DVC on equivalent 50-stage pipelines: a no-op
# `dvc repro` / `dvc status` against a fully cached `lortflow run` / `lortflow status`.
# DVC is installed into a throwaway venv. Usage: bench/dvc_compare.sh [path/to/lortflow]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exe="$(realpath "${1:-$here/../target/release/lortflow}")"
venv="${DVC_VENV:-/tmp/lortflow-dvc-venv}"
[ -x "$venv/bin/dvc" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q dvc; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# lortflow: a synthetic dataset, 48 heads and an evaluation.
python3 "$here/gen_pipeline.py" 50 > p50.kdl
"$exe" run -q p50.kdl > /dev/null

# DVC: 50 stages with the same shape (one producer, 48 consumers, one aggregator), each a
# trivial command, so the timing is DVC's own overhead.
git init -q . && "$venv/bin/dvc" init -q
{
  echo "stages:"
  echo "  data:"; echo "    cmd: echo data > data.txt"; echo "    outs: [data.txt]"
  for i in $(seq 0 47); do
    echo "  h$i:"; echo "    cmd: cat data.txt > h$i.txt"; echo "    deps: [data.txt]"; echo "    outs: [h$i.txt]"
  done
  echo "  table:"; echo "    cmd: cat h*.txt > table.txt"
  echo "    deps: [$(seq -s, -f 'h%g.txt' 0 47 | sed 's/,/, /g')]"; echo "    outs: [table.txt]"
} > dvc.yaml
"$venv/bin/dvc" repro -q > /dev/null

time_it() { # median of 10 runs, in ms
  python3 - "$@" <<'PY'
import statistics, subprocess, sys, time
t = []
for _ in range(10):
    s = time.perf_counter(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.append((time.perf_counter() - s) * 1000)
print(f"{statistics.median(t):8.1f}")
PY
}
lr=$(time_it "$exe" run -q p50.kdl); ls=$(time_it "$exe" status p50.kdl)
dr=$(time_it "$venv/bin/dvc" repro -q); ds=$(time_it "$venv/bin/dvc" status -q)
echo "no-op run, 50 stages:   lortflow ${lr} ms   dvc repro  ${dr} ms   ratio $(python3 -c "print(f'{$dr/$lr:.0f}x')")"
echo "status, 50 stages:      lortflow ${ls} ms   dvc status ${ds} ms   ratio $(python3 -c "print(f'{$ds/$ls:.0f}x')")"
