#!/usr/bin/python3
"""Side-by-side speed of pare and PyTorch on seedcnn, in one run (`make
bench-torch`). Runs build/bench_train --json, then the same protocol in
PyTorch (Debian's python3-torch), and prints both with ratios. PyTorch is
timed with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset, OPENBLAS_NUM_THREADS=1
and glibc told to keep freed memory, as REFERENCE.md describes."""
import json
import os
import subprocess
import sys
import time

TORCH_ENV = {"OPENBLAS_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": "-1", "MALLOC_MMAP_THRESHOLD_": "4294967296"}


def torch_figures():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class SeedCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
            self.fc1, self.fc2 = nn.Linear(1600, 128), nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return F.log_softmax(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))), dim=1)

    torch.manual_seed(0)
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    out = {"blas_gflops": 2 * 1024 ** 3 * 5 / (time.perf_counter() - t0) / 1e9}
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model = SeedCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for k in range(220):
            if k == 20:
                t0 = time.perf_counter()
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
        out["train_img_per_s_t%d" % threads] = 64 * 200 / (time.perf_counter() - t0)
    model.eval()
    xb = torch.randn(256, 1, 28, 28)
    with torch.no_grad():
        for _ in range(5):
            model(xb)
        t0 = time.perf_counter()
        n = 40
        for _ in range(n):
            model(xb)
        out["img_per_s"] = 256 * n / (time.perf_counter() - t0)
        x1 = torch.randn(1, 1, 28, 28)
        samples = []
        for _ in range(320):
            t0 = time.perf_counter()
            model(x1)
            samples.append(time.perf_counter() - t0)
        out["latency_us_b1"] = 1e6 * sorted(samples[20:])[150]
    return out


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-only":
        print(json.dumps(torch_figures()))
        return
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    pare = json.loads(subprocess.check_output([os.path.join(root, "build", "bench_train"), "--json"], cwd=root).splitlines()[-1])
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(TORCH_ENV)
    torch = json.loads(subprocess.check_output([sys.executable, __file__, "--torch-only"], env=env).splitlines()[-1])
    rows = [("train img/s, 1 thread", "train_img_per_s_t1", 1), ("train img/s, 2 threads", "train_img_per_s_t2", 1),
            ("eval img/s, batch 256", "img_per_s", 1), ("latency us, batch 1", "latency_us_b1", -1)]
    print("seedcnn, pare vs PyTorch %s measured in this run" % __import__("torch").__version__)
    print("%-26s %12s %12s %8s" % ("figure", "pare", "PyTorch", "ratio"))
    for label, key, sense in rows:
        ratio = pare[key] / torch[key] if sense > 0 else torch[key] / pare[key]
        print("%-26s %12.0f %12.0f %7.2fx" % (label, pare[key], torch[key], ratio))
    print("ratio > 1 means pare is faster")
    print("PyTorch's BLAS ran 1024^3 sgemm at %.0f GFLOP/s on 1 thread" % torch["blas_gflops"])
    if torch["blas_gflops"] < 50:
        print("  that is Debian's reference BLAS: for a fair comparison install libopenblas0-pthread")


if __name__ == "__main__":
    main()
