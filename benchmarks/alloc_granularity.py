"""How the driver backs wgpu buffers: device-wide GPU memory (nvidia-smi) before and after
creating buffers of several sizes. Run on the GPU machine; results in
benchmarks/results/driver_alloc_granularity-h200.txt (H200: wgpu sub-allocates buffers up to
at least 64 MiB from 256 MiB device-memory blocks; 400 MiB got its own allocation; MAP_WRITE
buffers land in device memory too, through the resizable BAR).

    python benchmarks/alloc_granularity.py
"""
import subprocess, numpy as np, sys
def drv():
    return int(subprocess.run(["nvidia-smi","--query-gpu=memory.used","--format=csv,noheader,nounits"],capture_output=True,text=True).stdout.split()[0])
from bitswarm.kernels.device import Context
ctx = Context(); U = ctx.wgpu.BufferUsage; use = U.STORAGE|U.COPY_SRC|U.COPY_DST
base = drv(); print("ctx", base)
keep=[]
def step(name, sizes, write=False):
    b0=drv()
    for s in sizes:
        b = ctx.device.create_buffer(size=s, usage=use); keep.append(b)
        if write: ctx.queue.write_buffer(b, 0, np.zeros(s, np.uint8))
    ctx.sync(); print(f"{name:40s} asked {sum(sizes)/2**20:8.1f} MiB  driver +{drv()-b0} MiB", flush=True)
step("100 x 1 MiB", [1<<20]*100)
step("100 x 1 MiB more", [1<<20]*100)
step("50 x 5 MiB", [5<<20]*50)
step("10 x 16 MiB", [16<<20]*10)
step("4 x 64 MiB", [64<<20]*4)
step("1 x 400 MiB", [400<<20])
step("200 x 64 KiB", [64<<10]*200)
step("20 x 2 MiB written", [2<<20]*20, write=True)
step("1 x 40 MiB written", [40<<20], write=True)
b0=drv(); s=ctx.device.create_buffer(size=64<<20, usage=U.MAP_WRITE|U.COPY_SRC, mapped_at_creation=True); s.unmap(); keep.append(s); ctx.sync(); print("MAP_WRITE 64 MiB driver +", drv()-b0)
b0=drv(); 
for b in keep[:200]: b.destroy()
ctx.sync(); print("destroyed 200 x 1 MiB: driver", drv()-b0)
