#!/usr/bin/env python3
"""Writes a pipeline of N stages for orchestration benchmarks: one synthetic feature-vector
dataset, N-2 heads (cycling through the Tab. 1 methods, each with its own learning rate so
every head is a distinct stage) and one evaluation.

    python3 bench/gen_pipeline.py 200 > /tmp/p200.kdl
"""
import sys

METHODS = ["ce", "cosine", "balanced-softmax", "focal", "class-balanced", "tau-norm", "logit-adjust", "resample"]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    out = ["lortflow 1", "", 'dataset "d" {',
           '    source "synthetic" kind="vectors" classes=10 per-class=50 test-per-class=10 dim=16',
           '    long-tail "exp" imbalance-ratio=10', "    groups many=30 few=10", "}"]
    for i in range(n - 2):
        method = METHODS[i % len(METHODS)]
        out.append(f'head "h{i}" {{ features "d"; method "{method}"; train epochs=1 lr={0.01 + i * 1e-4:.4f} }}')
    out.append('evaluate "table" { heads "*"; metrics "top1" }')
    print("\n".join(out))


if __name__ == "__main__":
    main()
