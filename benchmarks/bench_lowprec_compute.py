"""Compute cost per element of each storage mode: one thread, a cache-resident bucket.

With 2^18 elements the buffers sit in L2/L3, so the time is the kernel's arithmetic,
not DRAM bandwidth; compare the modes with each other and with the fp32 bytes floor.

    PYTHONPATH=src python benchmarks/bench_lowprec_compute.py
"""
import statistics
import time

import torch

import adamkit
from adamkit.kernels import floor_flat_

torch.set_num_threads(1)
n = 1 << 18
def mk(dtype=torch.float32):
    p = torch.nn.Parameter(torch.randn(n).to(dtype)); p.grad = (torch.randn(n)*1e-3).to(dtype); return [p]
cs = {'adamkit fp32': adamkit.AdamW(mk()).step,
      'bf16 state': adamkit.AdamW(mk(), state_dtype='bfloat16').step,
      'int8 state': adamkit.AdamW(mk(), state_dtype='int8').step,
      'int8 m only': adamkit.AdamW(mk(), exp_avg_dtype='int8').step,
      'bf16 p sr': adamkit.AdamW(mk(torch.bfloat16), param_rounding='stochastic').step,
      'bf16 p nearest': adamkit.AdamW(mk(torch.bfloat16)).step}
b = [torch.zeros(n) for _ in range(4)]
cs['floor fp32'] = lambda: floor_flat_(*b)
t = {k: [] for k in cs}
for r in range(60):
    for k, f in cs.items():
        s = time.perf_counter(); f(); e = time.perf_counter()-s
        if r >= 5: t[k].append(e)
for k in t: print(f"{k:16s} {min(t[k])/n*1e9:7.3f} ns/elem (min)  {statistics.median(t[k])/n*1e9:7.3f} median")
