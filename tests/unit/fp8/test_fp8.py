"""precision.fp8 -> megatron-core's FP8 settings (delayed scaling through Transformer Engine): the mapping, that
megatron-core's TransformerConfig accepts it, that FP8 demands bf16, and the one-line error without TE."""
import subprocess
import sys

import pytest

from megatron_meml.backend.runtime import compat
from megatron_meml.config import ConfigError, load_config
from tests.conftest import ROOT

QUICK = "examples/quickstart/config.yaml"
WITHOUT_TE = pytest.mark.skipif(compat.have_te(), reason="Transformer Engine imports here; this checks the error "
                                                         "on machines where it does not")


def cfg(*overrides):
    return load_config(f"{ROOT}/{QUICK}", list(overrides))


@pytest.mark.parametrize("recipe", ["hybrid", "e4m3"])
def test_fp8_kwargs_map_every_field(recipe):
    c = cfg("precision.dtype=bf16", f"precision.fp8={recipe}", "precision.fp8_margin=1",
            "precision.fp8_amax_history_len=16", "precision.fp8_amax_compute_algo=most_recent")
    assert compat.fp8_kwargs(c.precision) == {
        "fp8": recipe, "fp8_recipe": "delayed", "fp8_margin": 1, "fp8_amax_history_len": 16,
        "fp8_amax_compute_algo": "most_recent"}


def test_fp8_off_adds_nothing():
    assert compat.fp8_kwargs(cfg().precision) == {}
    assert compat.fp8_kwargs(cfg("precision.dtype=bf16").precision) == {}


@pytest.mark.parametrize("recipe", ["hybrid", "e4m3"])
def test_megatron_transformer_config_accepts_the_fp8_fields(recipe):
    """The TransformerConfig we build carries the FP8 settings (megatron-core validates them in __post_init__)."""
    from megatron_meml.backend.train.model import transformer_config

    t = transformer_config(cfg("precision.dtype=bf16", f"precision.fp8={recipe}", "precision.fp8_margin=2",
                               "precision.fp8_amax_history_len=32"))
    assert (t.fp8, t.fp8_recipe, t.fp8_margin, t.fp8_amax_history_len, t.fp8_amax_compute_algo) == \
        (recipe, "delayed", 2, 32, "max")
    assert t.bf16 and str(t.params_dtype) == "torch.bfloat16"
    off = transformer_config(cfg("precision.dtype=bf16"))
    assert off.fp8 is None


def test_optimizer_config_gets_the_fp8_recipe_where_it_has_the_field():
    from megatron.core.optimizer import OptimizerConfig

    kw = compat.filter_kwargs(OptimizerConfig, fp8_recipe="delayed")
    OptimizerConfig(optimizer="adam", lr=1e-3, bf16=True, **kw)  # accepted as filtered for this megatron-core


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_fp8_requires_bf16(dtype):
    with pytest.raises(ConfigError, match=r"precision\.fp8.*precision\.dtype=bf16"):
        cfg(f"precision.dtype={dtype}", "precision.fp8=hybrid")


def test_unknown_fp8_recipe_is_named():
    with pytest.raises(ConfigError, match=r"precision\.fp8"):
        cfg("precision.dtype=bf16", "precision.fp8=e5m2")


@WITHOUT_TE
def test_layer_spec_without_te_names_precision_fp8(monkeypatch):
    from megatron_meml.backend.train import model as M

    c = cfg("precision.dtype=bf16", "precision.fp8=hybrid")
    with pytest.raises(ConfigError, match=r"config key `precision\.fp8`: FP8 needs Transformer Engine"):
        M.layer_spec(c)
    with pytest.raises(ConfigError, match=r"precision\.fp8"):
        M.build_gpt(c, meta=True)


def test_layer_spec_when_te_reports_missing(monkeypatch):
    """Same error wherever TE does not import, forced here through compat.have_te."""
    from megatron_meml.backend.train import model as M

    monkeypatch.setattr(compat, "have_te", lambda: False)
    with pytest.raises(ConfigError, match=r"precision\.fp8"):
        M.layer_spec(cfg("precision.dtype=bf16", "precision.fp8=e4m3"))


@WITHOUT_TE
def test_training_entry_fails_in_one_line_without_te(tmp_path):
    r = subprocess.run([sys.executable, "-m", "megatron_meml.train", QUICK, "precision.dtype=bf16",
                        "precision.fp8=hybrid", f"logging.run_dir={tmp_path}/run", "logging.progress_bar=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config key `precision.fp8`: FP8 needs Transformer Engine"), r.stderr[-2000:]
