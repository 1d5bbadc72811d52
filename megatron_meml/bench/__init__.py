"""Benchmarks, run as ``python -m megatron_meml.bench.<name>``; every comparison times through :mod:`.harness`."""
