#!/usr/bin/env python3
"""Peak resident memory of a head-training run against the size of its feature matrix: writes
10,847 x 512 float32 train features (22 MB) and 10,000 x 512 test features as .npy, runs one
`lortflow run` that trains a head on them (`source "features"`), and reports the process's peak
RSS (`/usr/bin/time`) minus the RSS of `lortflow lint` (binary and allocator baseline).

    python3 bench/head_memory.py path/to/lortflow path/to/python-with-numpy
"""
import os
import re
import subprocess
import sys
import tempfile

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


with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([python, "-c", MAKE], cwd=tmp, check=True)
    with open(os.path.join(tmp, "p.kdl"), "w") as f:
        f.write(PIPELINE)
    base = peak_kib([exe, "lint", "p.kdl"], tmp)
    # The dataset stage copies the imported matrix into its artifact first; time the head alone.
    subprocess.run([exe, "run", "-q", "p.kdl", "--only", "feats"], cwd=tmp, check=True, capture_output=True)
    peak = peak_kib([exe, "run", "-q", "p.kdl"], tmp)
    matrix = 10847 * 512 * 4 / 1024
    print(f"feature matrix (train): {matrix / 1024:.1f} MiB")
    print(f"peak RSS of the head run: {peak / 1024:.1f} MiB ({base / 1024:.1f} MiB baseline)")
    print(f"peak RSS above baseline: {(peak - base) / 1024:.1f} MiB = {(peak - base) / matrix:.2f}x the train matrix")
