"""Triton kernels with plain-torch twins, installed as ``meml_kernels``. One subpackage per op."""
