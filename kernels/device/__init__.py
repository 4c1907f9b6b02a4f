"""The wgpu device layer: a compute API of a few nouns (after gpu.cpp).

    Context      adapter + device + queue and the open command encoder (context.py)
    BufferPool   buffers by size class, lowest serial first, live/peak byte accounting (pool.py)
    Tensor       a storage buffer with a shape and a dtype (tensor.py)
    Kernel       one WGSL entry point compiled once per override-constant set (context.py)
    ParamLayout  a shader's `struct Params`, packed from named values (params.py)
    UploadRing   host data streamed into tensors through mappable buffers (upload_ring.py)

Ops (kernels/ops/) launch kernels through kernels/ops/registry.py; nothing here knows an op.
"""
from .context import (FLUSH_EVERY, WG_MAX, Context, DeviceError, Kernel, describe_adapter,
                      grid_for, is_cpu_adapter)
from .params import ParamLayout, parse_params
from .pool import BufferPool
from .tensor import (DTYPES, Tensor, pack_int8_rows, round_size, tensor_nbytes,
                     unpack_int8_rows)
from .upload_ring import UploadRing

__all__ = ["FLUSH_EVERY", "WG_MAX", "Context", "DeviceError", "Kernel", "grid_for",
           "describe_adapter", "is_cpu_adapter",
           "ParamLayout", "parse_params", "BufferPool", "DTYPES", "Tensor", "pack_int8_rows",
           "round_size", "tensor_nbytes", "unpack_int8_rows", "UploadRing"]
