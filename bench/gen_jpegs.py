#!/usr/bin/env python3
"""Writes an ImageNet-LT-like image set for the input benchmarks: JPEGs of about 500x375 (sizes
vary from 400 to 500 by 300 to 400, portrait and landscape), quality 90, with smooth shapes,
edges and texture so that they compress like photographs (40-65 KB each), plus list files in the
image-list format (`relative/path label`).

    python3 bench/gen_jpegs.py OUT_DIR [TRAIN=13026] [TEST=2000] [CLASSES=100]

Needs Pillow and numpy (the torch venv of bench/input_torch.py has both).
"""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make(rng, w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(x / rng.uniform(20, 90) + rng.uniform(0, 6)),
        128 + 100 * np.cos(y / rng.uniform(20, 90) + rng.uniform(0, 6)),
        128 + 100 * np.sin((x + y) / rng.uniform(30, 120)),
    ], axis=-1)
    base += rng.normal(0, 30, size=(h, w, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def main():
    out = sys.argv[1]
    n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 13026
    n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    classes = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    rng = np.random.default_rng(0)
    for split, n in [("train", n_train), ("test", n_test)]:
        lines = []
        for i in range(n):
            label = i % classes
            w, h = int(rng.integers(400, 501)), int(rng.integers(300, 401))
            if rng.random() < 0.25:
                w, h = h, w
            rel = f"{split}/{label:04d}/{i:06d}.jpg"
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            make(rng, w, h).save(path, quality=90)
            lines.append(f"{rel} {label}")
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
