"""Rollout: generation on the training weights and the RIEL step's microbatch scheduling.

engine.py           the GenerationEngine protocol, SamplingParams, the log-prob convention
sampling.py         per-request reproducible sampling (inverse CDF, top-k / top-p)
megatron_engine.py  the megatron-core KV-cache engine (TP / PP), its no-cache twin
packing.py          training sequences -> aggregation weights -> token-balanced microbatches per DP rank
scheduler.py        RielScheduler: questions -> rollouts -> rewards -> groups / KL / SFT -> microbatches
"""
