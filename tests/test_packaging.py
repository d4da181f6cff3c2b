"""What an install from the wheel or sdist gets: the declared dependencies (pyproject.toml), the files the sdist
carries (MANIFEST.in), the version. Read from the files, nothing built (a build takes minutes)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_version_option_prints_the_package_version(capsys):
    import unime
    from unime.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"unime {unime.__version__}\n"


def test_installed_version_is_the_package_version():
    """The wheel's metadata takes its version from `unime.__version__`: one number, never two."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in data["project"] and "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "unime.__version__"}


def requirement_names(requirements: list[str]) -> dict[str, str]:
    """{name: the whole requirement} of requirement strings ("torch", "trl>=1.0", "ray[data]>=2")."""
    import re

    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower(): r for r in requirements}


def test_torch_and_torchvision_are_required_unpinned():
    """A plain install needs both (a Qwen-VL processor needs torchvision); unpinned, so that the pair the install
    step puts first (constraints.txt) is kept."""
    deps = requirement_names(project()["dependencies"])
    assert deps["torch"] == "torch" and deps["torchvision"] == "torchvision"


def test_the_demo_pretraining_needs_no_extra():
    """`unime models pretrain` (its default captioning stage: TRL's SFT trainer on a `datasets.Dataset`) and so
    `unime demo` run on a plain install (before: No module named 'trl' after 22 s, without the [rl] extra)."""
    from unime.demo.pretrain import PretrainRecipe

    assert PretrainRecipe().caption_steps > 0  # the default preset captions, with TRL
    deps = requirement_names(project()["dependencies"])
    assert {"trl", "datasets"} <= set(deps)


def sdist_template_files() -> set[str]:
    """The repository's files that MANIFEST.in adds to the sdist (setuptools' own reading of the template; the package
    and the files setuptools always takes come on top)."""
    import os

    from setuptools._distutils.filelist import FileList

    files = FileList()
    files.allfiles = sorted(str(Path(d, f).relative_to(ROOT)) for d, dirs, names in os.walk(ROOT)
                            if not {".git", ".venv"} & set(Path(d).relative_to(ROOT).parts) for f in names)
    for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            files.process_template_line(line)
    return set(files.files)


def test_the_sdist_carries_the_docs_constraints_bench_and_the_whole_test_suite():
    """What --help, errors and the report name (docs/RECIPES.md, CONTRACTS.md ...), the pinned torch pair, the bench
    scripts the README runs, and every file of tests/ (before: six loose tests/test_*.py without their conftest or
    helpers, one importing the absent tests.eval.helpers)."""
    shipped = sdist_template_files()
    for name in ("docs/RECIPES.md", "docs/CONTRACTS.md", "docs/SOFT_LABELS.md", "docs/DEMO.md", "constraints.txt",
                 "Makefile", "bench/gpu_smoke.sh", "bench/judge_throughput.py", "tests/conftest.py",
                 "tests/eval/helpers.py", "tests/cli/cli_options_pinned.json"):
        assert name in shipped, name
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*") if p.is_file()
             and "__pycache__" not in p.parts}
    assert tests <= shipped, sorted(tests - shipped)[:5]
    assert not [f for f in shipped if f.endswith(".pyc")]
