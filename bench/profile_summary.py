"""Tabulates a Kineto (Chrome) trace written by onestage's profiler (bench/train_throughput.ts
--profile): GPU kernel time by kernel and by kind, how busy the GPU was over the traced span, and
the CUDA runtime calls (launches, synchronisations) of the host.
usage: profile_summary.py TRACE.json [STEPS] [TOP]"""
import collections
import json
import re
import sys

KINDS = [
    ("convolution / matrix product", re.compile(r"xmma|gemm|cudnn|cutlass|conv|sm90|sm80|nchwToNhwc|nhwcToNchw|implicit|wgrad|dgrad|fprop|winograd|cublas", re.I)),
    ("multi-tensor (optimizer, EMA, clipping)", re.compile(r"multi_tensor|foreach|fused_adam|FusedAdam", re.I)),
    ("batch norm", re.compile(r"batch_norm|batchnorm|bn_", re.I)),
    ("reduction", re.compile(r"reduce|Reduce|norm_kernel|sum_|cub::", re.I)),
    ("copy / layout", re.compile(r"copy|Copy|cat_|CatArray|transpose|permute|Memcpy|Memset|fill", re.I)),
    ("onestage kernels", re.compile(r"onestage|focal|ghm|roi_align|nms", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|Elementwise", re.I)),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def main():
    trace = json.load(open(sys.argv[1]))
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    if not gpu:
        print("no GPU events in the trace")
        return
    start = min(e["ts"] for e in gpu)
    end = max(e["ts"] + e["dur"] for e in gpu)
    # union of the kernel intervals: how long the GPU had work
    busy = 0.0
    cur_s, cur_e = None, None
    for s, e in sorted((e["ts"], e["ts"] + e["dur"]) for e in gpu):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = end - start
    total = sum(e["dur"] for e in gpu)
    print(f"traced span {span / 1000:.1f} ms for {steps} steps ({span / 1000 / steps:.2f} ms/step); GPU busy {busy / 1000:.1f} ms "
          f"({100 * busy / span:.1f} %); {len(gpu)} GPU operations ({len(gpu) / steps:.0f} per step), kernel time {total / 1000 / steps:.2f} ms/step")
    by_kind = collections.defaultdict(lambda: [0.0, 0])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in gpu:
        name = e["name"]
        by_kind[kind_of(name)][0] += e["dur"]
        by_kind[kind_of(name)][1] += 1
        by_name[name][0] += e["dur"]
        by_name[name][1] += 1
    print("\n| kind | ms/step | share | launches/step |\n| --- | --- | --- | --- |")
    for kind, (dur, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {kind} | {dur / 1000 / steps:.2f} | {100 * dur / total:.1f} % | {n / steps:.0f} |")
    print(f"\n| kernel (top {top}) | ms/step | share | calls/step |\n| --- | --- | --- | --- |")
    for name, (dur, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| {name[:110]} | {dur / 1000 / steps:.3f} | {100 * dur / total:.1f} % | {n / steps:.1f} |")
    calls = collections.defaultdict(lambda: [0.0, 0])
    for e in runtime:
        calls[e["name"]][0] += e["dur"]
        calls[e["name"]][1] += 1
    print("\n| CUDA runtime call | calls/step | host ms/step |\n| --- | --- | --- |")
    for name, (dur, n) in sorted(calls.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"| {name} | {n / steps:.1f} | {dur / 1000 / steps:.2f} |")


if __name__ == "__main__":
    main()
