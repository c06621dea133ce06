#!/usr/bin/env python3
"""Peak resident memory of a head-training run against the size of its feature matrix: writes
10,847 x 512 float32 train features (22 MB) and 10,000 x 512 test features as .npy, runs one
`lortflow run` that trains a head on them (`source "features"`), and reports the process's peak
RSS (`/usr/bin/time`) minus the RSS of `lortflow lint` (binary and allocator baseline).

It also samples /proc/PID/status every 2 ms for the two parts of RSS: anonymous memory (heap,
stacks: what the process allocated) and file-backed pages (the memory-mapped feature files,
which the kernel can drop and re-read at any time, and the binary).

    python3 bench/head_memory.py path/to/lortflow path/to/python-with-numpy
"""
import os
import re
import subprocess
import sys
import tempfile
import time

exe = os.path.abspath(sys.argv[1])
python = sys.argv[2] if len(sys.argv) > 2 else sys.executable

PIPELINE = """lortflow 1
dataset "feats" {
    source "features" train="train.npy" test="test.npy" train-labels="train-labels.npy" test-labels="test-labels.npy"
    long-tail "none"
}
head "ce" { features "feats"; method "ce"; train epochs=5 }
evaluate "t" { heads "*"; metrics "top1"; plots #false }
"""

MAKE = """
import numpy as np
rng = np.random.default_rng(0)
for split, n in [("train", 10847), ("test", 10000)]:
    np.save(f"{split}.npy", rng.normal(size=(n, 512)).astype(np.float32))
    np.save(f"{split}-labels.npy", rng.integers(0, 100, size=n).astype(np.int64))
"""


def peak_kib(cmd, cwd):
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, cwd=cwd, capture_output=True, text=True, check=True)
    return int(re.findall(r"^(\d+)$", out.stderr, re.M)[-1])


def sampled_peaks(cmd, cwd):
    """Peak RssAnon and RssFile (KiB) of a process, sampled from /proc while it runs."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = {"RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.002)
    if proc.wait() != 0:
        sys.exit(f"{cmd} failed")
    return peaks


with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([python, "-c", MAKE], cwd=tmp, check=True)
    with open(os.path.join(tmp, "p.kdl"), "w") as f:
        f.write(PIPELINE)
    base = peak_kib([exe, "lint", "p.kdl"], tmp)
    # The dataset stage copies the imported matrix into its artifact first; time the head alone.
    subprocess.run([exe, "run", "-q", "p.kdl", "--only", "feats"], cwd=tmp, check=True, capture_output=True)
    peak = peak_kib([exe, "run", "-q", "p.kdl"], tmp)
    matrix = 10847 * 512 * 4 / 1024
    both = matrix + 10000 * 512 * 4 / 1024
    above = peak - base
    print(f"feature matrix: train {matrix / 1024:.1f} MiB, train + test {both / 1024:.1f} MiB")
    print(f"peak RSS of the head run: {peak / 1024:.1f} MiB ({base / 1024:.1f} MiB baseline)")
    print(f"peak RSS above baseline: {above / 1024:.1f} MiB = {above / matrix:.2f}x the train matrix, "
          f"{above / both:.2f}x train + test")
    # The same run again (a changed learning rate re-runs the head and the evaluation only).
    parts = sampled_peaks([exe, "run", "-q", "p.kdl", "--set", "ce.lr=0.02"], tmp)
    base_parts = sampled_peaks([exe, "lint", "p.kdl"], tmp)
    print(f"of which anonymous (allocated): peak {parts['RssAnon'] / 1024:.1f} MiB "
          f"({(parts['RssAnon'] - base_parts['RssAnon']) / matrix:.2f}x the train matrix above baseline); "
          f"file-backed (mapped features, binary): peak {parts['RssFile'] / 1024:.1f} MiB")
