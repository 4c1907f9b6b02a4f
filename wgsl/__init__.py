"""WGSL shader sources, shipped inside the wheel; loaded by bitswarm.kernels.registry."""
