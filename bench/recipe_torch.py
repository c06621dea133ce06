"""PyTorch cross-check of two head recipes that end below the classifier they start from.

Re-trains, on features exported by `lortflow export PIPELINE FEATURES --to DIR`, the stage-1
classifier with
- LTWB's second stage (`demo2_second-stage-training.py`, the `maxnorm` preset): CB loss
  (`class_balanced_loss.py`, "softmax": BCE on the softmax with per-class weights
  (1-β)/(1-β^n) normalised to sum to K, mean over B×K), SGD lr 0.01 momentum 0.9, weight decay
  `--wd` (LTWB: 0.1) on weight and bias, cosine over 10 epochs, batch 64, MaxNorm by projection
  after every step (radius min‖W‖ + 0.1·(max‖W‖ − min‖W‖) of the stage-1 classifier);
- LORT's `main_stage2.py` (the `lort` preset): CE with `label_smoothing=δ`, SGD lr 5e-4
  momentum 0.9, no weight decay, cosine over 20 epochs, batch 64.

and prints the test top-1 of the stage-1 classifier and of each recipe, for comparison with
lortflow's table on the same features.

    python bench/recipe_torch.py DIR [--wd 0.1] [--delta 0.98] [--lort-lr 5e-4] [--seed 0]
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F


def load(d, name):
    return torch.from_numpy(np.load(os.path.join(d, name)))


def accuracy(w, b, x, y):
    return ((x @ w.T + b).argmax(1) == y).float().mean().item()


def train(w0, b0, x, y, loss_fn, lr, wd, epochs, batch, seed, project=None):
    torch.manual_seed(seed)
    w = w0.clone().requires_grad_()
    b = b0.clone().requires_grad_()
    opt = torch.optim.SGD([w, b], lr=lr, momentum=0.9, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            loss = loss_fn(x[idx] @ w.T + b, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if project is not None:
                with torch.no_grad():
                    project(w)
        sched.step()
    return w.detach(), b.detach()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--delta", type=float, default=0.98)
    p.add_argument("--lort-lr", type=float, default=5e-4)
    p.add_argument(
        "--feature-scale", type=float, default=1.0,
        help="multiply the features by c and the classifier weights by 1/c: the same stage-1 "
             "logits, but weight steps c² times smaller relative to the weights",
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    x, y = load(a.dir, "train_features.npy"), load(a.dir, "train_labels.npy")
    xt, yt = load(a.dir, "test_features.npy"), load(a.dir, "test_labels.npy")
    w0, b0 = load(a.dir, "classifier_weight.npy"), load(a.dir, "classifier_bias.npy")
    x, xt, w0 = x * a.feature_scale, xt * a.feature_scale, w0 / a.feature_scale
    k = w0.shape[0]
    print(f"stage-1 {100 * accuracy(w0, b0, xt, yt):.2f}")

    counts = torch.bincount(y, minlength=k).double()
    beta = 0.9999
    weights = (1 - beta) / (1 - beta ** counts)
    weights = (weights / weights.sum() * k).float()

    def cb_bce(logits, labels):
        onehot = F.one_hot(labels, k).float()
        w = weights[labels].unsqueeze(1).expand(-1, k)
        return F.binary_cross_entropy(logits.softmax(1), onehot, weight=w)

    norms = w0.norm(dim=1)
    radius = norms.min() + 0.1 * (norms.max() - norms.min())

    def maxnorm(w):
        n = w.norm(dim=1, keepdim=True)
        w.mul_(torch.where(n > radius, radius / n, torch.ones_like(n)))

    w, b = train(w0, b0, x, y, cb_bce, 0.01, a.wd, 10, 64, a.seed, maxnorm)
    print(f"maxnorm (LTWB, wd {a.wd}) {100 * accuracy(w, b, xt, yt):.2f}")
    smoothed = lambda z, t: F.cross_entropy(z, t, label_smoothing=a.delta)
    w, b = train(w0, b0, x, y, smoothed, a.lort_lr, 0.0, 20, 64, a.seed)
    print(f"lort (δ {a.delta}, lr {a.lort_lr}) {100 * accuracy(w, b, xt, yt):.2f}")


if __name__ == "__main__":
    main()
