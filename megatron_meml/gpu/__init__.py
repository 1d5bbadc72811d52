"""The GPU checks: ``python -m megatron_meml.gpu.check`` runs the others as steps (``tools/gpu_check.sh`` calls it)."""
