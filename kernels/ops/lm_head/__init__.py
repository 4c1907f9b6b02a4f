"""The lm_head op family: shaders, NumPy reference (reference.py) and GPU launcher (gpu.py)."""
