"""Where BatchNorm2d's GPU time goes: per-kernel device time of one training forward +
backward, fusedopt against torch, from torch.profiler (CUPTI; no hardware counters).

For each case it prints every kernel (name, launches and device microseconds per
iteration) and, per implementation, the summed kernel time against the CUDA-event wall
time of the same iterations: wall well over the kernel sum means the GPU waited on the
host. Run by benchmarks/gpu_check.sh (step 'profile'); needs a CUDA device.
"""
import torch
from torch.profiler import ProfilerActivity, profile

import fusedopt

CASES = [((64, 256, 14, 14), "nchw", torch.float32), ((32, 64, 56, 56), "nchw", torch.float32),
         ((8, 32, 112, 112), "nchw", torch.bfloat16), ((8, 32, 112, 112), "channels_last", torch.float32),
         ((32, 64, 56, 56), "channels_last", torch.bfloat16)]
ITERS = 20


def step_fn(cls, shape, layout, dtype):
    x = torch.randn(shape, device="cuda").to(dtype)
    dy = torch.randn(shape, device="cuda").to(dtype)
    if layout == "channels_last":
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    x.requires_grad_()
    bn = cls(shape[1], device="cuda")

    def step():
        x.grad = None
        bn.zero_grad(set_to_none=True)
        bn(x).backward(dy)
    return step


def measure(step):
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(ITERS):
        step()
    b.record()
    torch.cuda.synchronize()
    wall_us = a.elapsed_time(b) * 1e3 / ITERS
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(ITERS):
            step()
        torch.cuda.synchronize()
    kernels = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            n, t = kernels.get(ev.name, (0, 0.0))
            kernels[ev.name] = (n + 1, t + ev.device_time_total)
    return wall_us, kernels


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for shape, layout, dtype in CASES:
        mb = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() / 1e6
        print(f"\n## {tuple(shape)} {layout} {str(dtype)[6:]} ({mb:.1f} MB per tensor)")
        for name, cls in (("torch", torch.nn.BatchNorm2d), ("fusedopt", fusedopt.nn.BatchNorm2d)):
            wall, kernels = measure(step_fn(cls, shape, layout, dtype))
            total = sum(t for _, t in kernels.values()) / ITERS
            print(f"{name:9s} wall {wall:7.1f} us/iter, kernels {total:7.1f} us/iter")
            for k, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
                print(f"    {t / ITERS:7.1f} us  x{n / ITERS:4.1f}  {k[:110]}")


if __name__ == "__main__":
    main()
