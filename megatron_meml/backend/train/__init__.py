"""Training: the megatron-core GPT model built from the config (``model.py``) with its SDPA attention
(``attention.py``) and fused output layer (``output_layer.py``, ``logprobs.py``), the layout-invariant full state
dict (``state.py``), the distributed optimizer (``optimizer.py``), and one forward-backward over typed microbatches
through megatron's pipeline schedules (``step.py``, per-term gradient norms in ``term_grads.py``)."""
