"""PyTorch CPU baseline for `stdlib/examples/head_bench.rs`.

One linear head 512→100 on 10,847 random features, 20 epochs, batch 128, SGD momentum 0.9,
weight decay 5e-4, CosineAnnealingLR(T_max=20) stepped per epoch, plain cross-entropy: the loop a
researcher writes by hand. Prints the best of three timed runs after one warm-up run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
    /tmp/torchvenv/bin/python bench/head_torch.py
"""

import time

import torch

N, D, K, EPOCHS, BATCH = 10_847, 512, 100, 20, 128


def train(x, y):
    head = torch.nn.Linear(D, K)
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        perm = torch.randperm(N)
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
    return head


def main():
    torch.manual_seed(0)
    x = torch.randn(N, D)
    y = torch.randint(0, K, (N,))
    train(x, y)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        train(x, y)
        times.append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one head 512→100, {N} samples, {EPOCHS} epochs, batch {BATCH}: {min(times):.3f} s (best of 3)")


if __name__ == "__main__":
    main()
