"""Timing shared by the reference benchmarks: mean milliseconds per call after warm-up, with the
GPU drained before and after (as bench/timing.ts does for onestage)."""
import time

import torch


def timed(fn, device, warmup, iters, reset_peak=False):
    """reset_peak: the CUDA peak-memory statistics start after the warm-up."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e3
