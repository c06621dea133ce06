#!/usr/bin/env python3
"""The input side of training, in PyTorch as the LTR repositories run it: a list dataset that opens
each JPEG with PIL (`Image.open(path).convert("RGB")`), torchvision's transforms, a DataLoader
with N worker processes, batch 128. The model is left out: this measures what feeds it.

    /tmp/torchvenv/bin/python bench/input_torch.py ROOT LIST [--workers 2] [--eval] [--epochs 1]

Training view: RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize (ImageNet
statistics), with `--jitter` ColorJitter(0.4, 0.4, 0.4, 0) after the flip as imagenet-lt.kdl.
Evaluation view (`--eval`): Resize(256) + CenterCrop(224) + ToTensor + Normalize. Prints img/s, the
peak RSS of the main process and the largest peak of a worker process.
"""
import argparse
import os
import resource
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T


class ListDataset(Dataset):
    def __init__(self, root, list_file, transform):
        self.root, self.transform = root, transform
        self.items = []
        with open(list_file) as f:
            for line in f:
                if line.strip():
                    path, label = line.rsplit(maxsplit=1)
                    self.items.append((path, int(label)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with open(os.path.join(self.root, path), "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), label


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("list")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--jitter", action="store_true")
    args = p.parse_args()
    normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if args.eval:
        transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    else:
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        if args.jitter:
            steps.append(T.ColorJitter(0.4, 0.4, 0.4, 0))
        transform = T.Compose(steps + [T.ToTensor(), normalize])
    torch.set_num_threads(1)
    data = ListDataset(args.root, args.list, transform)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=not args.eval,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    for epoch in range(args.epochs):
        start, seen, checksum = time.perf_counter(), 0, 0.0
        for x, y in loader:
            seen += x.shape[0]
            checksum += float(x[:, :, 0, 0].sum())
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch}: {seen} images in {elapsed:.2f} s = {seen / elapsed:.0f} img/s")
    del loader  # the workers exit, so that their peak is in RUSAGE_CHILDREN
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    view = "eval" if args.eval else ("train+jitter" if args.jitter else "train")
    print(f"pytorch {torch.__version__} workers={args.workers} view={view}: {seen / elapsed:.0f} img/s, "
          f"peak RSS main {main_rss:.0f} MB + up to {worker_rss:.0f} MB per worker")


if __name__ == "__main__":
    main()
