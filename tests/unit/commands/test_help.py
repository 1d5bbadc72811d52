"""Every package command has ``main(argv=None) -> int``, answers ``--help`` with its usage, and runs as
``python -m megatron_meml.<cmd>``; the console scripts in setup.py point at such mains."""
import importlib
import inspect
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS = ["ablate", "build_mef_data", "collect_teacher_traces", "convert_hf", "expert_overlap", "launch",
            "plan_scaling", "prepare_data", "pretokenize", "scaling_study", "verifier_audit",
            "bench.rollout", "bench.vs_trl", "bench.kernels", "bench.fused_output", "bench.riel_packing",
            "bench.async_riel", "bench.attention",
            "gpu.check", "gpu.train_check", "gpu.rollout_check", "gpu.scale_check", "gpu.output_bench"]


@pytest.mark.parametrize("name", COMMANDS)
def test_main_answers_help(name, capsys):
    mod = importlib.import_module(f"megatron_meml.{name}")
    params = inspect.signature(mod.main).parameters
    assert list(params) == ["argv"] and params["argv"].default is None
    assert "sys.exit(main())" in inspect.getsource(mod), "python -m must exit with main()'s code"
    with pytest.raises(SystemExit) as exc:
        mod.main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_python_dash_m_runs_a_command():
    r = subprocess.run([sys.executable, "-m", "megatron_meml.plan_scaling", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--model" in r.stdout, r.stderr


def test_console_scripts_point_at_command_mains():
    setup = open(f"{ROOT}/setup.py").read()
    scripts = dict(re.findall(r'"(meml-[\w-]+)=(megatron_meml\.[\w.]+:main)"', setup))
    assert set(scripts) == {"meml-train", "meml-convert-hf", "meml-plan", "meml-ablate", "meml-launch"}
    for target in scripts.values():
        module = target.split(":")[0]
        assert callable(importlib.import_module(module).main), target
