"""The user documentation stays usable: every relative link in README.md, docs/, benchmarks/ and kernels/README.md
points at a file of the checkout, the README stays short, and README / docs carry no dated results (those live in
benchmarks/<topic>_<hardware>_<yyyymmdd>.md, which the docs link)."""
import glob
import os
import re

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
HISTORY = re.compile(r"this round|earlier round|tried and dropped|\bowed\b", re.IGNORECASE)


def _doc_files(*patterns):
    return sorted(p for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def test_relative_links_resolve():
    bad = []
    for path in _doc_files("README.md", "docs/*.md", "benchmarks/*.md", "kernels/README.md"):
        for target in LINK.findall(open(path, encoding="utf-8").read()):
            if re.match(r"[a-z]+://", target) or target.startswith(("#", "mailto:")):
                continue
            file = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
            if not os.path.exists(file):
                bad.append(f"{os.path.relpath(path, ROOT)}: {target}")
    assert not bad, "links to missing files:\n" + "\n".join(bad)


def test_readme_is_short():
    n = len(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines())
    assert n <= 180, f"README.md has {n} lines; user documentation goes to docs/<topic>.md"


def test_readme_and_docs_hold_no_dated_results():
    bad = []
    for path in _doc_files("README.md", "docs/*.md"):
        # links to dated benchmark files are how the docs cite numbers: drop them before looking
        text = re.sub(r"benchmarks/[\w.-]+\.md", "", open(path, encoding="utf-8").read())
        for i, line in enumerate(text.splitlines(), 1):
            if DATE.search(line) or HISTORY.search(line):
                bad.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not bad, "dates or history in user docs (move them to benchmarks/):\n" + "\n".join(bad)


def test_benchmark_files_are_named_by_topic_hardware_date():
    names = [os.path.basename(p) for p in _doc_files("benchmarks/*.md")]
    bad = [n for n in names if n != "README.md" and not re.fullmatch(r"[a-z0-9_]+_[a-z0-9]+_20\d{6}\.md", n)]
    assert not bad, f"benchmarks/ files must be <topic>_<hardware>_<yyyymmdd>.md: {bad}"
    index = open(os.path.join(ROOT, "benchmarks", "README.md"), encoding="utf-8").read()
    missing = [n for n in names if n != "README.md" and n not in index]
    assert not missing, f"benchmarks/README.md does not list {missing}"
