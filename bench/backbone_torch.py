"""PyTorch CPU reference for stdlib/examples/backbone_bench.rs.

Same architectures (conv-fc and the small CNN for 28x28 grey, CIFAR ResNet-32 with option-A shortcuts), batch 128,
training step = forward + CE + backward + SGD(momentum 0.9, wd 5e-4); features = eval-mode
forward of the pooled features under no_grad. Prints images/s.

    python bench/backbone_torch.py [train_steps] [infer_steps] [--device cuda] [--only resnet32]

LORTFLOW_CPU_LEVEL (scalar, avx2, avx512) caps PyTorch's CPU kernels as it caps lortflow's:
ATEN_CPU_CAPABILITY for ATen's own kernels, ONEDNN_MAX_CPU_ISA for oneDNN's convolutions and
MKL_ENABLE_INSTRUCTIONS for MKL's matrix products (the linear layers on x86 builds); oneDNN's
and MKL's lowest are SSE4.1 / SSE4.2, so `scalar` means that there. They are read when torch
loads, so they are set before the import.

On CUDA every timed loop ends with a synchronisation; the training step reads the loss back
(`loss.item()`) as the CPU loop and lortflow do.
"""
import os
import sys
import time

# (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) for each LORTFLOW_CPU_LEVEL.
TORCH_LEVELS = {
    "scalar": ("default", "SSE41", "SSE4_2"),
    "avx2": ("avx2", "AVX2", "AVX2"),
    "avx512": ("avx512", "AVX512_CORE", "AVX512"),
}
_level = os.environ.get("LORTFLOW_CPU_LEVEL", "").strip().lower()
if _level:
    if _level not in TORCH_LEVELS:
        sys.exit(f"LORTFLOW_CPU_LEVEL={_level!r} is not a level: use scalar, avx2 or avx512")
    for _name, _value in zip(("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"), TORCH_LEVELS[_level]):
        os.environ[_name] = _value

import torch  # noqa: E402 (after the level's variables)
import torch.nn as nn
import torch.nn.functional as F


BATCH = 128


class SmallCnn(nn.Module):
    def __init__(self, c=1, k=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128)
        self.fc = nn.Linear(128, k)
        # As lortflow's `small-cnn`: Kaiming normal, fan-out (bench/stage1_torch.py trains it).
        for m in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return x.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.stride != 1 or self.pad:
            sc = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNet32(nn.Module):
    def __init__(self, k=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, w in enumerate([16, 32, 64]):
            for j in range(5):
                layers.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, k)

    def features(self, x):
        return self.layers(F.relu(self.bn1(self.conv1(x)))).mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name, model, shape, train_steps, infer_steps, device=torch.device("cpu")):
    torch.manual_seed(0)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(BATCH, *shape, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.item()
        loss.backward()
        opt.step()

    model.train()
    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(train_steps):
        step()
    sync(device)
    train = train_steps * BATCH / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        model.features(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(infer_steps):
            model.features(x).cpu()
        infer = infer_steps * BATCH / (time.perf_counter() - t)
    print(f"{name:<10} train {train:8.1f} img/s   features {infer:8.1f} img/s")


if __name__ == "__main__":
    argv = sys.argv[1:]
    device = torch.device(argv[argv.index("--device") + 1] if "--device" in argv else "cpu")
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    flags = {"--device", "--only"}
    values = [a for i, a in enumerate(argv) if a not in flags and (i == 0 or argv[i - 1] not in flags)]
    args = [int(a) for a in values]
    train_steps = args[0] if args else 10
    infer_steps = args[1] if len(args) > 1 else 20
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads, ATen {torch.backends.cpu.get_cpu_capability()}"
        + f", oneDNN max ISA {os.environ.get('ONEDNN_MAX_CPU_ISA', 'all')}"
    )
    print(f"torch {torch.__version__} {where}, batch {BATCH}")
    if only in (None, "conv-fc"):
        from stage1_torch import ConvFc  # defined there, with the stage-1 reference

        bench("conv-fc", ConvFc(), (1, 28, 28), train_steps, infer_steps, device)
    if only in (None, "small-cnn"):
        bench("small-cnn", SmallCnn(), (1, 28, 28), train_steps, infer_steps, device)
    if only in (None, "resnet32"):
        scale = 1 if only else 4
        bench("resnet32", ResNet32(), (3, 32, 32), max(2, -(-train_steps // scale)), max(2, -(-infer_steps // scale)), device)
