"""Can a wgpu-py program use tensor cores? Probe wgpu's `cooperative-matrix` native feature.

Prints (and writes as JSON) the wgpu-py / wgpu-native versions, whether the adapter lists
`cooperative-matrix`, the fields of wgpu-native's `WGPUDeviceExtras` (the only place a C caller
could pass device-creation options, e.g. wgpu's `ExperimentalFeatures` opt-in), and the exact
outcome of requesting a device with the feature, then of compiling a WGSL shader that uses a
cooperative matrix when a device was created.

    python benchmarks/cooperative_matrix.py [--out PATH]

Source of the feature: wgpu-native's wgpu.h, `WGPUNativeFeature_CooperativeMatrix`
("EXPERIMENTAL ... only supports 8x8 f32 matrices").
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import out_path, parser, write_json  # noqa: E402

FEATURE = "cooperative-matrix"
# WGSL of wgpu's cooperative-matrix extension (naga's `coop_mat8x8<f32, A>` types); only
# compiled when a device with the feature exists.
SHADER = """
enable wgpu_cooperative_matrix;
@group(0) @binding(0) var<storage, read_write> buf: array<f32>;
@compute @workgroup_size(64)
fn main() {
    let a = coopLoad<coop_mat8x8<f32, A>>(&buf[0], 8u);
    let b = coopLoad<coop_mat8x8<f32, B>>(&buf[64], 8u);
    var c = coopLoad<coop_mat8x8<f32, C>>(&buf[128], 8u);
    c = coopMultiplyAdd(a, b, c);
    coopStore(c, &buf[128], 8u);
}
"""


def main() -> None:
    ap = parser("cooperative_matrix", __doc__.splitlines()[0])
    args = ap.parse_args()
    import wgpu
    from wgpu.backends.wgpu_native import ffi
    res: dict = {"wgpu_py": wgpu.__version__}
    try:
        from wgpu.backends.wgpu_native import lib
        res["wgpu_native"] = hex(lib.wgpuGetVersion())
    except Exception as e:  # older builds: version not exported
        res["wgpu_native"] = f"unknown ({e})"
    res["device_extras_fields"] = [f for f, _ in ffi.typeof("WGPUDeviceExtras").fields]
    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    res["adapter"] = {k: adapter.info.get(k) for k in ("device", "backend_type", "adapter_type")}
    res["adapter_lists_feature"] = FEATURE in adapter.features
    try:
        dev = adapter.request_device_sync(required_features=[FEATURE])
        res["request_device"] = "ok"
    except Exception as e:
        dev = None
        res["request_device"] = f"{type(e).__name__}: {e}"
    if dev is not None:
        try:
            dev.create_shader_module(code=SHADER)
            res["shader"] = "compiled"
        except Exception as e:
            res["shader"] = f"{type(e).__name__}: {e}"
    for k, v in res.items():
        print(f"{k}: {v}")
    write_json(out_path("cooperative_matrix", args.out), res)


if __name__ == "__main__":
    main()
