"""Expert registry: inline and @file prompts, clear errors, single-expert ablation, the paper example config."""
import os

import pytest

from megatron_meml.config.loader import load_config
from megatron_meml.config.schema import ConfigError, ExpertsConfig
from megatron_meml.data import load_expert_prompts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_inline_and_file_prompts(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "r1.txt").write_text("  Think long.\n\n")
    cfg = ExpertsConfig(prompts=["Reference style.", "@prompts/r1.txt", f"@{tmp_path / 'prompts' / 'r1.txt'}"])
    assert load_expert_prompts(cfg, str(tmp_path)) == ["Reference style.", "Think long.", "Think long."]


def test_missing_file_names_the_key(tmp_path):
    cfg = ExpertsConfig(prompts=["a", "b", "@nope.txt"])
    with pytest.raises(ConfigError, match=r"experts\.prompts\[2\].*nope\.txt"):
        load_expert_prompts(cfg, str(tmp_path))


def test_empty_prompt_and_empty_file_are_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match=r"experts\.prompts\[1\].*empty"):
        load_expert_prompts(ExpertsConfig(prompts=["a", "@empty.txt"]), str(tmp_path))
    with pytest.raises(ConfigError, match=r"experts\.prompts\[0\].*empty"):
        load_expert_prompts(ExpertsConfig(prompts=["  "]), str(tmp_path))


def test_single_expert_keeps_expert_zero():
    cfg = ExpertsConfig(prompts=["zero", "one", "two"], single_expert=True)
    assert load_expert_prompts(cfg) == ["zero"]


def test_paper_example_config():
    path = os.path.join(REPO, "examples", "experts", "paper_three_experts.yaml")
    cfg = load_config(path)
    prompts = load_expert_prompts(cfg.experts, os.path.dirname(path))
    assert len(prompts) == 4 and "reference solution" in prompts[0]
    for prompt, style in zip(prompts[1:], ("DeepSeek-R1", "GPT-4o", "Doubao")):
        assert style in prompt and "The answer is" in prompt
