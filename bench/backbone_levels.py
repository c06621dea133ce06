"""Backbone img/s of lortflow and PyTorch side by side at each SIMD level this CPU runs (avx2,
avx512; `--levels` names others, `scalar` included): for each level, `backbone_bench` and `backbone_torch.py` run with
LORTFLOW_CPU_LEVEL set (which caps lortflow's kernels, and PyTorch's through ATEN_CPU_CAPABILITY
and ONEDNN_MAX_CPU_ISA), one after the other on the same machine, and the table gives both and
their ratio. Also the machine: CPU model, flags, cores.

    python bench/backbone_levels.py BACKBONE_BENCH TORCH_PYTHON [--levels avx2,avx512] [--rounds N] [steps...]

BACKBONE_BENCH is target/release/examples/backbone_bench; TORCH_PYTHON a python with torch.
Extra arguments (train and inference steps, --only NAME) go to both programs. The two programs
alternate `--rounds` times (3 unless given) at each level and the table gives the medians: on a
shared virtual machine one run can be 20% off the next.
"""
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

LINE = re.compile(r"^(\S+)\s+train\s+([\d.]+) img/s\s+features\s+([\d.]+) img/s")


def cpu_flags():
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            if key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def levels_of(flags):
    levels = ["scalar"]
    # pulp's x86-64-v3 and -v4, which lortflow's levels are (lzcnt shows as `abm`).
    if {"avx2", "fma", "bmi1", "bmi2", "abm"} <= flags:
        levels.append("avx2")
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        levels.append("avx512")
    return levels


def run(command, level):
    env = dict(os.environ, LORTFLOW_CPU_LEVEL=level)
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(command)} at {level} failed:\n{out.stdout}\n{out.stderr}")
    header = out.stdout.splitlines()[0] if out.stdout else ""
    rows = {m[1]: (float(m[2]), float(m[3])) for m in map(LINE.match, out.stdout.splitlines()) if m}
    return header, rows


def main():
    argv = sys.argv[1:]
    if len(argv) < 2:
        sys.exit(__doc__)
    ours, python = argv[0], argv[1]
    rest = argv[2:]
    model, flags = cpu_flags()
    levels = levels_of(flags)[1:] or ["scalar"]
    rounds = 3
    for flag in ("--levels", "--rounds"):
        if flag in rest:
            i = rest.index(flag)
            if flag == "--levels":
                levels = rest[i + 1].split(",")
            else:
                rounds = int(rest[i + 1])
            rest = rest[:i] + rest[i + 2:]
    simd = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    print(f"CPU: {model}, {os.cpu_count()} logical cores, flags: {' '.join(simd)}")
    torch_script = str(Path(__file__).with_name("backbone_torch.py"))
    table = []
    for level in levels:
        ours_runs, torch_runs = [], []
        for _ in range(rounds):
            ours_header, rows = run([ours, *rest], level)
            ours_runs.append(rows)
            torch_header, rows = run([python, torch_script, *rest], level)
            torch_runs.append(rows)
        print(f"[{level}] lortflow: {ours_header}")
        print(f"[{level}] PyTorch:  {torch_header}")
        for name in ours_runs[0]:
            if name not in torch_runs[0]:
                continue

            def median(runs, i):
                return statistics.median(r[name][i] for r in runs)

            table.append(
                (level, name, median(ours_runs, 0), median(torch_runs, 0), median(ours_runs, 1), median(torch_runs, 1))
            )
    print(f"\nmedians of {rounds} alternating runs")
    print(f"{'level':<7} {'model':<10} {'train':>9} {'torch':>9} {'ratio':>6}   {'features':>9} {'torch':>9} {'ratio':>6}")
    for level, name, train, t_train, feats, t_feats in table:
        print(
            f"{level:<7} {name:<10} {train:9.1f} {t_train:9.1f} {train / t_train:5.2f}x"
            f"   {feats:9.1f} {t_feats:9.1f} {feats / t_feats:5.2f}x"
        )


if __name__ == "__main__":
    main()
