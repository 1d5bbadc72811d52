"""The versions of the libraries this stack is built on that it supports, checked before a run starts.

``SUPPORTED`` holds the same ranges as ``setup.py`` (a test keeps the two in step). Entry points call
:func:`require_supported` first: a version outside its range (say a newer transformers pulled in by an unpinned
install, or an image's older megatron-core) then stops the run at once with one line naming the package, the found
and the supported versions and the fix, exit code 2, instead of an ImportError or a silent numerical change deep in
a run. Only the installed distributions' metadata are read: nothing is imported, so the check costs milliseconds.

Packages that are optional for a run (transformers, triton) are checked only where installed; torch and
megatron-core must be there.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

#: distribution name -> (specifier, required). Keep in step with setup.py (tests/unit/test_versions.py checks).
SUPPORTED: dict[str, tuple[str, bool]] = {
    "torch": (">=2.6,<2.15", True),
    "megatron-core": (">=0.16.0,<0.20", True),
    "triton": (">=3.2,<4", False),
    "transformers": (">=4.45,<6", False),
}

FIX = "run `make install` (installs the pinned versions of requirements/cpu.txt into .venv), or " \
      "`pip install -c requirements/cpu.txt -e .` in your own environment"


class UnsupportedVersion(RuntimeError):
    """An installed library outside the range this stack supports; the message is one line."""


def installed_version(dist: str) -> Version | None:
    """The installed version of distribution ``dist`` (local labels such as ``+cpu`` dropped), or None."""
    try:
        raw = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    try:
        return Version(Version(raw).public)
    except InvalidVersion:
        return None


def problems(packages: dict[str, tuple[str, bool]] | None = None,
             found: dict[str, str | None] | None = None) -> list[str]:
    """One line per package outside its supported range (or required and missing); ``[]`` when all hold.

    ``found`` overrides the installed versions (``{dist: "1.2.3" | None}``), for tests."""
    out = []
    for dist, (spec, required) in (packages or SUPPORTED).items():
        if found is not None and dist in found:
            v = None if found[dist] is None else Version(Version(found[dist]).public)
        else:
            v = installed_version(dist)
        if v is None:
            if required:
                out.append(f"{dist} is not installed (megatron_meml supports {dist}{spec}): {FIX}")
            continue
        if v not in SpecifierSet(spec):
            out.append(f"{dist} {v} is installed but megatron_meml supports {dist}{spec}: {FIX}")
    return out


def check(packages: dict[str, tuple[str, bool]] | None = None) -> None:
    """Raise :class:`UnsupportedVersion` naming the first package outside its range."""
    bad = problems(packages)
    if bad:
        raise UnsupportedVersion(bad[0])


def require_supported(packages: dict[str, tuple[str, bool]] | None = None) -> None:
    """For entry points: print ``error: <one line>`` on stderr and exit 2 when a version is unsupported.

    ``MEML_SKIP_VERSION_CHECK=1`` turns the check off (for trying a new release on purpose)."""
    if os.environ.get("MEML_SKIP_VERSION_CHECK") == "1":
        return
    bad = problems(packages)
    if bad:
        print(f"error: {bad[0]} (MEML_SKIP_VERSION_CHECK=1 runs anyway)", file=sys.stderr, flush=True)
        sys.exit(2)
