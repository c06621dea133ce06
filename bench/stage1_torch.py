"""PyTorch reference for lortflow's default first stage: stage-1 accuracy on Fashion-MNIST-LT.

Trains the default pipeline's backbone (`pipelines/common/fashion-mnist-features.kdl`) the way
lortflow does, on the vendored real data, and prints the test top-1 of the backbone's own
classifier for each seed, then their mean ± std (population). The protocol is lortflow's:

- long tail `exp`, IR 100, the first `int(6000 · 0.01^(c/9))` training images of class `c` in file
  order (LTWB's selection);
- `normalize "dataset"`: per-channel mean/std of the selected images' pixels in [0, 1];
- augment `random-crop padding=2` (black padding, before normalisation), then `hflip`;
- SGD momentum 0.9 (no dampening), weight decay on every parameter, lr stepped once per epoch
  with cosine annealing to zero (`CosineAnnealingLR(T_max=epochs)`), batch 128, reshuffled every
  epoch, last partial batch kept;
- evaluation on the 10,000 balanced test images, BatchNorm in inference mode, no TTA.

    python bench/stage1_torch.py [--arch conv-fc|small-cnn] [--seeds 0 1 2] [--epochs 20]
                                 [--lr 0.05] [--wd 5e-3] [--data data/fashion-mnist]

Architectures mirror `stdlib/src/backbone/` (same layers, PyTorch's default init except where
lortflow's init is named below); the lortflow side is run with `lortflow run` on the same recipe.
"""
import argparse
import gzip
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from backbone_torch import SmallCnn


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def long_tail_first(labels, num_classes=10, imbalance_ratio=100.0):
    n_max = np.bincount(labels, minlength=num_classes).max()
    ids = []
    for c in range(num_classes):
        n_c = int(n_max * (1.0 / imbalance_ratio) ** (c / (num_classes - 1)))
        ids.extend(np.nonzero(labels == c)[0][:n_c].tolist())
    return np.array(ids)


class ConvFc(nn.Module):
    """`conv-fc`: conv3x3(32)-ReLU-pool, conv3x3(64)-ReLU-pool, flatten 7x7x64, fc(128)-ReLU."""

    def __init__(self, c=1, k=10, bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1, bias=not bn)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(32) if bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(64) if bn else nn.Identity()
        self.embed = nn.Linear(64 * 7 * 7, 128)
        self.fc = nn.Linear(128, k)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return F.relu(self.embed(x.flatten(1)))

    def forward(self, x):
        return self.fc(self.features(x))


ARCHS = {
    "small-cnn": SmallCnn,
    "conv-fc": ConvFc,
    # Not a lortflow architecture: the same with BatchNorm, measured while choosing the default.
    "conv-fc-bn": lambda: ConvFc(bn=True),
}


def augment(batch_u8, gen, padding):
    """Random crop with black padding then horizontal flip, per image (torchvision order)."""
    n, h, w = batch_u8.shape
    padded = F.pad(batch_u8, (padding, padding, padding, padding))
    tops = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    lefts = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(batch_u8)
    for i in range(n):
        crop = padded[i, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def run(args, seed, train_x, train_y, test_x, test_y, mean, std):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ARCHS[args.arch]()
    optim = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=args.epochs)
    norm = lambda u8: ((u8.float() / 255.0 - mean) / std).unsqueeze(1)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(order), args.batch):
            idx = order[start:start + args.batch]
            x = norm(augment(train_x[idx], gen, 2))
            y = train_y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
        sched.step()
        if args.verbose:
            print(f"  epoch {epoch}: loss {loss_sum / total:.4f} train acc {correct / total:.4f}")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_y), 1000):
            x = norm(test_x[start:start + 1000])
            correct += (model(x).argmax(1) == test_y[start:start + 1000]).sum().item()
    return correct / len(test_y), time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="conv-fc", choices=sorted(ARCHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--wd", type=float, default=5e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())

    images = read_idx(os.path.join(args.data, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(args.data, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    ids = long_tail_first(labels)
    train_x = torch.from_numpy(images[ids].copy())
    train_y = torch.from_numpy(labels[ids].copy())
    test_x = torch.from_numpy(read_idx(os.path.join(args.data, "t10k-images-idx3-ubyte.gz")
                                       if os.path.exists(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"))
                                       else os.path.join(args.data, "test-images-idx3-ubyte.gz")).copy())
    test_y = torch.from_numpy(read_idx(os.path.join(args.data, "test-labels-idx1-ubyte.gz")
                                       if os.path.exists(os.path.join(args.data, "test-labels-idx1-ubyte.gz"))
                                       else os.path.join(args.data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64))
    pixels = train_x.double() / 255.0
    mean, std = pixels.mean().float(), pixels.std(unbiased=False).float()
    print(f"{args.arch}: {len(ids)} training images, mean {mean:.4f} std {std:.4f}, "
          f"{args.epochs} epochs lr {args.lr} wd {args.wd} batch {args.batch}")
    accs = []
    for seed in args.seeds:
        acc, secs = run(args, seed, train_x, train_y, test_x, test_y, mean, std)
        accs.append(acc)
        print(f"seed {seed}: stage-1 top-1 {100 * acc:.2f} % ({secs:.0f} s)", flush=True)
    m = float(np.mean(accs))
    s = float(np.std(accs))
    print(f"mean {100 * m:.2f} ± {100 * s:.2f} % over {len(accs)} seeds")


if __name__ == "__main__":
    main()
