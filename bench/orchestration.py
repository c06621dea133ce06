#!/usr/bin/env python3
"""Orchestration overhead: `lortflow lint` of a 200-stage pipeline, and a fully cached
`lortflow run` and `lortflow status` of a 50-stage pipeline (process start included).
Prints the median and minimum wall time of repeated runs.

    python3 bench/orchestration.py [path/to/lortflow]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(cmd, cwd, repeat=30):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, min(times) * 1000


def main() -> None:
    exe = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target", "release", "lortflow"))
    with tempfile.TemporaryDirectory() as tmp:
        for n in (200, 50):
            with open(os.path.join(tmp, f"p{n}.kdl"), "w") as f:
                subprocess.run([sys.executable, os.path.join(HERE, "gen_pipeline.py"), str(n)], stdout=f, check=True)
        med, best = timed([exe, "lint", "p200.kdl"], tmp)
        print(f"lint, 200 stages:            median {med:6.1f} ms   min {best:6.1f} ms")
        subprocess.run([exe, "run", "-q", "p50.kdl"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        med, best = timed([exe, "run", "-q", "p50.kdl"], tmp)
        print(f"run, 50 stages, all cached:  median {med:6.1f} ms   min {best:6.1f} ms")
        med, best = timed([exe, "status", "p50.kdl"], tmp)
        print(f"status, 50 stages:           median {med:6.1f} ms   min {best:6.1f} ms")
        med, best = timed([exe, "--version"], tmp)
        print(f"process start (--version):   median {med:6.1f} ms   min {best:6.1f} ms")


if __name__ == "__main__":
    main()
