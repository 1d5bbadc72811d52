"""megatron_meml: MEML-GRPO on megatron-core."""
__version__ = "0.1.0"
