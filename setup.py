"""Packaging for megatron_meml.

The top-level ``kernels/`` folder is installed under the import name ``meml_kernels`` so it can never clash
with the unrelated PyPI package ``kernels``.

Dependency ranges hold on both machine kinds:
  * CPU dev / CI: Python 3.11, torch 2.13 (CPU build), megatron-core 0.16.x
  * GPU image:    Python 3.12, torch 2.11 (CUDA), megatron-core 0.19.x, triton 3.6
"""
from setuptools import find_packages, setup

core = [
    "torch>=2.6",
    "megatron-core>=0.16.0,<0.20",
    "numpy",
    "packaging",
    "pyyaml>=6",
    "tqdm",
    "tiktoken>=0.7",
    "regex",
    "math-verify>=0.7",
]
extras = {
    "test": [
        "pytest>=8",
        "pytest-timeout",
        "triton>=3.2",          # kernels run under TRITON_INTERPRET=1 on CPU
        "tensorboard",
        "matplotlib",
        "safetensors",
        "transformers>=4.45",   # HF checkpoint conversion checks and the rollout benchmark baseline
    ],
    "gpu": [
        "triton>=3.2",
        "liger-kernel",          # benchmark comparison only
        # transformer-engine, apex and flash-attn come with the NGC image (see Dockerfile); optional imports.
    ],
    "quickstart": ["tensorboard", "matplotlib"],  # the run directory's TensorBoard events and reward plot
    "logging": ["tensorboard", "matplotlib", "wandb"],
    # data.loader=dali (pre-tokenized MEF shards through an NVIDIA DALI pipeline); the CUDA 12 wheel also runs the
    # CPU pipelines the loader uses. Not part of `test`: the DALI tests skip with the reason where it is missing.
    "dali": ["nvidia-dali-cuda120"],
}

setup(
    name="megatron_meml",
    version="0.1.0",
    description="MEML-GRPO (multi-expert mutual learning for RLVR) on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_meml", "megatron_meml.*"])
    + ["meml_kernels"] + ["meml_kernels." + p for p in find_packages("kernels")],
    package_dir={"meml_kernels": "kernels"},
    install_requires=core,
    extras_require=extras,
    entry_points={"console_scripts": ["meml-train=megatron_meml.train:main"]},
)
