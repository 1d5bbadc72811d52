"""Converting a random Qwen2.5-1.5B-shaped model (shapes from shared/data/tokenizers/qwen2.5/config.json, 1.54B
parameters, 6.2 GB in fp32, written tensor by tensor as 6 HF shards + index) with ``python -m megatron_meml.convert_hf
import``
keeps the peak RSS of the converter process under 1.5x the model's fp32 size (measured ~1.1 GB, i.e. ~0.19x: the
largest full tensor, the 151936 x 1536 embedding, is what stays resident). ~75 s and ~13 GB of disk."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_meml.backend.ckpt import checkpoint_io as io
from megatron_meml.backend.ckpt import hf_convert as H

from ...conftest import DATA

CONFIG = os.path.join(DATA, "tokenizers", "qwen2.5", "config.json")
MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


@pytest.mark.slow
def test_import_of_qwen25_15b_streams(tmp_path):
    if shutil.disk_usage(tmp_path).free < 14e9:
        pytest.skip(f"needs ~14 GB free under {tmp_path} for two fp32 copies of a 1.5B model")
    hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
    n_params = H.write_random_hf(CONFIG, hf_dir, torch.float32, seed=0)
    assert 1.5e9 < n_params < 1.6e9 and os.path.isfile(os.path.join(hf_dir, "model.safetensors.index.json"))
    fp32_bytes = 4 * n_params
    r = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "megatron_meml.convert_hf",
                        "import", "--hf-dir", hf_dir, "--out", ckpt, "--tp", "1", "--pp", "1"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    peak = int(r.stdout.split("peak_rss_kb")[-1]) * 1024
    print(f"peak RSS {peak / 1e9:.2f} GB = {peak / fp32_bytes:.3f} x fp32 size {fp32_bytes / 1e9:.2f} GB")
    assert peak < 1.5 * fp32_bytes
    # the streamed shard is right: spot-check the embedding and a merged qkv against the HF files
    meta = io.read_meta(ckpt)
    assert meta.padded_vocab_size == 151936 and meta.model["rotary_base"] == 1e6 and meta.model["tie_word_embeddings"]
    hf = H.HFCheckpoint(hf_dir)
    shard = os.path.join(ckpt, io.shard_file(0, 0))
    for name in ("embedding.word_embeddings.weight", "decoder.layers.27.self_attention.linear_qkv.bias",
                 "decoder.layers.13.self_attention.linear_qkv.weight"):
        assert torch.equal(io.read_tensor(shard, name), hf.megatron_tensor(name, 151936)), name
    assert json.load(open(os.path.join(ckpt, "hf_config.json")))["hidden_size"] == 1536
