#!/usr/bin/env python3
"""Features computed in Python, brought into lortflow: writes train/test feature matrices and
labels as .npy files. Replace the random features by your own model's penultimate layer.

    python3 examples/python-features/make_features.py
    lortflow run examples/python-features/pipeline.kdl
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
K, D = 10, 64
centres = rng.normal(0, 2.0, size=(K, D)).astype(np.float32)


def split(per_class):
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(per_class)]).astype(np.int64)
    features = centres[labels] + rng.normal(0, 1.0, size=(len(labels), D)).astype(np.float32)
    return features, labels


# A long-tailed train split (exp profile, IR 50) and a balanced test split.
train_counts = [int(500 * 50 ** (-k / (K - 1))) for k in range(K)]
train_x, train_y = split(train_counts)
test_x, test_y = split([100] * K)
for name, array in [("train", train_x), ("train-labels", train_y), ("test", test_x), ("test-labels", test_y)]:
    np.save(os.path.join(HERE, f"{name}.npy"), array)
print("wrote", ", ".join(f"{n}.npy" for n in ["train", "train-labels", "test", "test-labels"]), "to", HERE)
