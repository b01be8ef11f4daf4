#!/usr/bin/python3
"""Side-by-side speed of pare and PyTorch on seedcnn, in one run (`make
bench-torch`). Runs build/bench_train --json and build/bench_int8 --json,
then the same protocol in PyTorch (Debian's python3-torch): float training
and inference, and static int8 (torch.ao.quantization: QuantStub/DeQuantStub,
conv+relu and linear+relu fused, per-channel symmetric int8 weights and
per-tensor min/max uint8 activations like pare's, calibrated on 1024 images,
on the quantized engine the build has: Debian's has oneDNN, no fbgemm), and
prints both with ratios. PyTorch is timed with OPENBLAS_CORETYPE/
OPENBLAS_L2_SIZE unset, OPENBLAS_NUM_THREADS=1 and glibc told to keep freed
memory, as REFERENCE.md describes. Without PyTorch it prints pare's figures
alone."""
import json
import os
import subprocess
import sys
import time

TORCH_ENV = {"OPENBLAS_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": "-1", "MALLOC_MMAP_THRESHOLD_": "4294967296"}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def mnist_calibration(n):
    """The first n training images, normalized as pare's loader does; None without data/mnist."""
    path = os.path.join(ROOT, "data", "mnist", "train-images-idx3-ubyte")
    if not os.path.exists(path):
        return None
    import torch
    with open(path, "rb") as f:
        head = f.read(16)
        count, rows, cols = int.from_bytes(head[4:8], "big"), int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big")
        n = min(n, count)
        pixels = f.read(n * rows * cols)
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).float().reshape(n, 1, rows, cols)
    return (x / 255 - 0.1307) / 0.3081


def time_inference(model, threads, rounds=3):
    """Images/s at batch 256 and the median batch-1 latency (us) on `threads`
    threads, each the best of `rounds` (as build/bench_int8 reports pare's)."""
    import torch
    torch.set_num_threads(threads)
    xb = torch.randn(256, 1, 28, 28)
    x1 = torch.randn(1, 1, 28, 28)
    best_ips, best_lat = 0.0, float("inf")
    with torch.no_grad():
        for _ in range(5):
            model(xb)
        for _ in range(rounds):
            t0 = time.perf_counter()
            n = 40
            for _ in range(n):
                model(xb)
            best_ips = max(best_ips, 256 * n / (time.perf_counter() - t0))
            samples = []
            for _ in range(320):
                t0 = time.perf_counter()
                model(x1)
                samples.append(time.perf_counter() - t0)
            best_lat = min(best_lat, 1e6 * sorted(samples[20:])[150])
    return best_ips, best_lat


def torch_int8_figures():
    """Static int8 of seedcnn (as pare converts it: log-softmax dropped), timed at 1 and 2 threads."""
    import torch
    import torch.nn as nn
    from torch.ao.quantization import (DeQuantStub, MinMaxObserver, PerChannelMinMaxObserver, QConfig, QuantStub,
                                       convert, fuse_modules, prepare)

    class QSeedCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2)
            self.conv2, self.relu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2)
            self.fc1, self.relu3, self.fc2 = nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10)

        def forward(self, x):
            x = self.pool1(self.relu1(self.conv1(self.quant(x))))
            x = self.pool2(self.relu2(self.conv2(x)))
            return self.dequant(self.fc2(self.relu3(self.fc1(torch.flatten(x, 1)))))

    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in engines), None)
    if engine is None:
        return {"int8_engine": "none"}
    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = QSeedCNN().eval()
    fuse_modules(model, [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"]], inplace=True)
    model.qconfig = QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8),
                            weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                      qscheme=torch.per_channel_symmetric))
    prepare(model, inplace=True)
    calib = mnist_calibration(1024)
    if calib is None:
        calib = torch.randn(1024, 1, 28, 28)
    with torch.no_grad():
        for i in range(0, calib.shape[0], 256):
            model(calib[i:i + 256])
    convert(model, inplace=True)
    out = {"int8_engine": engine}
    for threads in (1, 2):
        out["int8_ips_t%d" % threads], out["int8_lat_t%d" % threads] = time_inference(model, threads)
    return out


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
    out.update(torch_int8_figures())
    return out


def print_int8(pare8, torch8):
    """pare's int8 (and float) against PyTorch's static int8, both measured in this run."""
    print()
    print("seedcnn static int8 inference: pare (%s kernel) vs PyTorch (%s engine), this run"
          % (pare8["kernel"], torch8.get("int8_engine", "-") if torch8 else "-"))
    print("%-32s %11s %11s %11s %8s %8s" % ("figure", "pare float", "pare int8", "torch int8", "vs float", "vs torch"))
    for t in (1, 2):
        for label, key, sense in (("img/s at batch 256", "ips", 1), ("latency us at batch 1", "lat", -1)):
            f, q = pare8["float_%s_t%d" % (key, t)], pare8["int8_%s_t%d" % (key, t)]
            tq = torch8.get("int8_%s_t%d" % (key, t)) if torch8 else None
            vs_f = q / f if sense > 0 else f / q
            vs_t = "" if tq is None else "%7.2fx" % (q / tq if sense > 0 else tq / q)
            print("%-32s %11.0f %11.0f %11s %7.2fx %8s" % ("%s, %d thread%s" % (label, t, "s" if t > 1 else ""),
                                                        f, q, "-" if tq is None else "%.0f" % tq, vs_f, vs_t))
    print("ratio > 1 means pare's int8 is faster")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-only":
        print(json.dumps(torch_figures()))
        return
    pare = json.loads(subprocess.check_output([os.path.join(ROOT, "build", "bench_train"), "--json"], cwd=ROOT).splitlines()[-1])
    pare8 = json.loads(subprocess.check_output([os.path.join(ROOT, "build", "bench_int8"), "--json"], cwd=ROOT).splitlines()[-1])
    try:
        import torch as _torch  # noqa: F401  (only to know whether it is there)
    except ImportError:
        print("PyTorch is not installed (Debian: apt-get install python3-torch): pare's figures alone")
        print(json.dumps(pare))
        print_int8(pare8, None)
        return
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
    print_int8(pare8, torch)


if __name__ == "__main__":
    main()
