# megatron_meml on an NGC PyTorch image: it ships CUDA, Transformer Engine (FP8), apex, flash-attn and DALI.
# Build:  docker build -t megatron_meml .
# Run:    docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#             -v /path/to/data:/data -v $PWD/runs:/workspace/megatron_meml/runs megatron_meml \
#             torchrun --nproc-per-node 8 -m megatron_meml.train examples/qwen2.5-1.5b-gsm8k/config.yaml data.path=/data
# (This image cannot be built on the project's CPU dev machines: there is no Docker engine there.)
FROM nvcr.io/nvidia/pytorch:25.09-py3

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    NCCL_ASYNC_ERROR_HANDLING=1

WORKDIR /workspace/megatron_meml
COPY setup.py pyproject.toml README.md ./
COPY requirements ./requirements
COPY megatron_meml ./megatron_meml
COPY kernels ./kernels
# Keep the image's torch / TE / apex / flash-attn: install only what the project adds, at the versions of the GPU lock
# (requirements/gpu.txt, Python 3.12: megatron-core 0.19, liger-kernel, transformers, ...), as constraints so that
# nothing the image ships is replaced.
RUN pip install --no-deps -c requirements/gpu.txt megatron-core \
 && pip install -c requirements/gpu.txt pyyaml tqdm tiktoken regex math-verify liger-kernel transformers safetensors \
 && pip install --no-deps -e .
COPY tools ./tools
COPY examples ./examples
COPY tests ./tests

# Sanity check at build time: the package and the kernels import (no GPU needed for this).
RUN python -c "import megatron_meml, meml_kernels, megatron.core; print('megatron_meml ready')"
CMD ["python", "-m", "megatron_meml.train", "--help"]
