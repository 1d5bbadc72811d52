"""The only part of the package that imports megatron-core (a hygiene test enforces it), in four rooms:

  ``runtime/``  process groups and the parallel layout, the CPU runtime, library compatibility, hosts, memory
  ``train/``    the GPT model and its attention / output layer, model state, optimizer, forward-backward
  ``infer/``    forward-only passes and the decode-slot model of the generation engines, the vLLM weight refit
  ``ckpt/``     training checkpoints (atomic, checksummed, resumable) and Hugging Face conversion

The algorithm code (``algo/``, ``rollout/``, ``stages/``) calls these functions with plain tensors and config.
"""
