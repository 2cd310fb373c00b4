"""Run import-linter over the package as it installs, not as it lies on disk.

memory/, kernels/, pipelines/ and benchmarks/ sit at the top of the repo and install as fwpkm_rag.memory, ...
(pyproject's package-dir). import-linter (grimp) finds a package's modules by walking the folder that
`find_spec("fwpkm_rag")` names, so from the repo it would see fwpkm_rag/ alone, and every contract about
memory, kernels, pipelines or benchmarks would check nothing (or fail as "module not found"). This script
stages the installed layout as a tree of symlinks in a temporary folder (fwpkm_rag/<entry> -> the repo's
fwpkm_rag/<entry>, fwpkm_rag/memory -> memory/, ...) and runs `lint-imports` there with the repo's pyproject:
lint-imports puts its working directory first on sys.path, so `fwpkm_rag` resolves to the staged tree.

    python tests/lint_imports.py [lint-imports options]      (`make test` runs it before pytest)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fwpkm_rag"
# Top-level folders that are never part of the distribution, whatever they contain.
NOT_PACKAGES = {"tests", "docs", "build", "dist"}


def install_roots(root: Path = ROOT) -> dict[Path, str]:
    """Top-level package folders of the tree -> the package they install as.

    The rule of the layout: fwpkm_rag/ installs as itself, and every other top-level package folder installs
    under fwpkm_rag (memory/ -> fwpkm_rag.memory). Read from the tree, not from pyproject, so that a folder
    pyproject forgets still shows up here (tests/test_packaging.py relies on that)."""
    return {
        d: PACKAGE if d.name == PACKAGE else f"{PACKAGE}.{d.name}"
        for d in sorted(root.iterdir())
        if d.is_dir() and (d / "__init__.py").is_file() and d.name not in NOT_PACKAGES
        and not d.name.startswith(".") and not d.name.endswith(".egg-info")
    }


def source_packages(root: Path = ROOT) -> dict[str, Path]:
    """Import name -> source folder of every package (a folder with __init__.py, below package folders only)."""
    found: dict[str, Path] = {}
    for top, base in install_roots(root).items():
        for init in sorted(top.rglob("__init__.py")):
            rel = init.parent.relative_to(top)
            # below a folder without __init__.py nothing is importable through the parent package
            if all((top / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(len(rel.parts))):
                found[".".join((base, *rel.parts))] = init.parent
    return found


def stage_tree(dest: Path, root: Path = ROOT) -> Path:
    """Build dest/fwpkm_rag as the installed package would look, with symlinks into the repo; return it."""
    staged = dest / PACKAGE
    staged.mkdir(parents=True)
    for entry in (root / PACKAGE).iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, staged / entry.name)
    for folder, name in install_roots(root).items():
        if name == PACKAGE:
            continue
        link = staged / name.split(".")[1]  # nested packages come with their top folder's symlink
        if link.exists():
            raise RuntimeError(f"{folder} and {root / PACKAGE / link.name} both claim {name}")
        os.symlink(folder, link)
    return staged


def lint_imports(args: list[str], root: Path = ROOT, capture: bool = False) -> subprocess.CompletedProcess:
    """Run the venv's lint-imports over a staged tree of `root`, with `root`'s pyproject; its output goes to
    our stdout/stderr, or into the result with `capture`."""
    exe = Path(sys.executable).with_name("lint-imports")  # the venv's own, beside its python
    if not exe.exists():
        raise SystemExit(f"{exe} not found: install the test extra (pip install -e '.[test]')")
    with tempfile.TemporaryDirectory(prefix="fwpkm-lint-") as tmp:
        stage_tree(Path(tmp), root)
        # --no-cache: the cache would be written into the throw-away folder anyway; the graph takes ~1 s.
        return subprocess.run([str(exe), "--no-cache", "--no-logo", *args, str(root / "pyproject.toml")], cwd=tmp,
                              capture_output=capture, text=True)


if __name__ == "__main__":
    sys.exit(lint_imports(sys.argv[1:]).returncode)
