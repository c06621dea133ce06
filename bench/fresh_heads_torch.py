"""PyTorch cross-check of the fresh-head presets: `ce`, `cosine` and `ldam-drw` as lortflow runs them.

Re-trains, on features exported by `lortflow export PIPELINE FEATURES --to DIR`, a re-initialised
classifier with the optimiser of Kang et al.'s cRT (`cls_crt.yaml`, lortflow's `DECOUPLED`
defaults): SGD lr 0.2, momentum 0.9, weight decay 5e-4 on every trained tensor, CosineAnnealingLR
over 10 epochs stepped per epoch, batch 512 (the last, smaller batch kept), instance sampling, and

- `ce`: `nn.Linear` logits, cross-entropy;
- `cosine`: s·cos(W_i, f) (no bias; OLTR's s = 16), cross-entropy;
- `ldam-drw`: LDAM-DRW's `LDAMLoss` on `NormedLinear` logits (initial class vectors of unit
  norm, `init-norm=1`), CE(s·(cos − m_y·e_y)) with
  m_j = max_m·(n_min/n_j)^¼, max_m 0.5, s 30; from 0-based epoch 8 (4/5 of 10) the class weights
  (1−β)/(1−β^n_j) normalised to sum to K, β 0.9999, as `weight` of the cross-entropy (so the
  batch loss is Σ w_y ℓ / Σ w_y). Inference: plain cosine logits.

Each trial starts from **lortflow's own initial weights and draws lortflow's own batch order**:
the xoshiro256** generator of `lortflow-data` (seeded through SplitMix64), `Rng::stream(seed,
0x1417)` for the uniform ±1/√D initialisation and `Rng::stream(seed, 0x5A3F)` for the epoch
shuffles (Fisher–Yates from the back, Lemire's bounded draw), seed = the head's seed + trial. So
trial t here and trial t of lortflow differ only by floating-point rounding, and the `ce` rows
check the port.

    python bench/fresh_heads_torch.py DIR [--methods ce,cosine,ldam-drw] [--trials 3] [--seed 0]
        [--lr 0.2] [--epochs 10] [--cosine-scale 16] [--ldam-scale 30]
        [--cosine-init-norm N] [--ldam-init-norm N] [--learnable-scale] [--curves]

`--curves` prints each epoch's loss, ‖W_i‖ and test accuracy; `--learnable-scale` trains s with
the weights (initialised at the given scale), as the cosine classifiers of Gidaris & Komodakis do.
"""
import argparse
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

MASK = (1 << 64) - 1
INIT_STREAM = 0x1417
SAMPLER_STREAM = 0x5A3F


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK


class Rng:
    """`lortflow_data::dataset::Rng`: xoshiro256** seeded by four SplitMix64 outputs."""

    def __init__(self, seed):
        self.s = []
        sm = seed & MASK
        for _ in range(4):
            sm, out = splitmix64(sm)
            self.s.append(out)

    @classmethod
    def stream(cls, seed, stream):
        _, mixed = splitmix64((stream ^ 0x6A09E667F3BCC909) & MASK)
        return cls(seed ^ mixed)

    def next_u64(self):
        s = self.s
        result = (rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n):
        threshold = ((1 << 64) - n) % n
        while True:
            product = self.next_u64() * n
            if (product & MASK) >= threshold:
                return product >> 64

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def random_linear(k, d, rng):
    """`head::components::random_linear`: weight then bias, uniform on ±1/√D, as f32."""
    bound = 1.0 / math.sqrt(d)
    draws = np.array([(2.0 * rng.next_f64() - 1.0) * bound for _ in range(k * d + k)])
    draws = draws.astype(np.float32)
    return torch.from_numpy(draws[: k * d].reshape(k, d)), torch.from_numpy(draws[k * d:])


