"""Stand-in for vLLM's compiled op library on a machine whose torch does not match vLLM's wheel.

setup_device.sh installs this file as `vllm/_C_stable_libtorch.py`, so `import
vllm._C_stable_libtorch` succeeds without the .so. It wraps the `torch.ops` namespaces vLLM's
compiled code would fill: an op that exists is returned as is; a capability query ("...support...")
answers False, so vLLM takes its torch-native or Triton path; an activation op that layers bind in
their constructor (and never call once `custom_ops` is `none`) is a function that raises if called;
any other op is absent (AttributeError), as `hasattr` checks expect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

NAMESPACES = ("_C", "_C_cache_ops", "_C_custom_ar", "_moe_C", "_C_utils")
# layers keep a handle to these at construction time; forward_native never calls it
_BOUND_AT_INIT = re.compile(r"silu|gelu|relu|swiglu|_mul$")


def _answer_false(*_: Any, **__: Any) -> bool:
    return False


def _strong_ref(t: torch.Tensor) -> torch.Tensor:
    """`weak_ref_tensor` (vLLM's CUDA-graph wrapper keeps its graphs' outputs through it): the
    compiled op returns a view that does not own the storage; here the tensor itself, which keeps
    the graph pool's output alive a little longer (more memory, same values). The H200 run of
    2026-12-03 stopped at this op; with this stand-in capture has not run yet."""
    return t


# compiled ops with a torch-level stand-in (same results)
_STAND_INS: dict[str, Callable[..., Any]] = {"weak_ref_tensor": _strong_ref}


def _absent_op(namespace: str, op: str) -> Callable[..., Any]:
    def call(*_: Any, **__: Any) -> Any:
        raise NotImplementedError(f"torch.ops.{namespace}.{op} is compiled vLLM code, absent here")

    return call


class AbsentOps:
    """One `torch.ops` namespace: real ops first, then the stand-ins above."""

    def __init__(self, namespace: str, real: Any) -> None:
        self._namespace = namespace
        self._real = real

    def __getattr__(self, op: str) -> Any:
        try:
            return getattr(self._real, op)
        except (AttributeError, RuntimeError):
            pass
        if op in _STAND_INS:
            return _STAND_INS[op]
        if "support" in op:
            return _answer_false
        if _BOUND_AT_INIT.search(op):
            return _absent_op(self._namespace, op)
        raise AttributeError(f"torch.ops.{self._namespace}.{op} is compiled vLLM code, absent here")


for _ns in NAMESPACES:
    if not isinstance(getattr(torch.ops, _ns), AbsentOps):  # idempotent: a second import changes nothing
        setattr(torch.ops, _ns, AbsentOps(_ns, getattr(torch.ops, _ns)))
