"""A fresh install stays usable from the checkout's root:

* the Hugging Face package ``kernels`` (transformers imports it) is not shadowed by our top-level ``kernels/``
  folder: from the root, ``import kernels`` finds the installed package and ``transformers.integrations.hub_kernels``
  imports; a tiny HF model converts with ``python -m megatron_meml.convert_hf`` and ``python -m megatron_meml.train`` starts from it
  with ``model.init_from_hf`` (one MEF step);
* the lock pins every package (``==``) and agrees with setup.py's ranges, which agree with the start-up check;
* an installed version outside the supported range stops an entry point with one line and exit code 2.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

from ..convert import tiny_hf

QUICKSTART = os.path.join(ROOT, "examples", "quickstart", "config.yaml")


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH="")  # as a user's shell: only the checkout's root (cwd) is added by python
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, **kw)


def test_hf_kernels_package_is_not_shadowed_from_the_root():
    r = _run([sys.executable, "-c", "import kernels, transformers.integrations.hub_kernels as h, meml_kernels; "
                                    "print(kernels.__file__); print(meml_kernels.__file__)"])
    assert r.returncode == 0, r.stderr
    hf_file, ours = r.stdout.split()
    assert not os.path.abspath(hf_file).startswith(os.path.join(ROOT, "kernels")), hf_file
    assert "site-packages" in hf_file
    assert os.path.abspath(ours).startswith(os.path.join(ROOT, "kernels", "meml_kernels"))
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py")), "kernels/ must not be a package"


def test_convert_and_train_from_hf_at_the_root(tmp_path):
    hf = tmp_path / "hf"
    tiny_hf.qwen2(str(hf), vocab_size=259, max_position_embeddings=256)  # the byte tokenizer's vocabulary
    r = _run([sys.executable, "-m", "megatron_meml.convert_hf", "import", "--hf-dir", str(hf), "--out",
              str(tmp_path / "ckpt")])
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "ckpt" / "meml_ckpt.json")
    run_dir = tmp_path / "run"
    r = _run([sys.executable, "-m", "megatron_meml.train", QUICKSTART, f"model.init_from_hf={hf}",
              "model.hidden_size=64", "model.ffn_hidden_size=96", "model.num_query_groups=2",
              "mef.max_steps=1", "riel.enabled=false", "eval.enabled=false", "logging.progress_bar=false",
              "logging.tensorboard=false", f"logging.run_dir={run_dir}", "data.synthetic.num_train=64",
              "data.micro_batch_size=8", "data.global_batch_size=8"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["mef_steps"] == 1 and summary["mef_loss_start"] > 0


def _lock():
    pins = {}
    for line in open(os.path.join(ROOT, "requirements", "cpu.txt")):
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements/cpu.txt: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def test_lock_pins_everything_and_agrees_with_the_ranges():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from megatron_meml.versions import SUPPORTED

    pins = _lock()
    assert pins["torch"].endswith("+cpu") and "kernels" in pins and "transformers" in pins
    setup_py = open(os.path.join(ROOT, "setup.py")).read()
    for dist, (spec, _) in SUPPORTED.items():
        assert f'"{dist}{spec}"' in setup_py, f"setup.py and megatron_meml/versions.py disagree on {dist}"
        assert Version(Version(pins[dist]).public) in SpecifierSet(spec), (dist, pins[dist], spec)


@pytest.mark.skipif(os.environ.get("MEML_UNLOCKED_VENV") == "1",
                    reason="make test-latest: this venv holds the newest versions the ranges allow, not the lock's")
def test_venv_has_the_locked_versions():
    """What this venv has is what the lock says (`make install` installs the lock)."""
    from importlib import metadata

    pins = _lock()
    for dist in ("torch", "megatron-core", "triton", "transformers", "numpy", "kernels"):
        assert metadata.version(dist) == pins[dist], dist


def test_unsupported_version_is_one_line_with_the_fix():
    from megatron_meml.versions import problems

    assert problems(found={"torch": "2.13.0+cpu", "megatron-core": "0.16.1", "triton": None,
                           "transformers": "5.25.0"}) == []
    bad = problems(found={"torch": "2.13.0", "megatron-core": "0.16.1", "triton": "3.9.0", "transformers": "6.0.0"})
    assert bad == ["transformers 6.0.0 is installed but megatron_meml supports transformers>=4.45,<6: run `make "
                   "install` (installs the pinned versions of requirements/cpu.txt into .venv), or `pip install -c "
                   "requirements/cpu.txt -e .` in your own environment"]
    assert re.match(r"megatron-core is not installed", problems(found={"megatron-core": None, "torch": "2.13"})[0])


@pytest.mark.parametrize("entry", [["-m", "megatron_meml.train", QUICKSTART],
                                   ["-m", "megatron_meml.convert_hf", "random", "--config", "x", "--out", "y"]])
def test_entry_points_stop_on_an_unsupported_version(entry, tmp_path):
    """A fake newer transformers (a dist-info with version 6.0.0 first on the path) stops the entry in one line."""
    fake = tmp_path / "site"
    info = fake / "transformers-6.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 6.0.0\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    r = subprocess.run([sys.executable, *entry], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: transformers 6.0.0 is installed but megatron_meml "
                                                   "supports transformers>=4.45,<6: run `make install`"), lines
