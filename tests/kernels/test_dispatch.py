"""The impl= rule shared by every op (meml_kernels._dispatch.resolve_impl)."""
import pytest
import torch

from meml_kernels._dispatch import resolve_impl


def test_cpu_defaults_to_the_torch_twin_and_triton_needs_the_interpreter(monkeypatch):
    x = torch.zeros(3)
    assert resolve_impl("auto", x) == "torch"          # CPU tensors: the package default is the twin
    assert resolve_impl("torch", x) == "torch"
    assert resolve_impl("triton", x, None) == "triton"  # TRITON_INTERPRET=1 here (conftest / make test)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_impl("triton", x)
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("fast", x)
