"""The code passes ruff (lint, import order, format), so the README's test command checks style too."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "jft", "tests", "configs", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_ruff_check_is_clean():
    result = _ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_installed_by_a_plain_pip_install():
    """pyproject.toml names the packages setuptools installs: a package missing there would be
    missing from `pip install jft` (an editable install would hide it)."""
    import tomllib

    named = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "jft").rglob("__init__.py")}
    assert packages <= named, packages - named


def test_ruff_format_is_clean():
    result = _ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
