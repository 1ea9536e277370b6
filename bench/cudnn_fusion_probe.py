"""Probe: do cuDNN's fused convolution epilogues (torch.cudnn_convolution_relu / _add_relu) beat a plain
convolution plus a separate epilogue on the layers of RetinaNet-50's inference (bf16, channels-last)?
Per layer shape: the convolution alone, the fused call, and the fused call's values against the unfused
ones. Times are CUDA-graph replays of 20 calls (launch overhead out).
    python3 bench/cudnn_fusion_probe.py [--batch 8] [--size 640] [--benchmark]
"""
import argparse
import collections

import torch
import torch.nn.functional as F
import torchvision


def timed(fn, reps=20, rounds=5):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    best = float('inf')
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / reps)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--size', type=int, default=640)
    p.add_argument('--benchmark', action='store_true')
    a = p.parse_args()
    torch.backends.cudnn.benchmark = a.benchmark
    print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(), 'benchmark', a.benchmark)
    dt = torch.bfloat16
    net = torchvision.models.resnet50().cuda().eval().to(memory_format=torch.channels_last)
    shapes = collections.OrderedDict()

    def hook(name, relu, residual):
        def f(m, inp, out):
            key = (tuple(inp[0].shape), tuple(m.weight.shape), m.stride, m.padding, relu, residual)
            shapes[key] = shapes.get(key, 0) + 1
        return f

    for name, m in net.named_modules():
        if isinstance(m, torchvision.models.resnet.Bottleneck):
            m.conv1.register_forward_hook(hook(name, True, False))
            m.conv2.register_forward_hook(hook(name, True, False))
            m.conv3.register_forward_hook(hook(name, True, True))
            if m.downsample is not None:
                m.downsample[0].register_forward_hook(hook(name, False, False))
    net.conv1.register_forward_hook(hook('stem', True, False))
    with torch.no_grad():
        net(torch.randn(a.batch, 3, a.size, a.size, device='cuda').to(memory_format=torch.channels_last))
    # the heads: 4 conv+bias+ReLU of 256 channels on P3..P7, twice
    for l in range(3, 8):
        s = -(-a.size // 2 ** l)
        shapes[((a.batch, 256, s, s), (256, 256, 3, 3), (1, 1), (1, 1), True, False)] = 8
    tot = collections.Counter()
    print(f"{'input':>22} {'weight':>18} {'s':>2} {'n':>2} {'relu':>4} {'add':>3} | conv ms | conv+bias ms | fused ms | Δ fused-conv | max rel diff")
    with torch.no_grad():
        for (xs, ws, stride, pad, relu, residual), n in shapes.items():
            x = torch.randn(xs, device='cuda').to(dt).contiguous(memory_format=torch.channels_last)
            w = (torch.randn(ws, device='cuda') * (2 / (ws[1] * ws[2] * ws[3])) ** 0.5).to(dt).contiguous(memory_format=torch.channels_last)
            b = (torch.randn(ws[0], device='cuda') * 0.1).to(dt)
            y0 = F.conv2d(x, w, None, stride, pad)
            z = torch.randn_like(y0) if residual else None
            conv = lambda: F.conv2d(x, w, None, stride, pad)
            convb = lambda: F.conv2d(x, w, b, stride, pad)
            if not relu:
                fused = convb
            elif residual:
                fused = lambda: torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, stride, pad, (1, 1), 1)
            else:
                fused = lambda: torch.cudnn_convolution_relu(x, w, b, stride, pad, (1, 1), 1)
            try:
                out = fused()
                ref = y0.float() + b.float().view(1, -1, 1, 1)
                if residual:
                    ref = ref + z.float()
                if relu:
                    ref = ref.relu()
                diff = ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
                tf = timed(fused)
                layout = 'NHWC' if out.is_contiguous(memory_format=torch.channels_last) else 'NCHW'
            except Exception as e:  # noqa: BLE001
                print('  fused failed:', str(e).splitlines()[0][:200])
                tf, diff, layout = float('nan'), float('nan'), '-'
            tc, tcb = timed(conv), timed(convb)
            tot['conv'] += n * tc
            tot['conv+bias'] += n * tcb
            tot['fused'] += n * tf
            print(f'{str(xs):>22} {str(ws):>18} {stride[0]:>2} {n:>2} {relu!s:>4} {residual!s:>3} | {tc:.4f} | {tcb:.4f} | {tf:.4f} {layout} | {tf - tc:+.4f} | {diff:.2e}')
    print('totals (ms per forward, counts applied):', {k: round(v, 3) for k, v in tot.items()})
    # a float32 bias with bf16 input and weight: accepted, and the same values as a bf16 bias?
    with torch.no_grad():
        x = torch.randn(8, 256, 40, 40, device='cuda').to(dt).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(256, 256, 3, 3, device='cuda') * 0.03).to(dt).contiguous(memory_format=torch.channels_last)
        b = torch.randn(256, device='cuda') * 0.1
        try:
            y32 = torch.cudnn_convolution_relu(x, w, b, (1, 1), (1, 1), (1, 1), 1)
            y16 = torch.cudnn_convolution_relu(x, w, b.to(dt), (1, 1), (1, 1), (1, 1), 1)
            print('float32 bias: accepted, output', y32.dtype, 'max diff to bf16 bias', (y32.float() - y16.float()).abs().max().item())
        except Exception as e:  # noqa: BLE001
            print('float32 bias: refused:', str(e).splitlines()[0][:200])


if __name__ == '__main__':
    main()