def lr_at(lr, epoch, epochs):
    """CosineAnnealingLR to 0, stepped per epoch (`head::plan::lr_at`)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def load(d, name):
    return torch.from_numpy(np.load(os.path.join(d, name)))


def groups(counts):
    """Many / medium / few: more than 1200, 240-1200, fewer than 240 training images (README)."""
    many = counts > 1200
    few = counts < 240
    return {"many": many, "medium": ~many & ~few, "few": few}


def accuracies(pred, yt, class_groups):
    hits = (pred == yt).float()
    out = {"all": hits.mean().item()}
    for name, members in class_groups.items():
        mask = members[yt]
        out[name] = hits[mask].mean().item() if mask.any() else float("nan")
    return out


def train(method, a, x, y, xt, yt, counts, seed, class_groups):
    n, d = x.shape
    k = counts.numel()
    w0, b0 = random_linear(k, d, Rng.stream(seed, INIT_STREAM))
    init_norm = {"cosine": a.cosine_init_norm, "ldam-drw": a.ldam_init_norm}.get(method, 0.0)
    if init_norm > 0:
        # `init-norm`: the same directions, every class vector scaled to that norm (LDAM-DRW's
        # `NormedLinear`: uniform(-1, 1), then each class vector renormalised to 1).
        w0 = F.normalize(w0, dim=1) * init_norm
    sampler = Rng.stream(seed, SAMPLER_STREAM)
    cosine = method in ("cosine", "ldam-drw")
    w = w0.clone().requires_grad_()
    w_start = w0.clone()
    params = [w]
    b = torch.zeros(k) if cosine else b0.clone().requires_grad_()
    if not cosine:
        params.append(b)
    scale0 = a.cosine_scale if method == "cosine" else a.ldam_scale
    s = torch.tensor(float(scale0), requires_grad=a.learnable_scale)
    if cosine and a.learnable_scale:
        params.append(s)
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=a.wd)
    if cosine:
        # Features are normalised once, as lortflow uploads them (F.normalize's eps 1e-12).
        x, xt = F.normalize(x, dim=1), F.normalize(xt, dim=1)
    margins = None
    drw_weights = None
    if method == "ldam-drw":
        m = counts.double().pow(-0.25)
        margins = (m * (a.max_m / m.max())).float()
        raw = (1 - a.beta) / (1 - torch.pow(torch.tensor(a.beta, dtype=torch.float64), counts.double()))
        drw_weights = (raw / raw.sum() * k).float()
    drw_from = a.epochs * 4 // 5

    def logits(inputs):
        if cosine:
            return inputs @ F.normalize(w, dim=1).T
        return inputs @ w.T + b

    curve = []
    for epoch in range(a.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(a.lr, epoch, a.epochs)
        order = list(range(n))
        sampler.shuffle(order)
        order = torch.tensor(order)
        total, steps = 0.0, 0
        for start in range(0, n, a.batch):
            idx = order[start:start + a.batch]
            z, t = logits(x[idx]), y[idx]
            if method == "ce":
                loss = F.cross_entropy(z, t)
            elif method == "cosine":
                loss = F.cross_entropy(s * z, t)
            else:
                z = s * (z - margins[t].unsqueeze(1) * F.one_hot(t, k))
                weight = drw_weights if epoch >= drw_from else None
                loss = F.cross_entropy(z, t, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        if a.curves:
            with torch.no_grad():
                acc = accuracies(logits(xt).argmax(1), yt, class_groups)
                norms = w.norm(dim=1)
                # How far each class vector has turned from where it started, in degrees.
                turned = torch.rad2deg(torch.acos(
                    F.cosine_similarity(w, w_start, dim=1).clamp(-1, 1)))
            curve.append(
                f"    epoch {epoch}: lr {lr_at(a.lr, epoch, a.epochs):.4f} loss {total / steps:.4f} "
                f"|W_i| {norms.min():.2f}-{norms.max():.2f} turned {turned.min():.0f}-"
                f"{turned.max():.0f} deg s {s.item():.2f} "
                f"test {100 * acc['all']:.2f} (few {100 * acc['few']:.2f})"
            )
    with torch.no_grad():
        return accuracies(logits(xt).argmax(1), yt, class_groups), curve


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--methods", default="ce,cosine,ldam-drw")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="the head's seed; trial t uses seed + t")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--cosine-scale", type=float, default=16.0)
    p.add_argument("--ldam-scale", type=float, default=30.0)
    p.add_argument("--max-m", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.9999)
    p.add_argument("--learnable-scale", action="store_true")
    p.add_argument(
        "--cosine-init-norm", type=float, default=0.0,
        help="the cosine head's `init-norm` (default unset: nn.Linear's ±1/√D, as OLTR)",
    )
    p.add_argument(
        "--ldam-init-norm", type=float, default=1.0,
        help="the ldam-drw head's `init-norm` (default 1, NormedLinear's unit vectors; 0 keeps "
             "nn.Linear's ±1/√D, lortflow's initialisation before `init-norm`)",
    )
    p.add_argument("--curves", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y = load(a.dir, "train_features.npy").float(), load(a.dir, "train_labels.npy").long()
    xt, yt = load(a.dir, "test_features.npy").float(), load(a.dir, "test_labels.npy").long()
    counts = torch.bincount(y)
    class_groups = groups(counts)
    print(f"{len(y)} training / {len(yt)} test features of dimension {x.shape[1]}, {counts.numel()} classes")
    print(f"{'head':<10} {'trial':>5} {'seed':>5} {'All':>7} {'Many':>7} {'Medium':>7} {'Few':>7}")
    for method in a.methods.split(","):
        rows = []
        for trial in range(a.trials):
            acc, curve = train(method, a, x, y, xt, yt, counts, a.seed + trial, class_groups)
            rows.append(acc)
            print(
                f"{method:<10} {trial:>5} {a.seed + trial:>5} "
                + " ".join(f"{100 * acc[g]:>7.2f}" for g in ("all", "many", "medium", "few"))
            )
            for line in curve:
                print(line)
        summary = []
        for g in ("all", "many", "medium", "few"):
            v = np.array([r[g] for r in rows]) * 100
            summary.append(f"{v.mean():.2f}±{v.std():.2f}")
        print(f"{method:<10} {'mean':>5} {'':>5} " + " ".join(f"{s:>7}" for s in summary))


if __name__ == "__main__":
    main()
