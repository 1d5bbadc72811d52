"""megatron_meml.bench.riel_packing on a tiny step: the four packings give the same loss, and sharing / skipping really
reduce the padded tokens of the forward."""
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_riel_packing_variants_agree():
    out = subprocess.run([sys.executable, "-m", "megatron_meml.bench.riel_packing", "--questions", "2",
                          "--experts", "2", "--group", "4", "--prompt", "24", "--response", "4", "--zero-groups", "0.5",
                          "--repeats", "1", "--micro-tokens", "256", "--hidden", "32", "--ffn", "64"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {m.group(1): (int(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(flat\+skip|flat|shared\+skip|shared)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+(\S+)$",
                                 out.stdout, re.M)}
    assert set(rows) == {"flat", "flat+skip", "shared", "shared+skip"}, out.stdout
    losses = [loss for _, loss in rows.values()]
    assert max(losses) - min(losses) < 1e-5
    assert rows["shared+skip"][0] < rows["shared"][0] < rows["flat"][0]
    assert rows["flat+skip"][0] < rows["flat"][0]
    assert out.stdout.strip().splitlines()[-1].startswith("shared+skip / flat time: ")
