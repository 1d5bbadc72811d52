"""Inference: forward-only passes and the DP helpers of the generation engines (``inference.py``), the KV-cache
decode-slot model of the continuous engine (``slot_model.py``), and the in-memory refit of vLLM from the Megatron
shards (``vllm_refit.py``)."""
