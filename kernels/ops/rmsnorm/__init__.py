"""The rmsnorm op family: shaders, NumPy reference (reference.py) and GPU launcher (gpu.py)."""
