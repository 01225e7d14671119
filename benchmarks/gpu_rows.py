"""Speed rows on CUDA for the estimators' hot paths (run by benchmarks/gpu_check.sh).

Prints a markdown table: case, device, seconds (median of 3 after a warm-up, synchronised),
estimate and, where known, the ground truth.  Usage: python benchmarks/gpu_rows.py [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import ibtools


def gaussian_pair(n, d, rho, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    return x.to(device), y.to(device), -d / 2 * math.log(1 - rho**2)


def timed(fn, device, repeats=3):
    fn()  # warm-up (kernels, allocator)
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rows = []

    x, y, truth = gaussian_pair(100_000, 5, 0.6, dev)
    s, r = timed(lambda: ibtools.mutual_information(x, y, method="ksg", k=3, neighbours="brute"), dev)
    rows.append(("KSG brute, n=100000, 5+5", s, r.value, truth))
    x, y, truth = gaussian_pair(20_000, 20, 0.3, dev)
    s, r = timed(lambda: ibtools.entropy(x, method="kde", noise_var=0.1), dev)
    rows.append(("KDE H(T) bounds, n=20000, d=20", s, r.value, float("nan")))
    x, y, truth = gaussian_pair(100_000, 20, 0.3, dev)
    s, r = timed(lambda: ibtools.entropy(x, method="kde", noise_var=0.1), dev)
    rows.append(("KDE H(T) bounds, n=100000, d=20", s, r.value, float("nan")))
    t = torch.randn(1_000_000, 64, device=dev)
    labels = torch.randint(0, 10, (1_000_000,), device=dev)
    s, r = timed(lambda: ibtools.mutual_information(t, labels, method="binning", n_bins=30), dev)
    rows.append(("binning I(T;Y), n=1e6, d=64", s, r.value, 0.0))
    x, y, truth = gaussian_pair(2_000, 10, 0.6, dev)
    s, r = timed(lambda: ibtools.mutual_information(x, y, method="renyi"), dev, repeats=1)
    rows.append(("matrix Renyi, n=1000 (subsampled), 10+10", s, r.value, float("nan")))

    print(f"device: {name}, torch {torch.__version__}\n")
    print("| case | seconds | estimate (nats) | truth (nats) |")
    print("|---|---|---|---|")
    for case, sec, val, tru in rows:
        tr = "" if math.isnan(tru) else f"{tru:.4f}"
        print(f"| {case} | {sec:.4f} | {val:.4f} | {tr} |")


if __name__ == "__main__":
    main()
