"""Kernel tests run the Triton kernels on CPU through Triton's interpreter (set before any import
of triton.jit functions, which read it when they are decorated)."""

import os

os.environ["TRITON_INTERPRET"] = "1"
