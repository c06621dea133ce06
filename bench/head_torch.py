"""PyTorch CPU baseline for `stdlib/examples/head_bench.rs`.

One linear head 512→100 on 10,847 random features, 20 epochs, batch 128, SGD momentum 0.9,
weight decay 5e-4, CosineAnnealingLR(T_max=20) stepped per epoch, plain cross-entropy: the loop a
researcher writes by hand. Prints the best of three timed runs after one warm-up run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
    /tmp/torchvenv/bin/python bench/head_torch.py [--sweep] [--device cuda] [--samples N]
        [--dim D] [--classes K] [--epochs E] [--batch B]

`--sweep` also trains the 25 heads of `head_bench`'s sweep (5 lr x 5 wd) one after another, the
loop a researcher writes without lortflow.
"""

import argparse
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--samples", type=int, default=10_847)
parser.add_argument("--test-samples", type=int, default=10_000)
parser.add_argument("--dim", type=int, default=512)
parser.add_argument("--classes", type=int, default=100)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--sweep", action="store_true")
ARGS = parser.parse_args()
N, D, K, EPOCHS, BATCH = ARGS.samples, ARGS.dim, ARGS.classes, ARGS.epochs, ARGS.batch
N_TEST = ARGS.test_samples
DEVICE = torch.device(ARGS.device)


def train(x, y, x_test, lr=0.01, wd=5e-4):
    head = torch.nn.Linear(D, K).to(DEVICE)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        perm = torch.randperm(N, device=DEVICE)
        total, correct = 0.0, 0
        for start in range(0, N, BATCH):
            idx = perm[start : start + BATCH]
            xb, yb = x[idx], y[idx]
            logits = head(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            # Read the loss and the hits back every step, as lortflow does.
            total += loss.item()
            correct += (logits.argmax(1) == yb).sum().item()
        sched.step()
    # The test logits, as lortflow computes them after training.
    with torch.no_grad():
        head(x_test).cpu()
    return head


def main():
    torch.manual_seed(0)
    x = torch.randn(N, D, device=DEVICE)
    y = torch.randint(0, K, (N,), device=DEVICE)
    x_test = torch.randn(N_TEST, D, device=DEVICE)
    train(x, y, x_test)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        train(x, y, x_test)
        times.append(time.perf_counter() - start)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    print(f"one head {D}→{K}, {N} samples, {EPOCHS} epochs, batch {BATCH}: {min(times):.3f} s (best of 3)")
    if ARGS.sweep:
        start = time.perf_counter()
        for lr in [0.003, 0.01, 0.03, 0.1, 0.3]:
            for wd in [0.0, 1e-4, 5e-4, 1e-3, 5e-3]:
                train(x, y, x_test, lr, wd)
        print(f"25 heads (5 lr x 5 wd) one after another: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
