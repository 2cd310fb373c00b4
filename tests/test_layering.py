"""Layering rules that import-linter cannot state, and a check that its contracts see the installed layout.

Rule: a module never uses another module's private (`_name`) names: it neither imports them
(`from fwpkm_rag.x import _name`, `from .x import _name`, also inside functions) nor reaches them through a
module it imported (`import fwpkm_rag.x as X; X._name`). What two modules share is public in one of them.
The contracts themselves (layers, no cycles, a LangChain-free core) live in pyproject's [tool.importlinter]
and run in `make test` (make lint).
"""
from __future__ import annotations

import ast
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lint_imports import PACKAGE, ROOT, install_roots, lint_imports


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class SourceModule:
    name: str  # dotted import name, e.g. fwpkm_rag.pipelines.index
    path: Path
    shown: str  # the path relative to the repo, for messages
    is_package: bool  # an __init__.py: relative imports resolve against the module itself


def project_modules(root: Path = ROOT) -> list[SourceModule]:
    """Every module of the distribution, named as installed (memory/core.py -> fwpkm_rag.memory.core)."""
    found = []
    for folder, package in install_roots(root).items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts:
                continue
            parts = [*package.split("."), *rel.parts[:-1]]
            if rel.name != "__init__.py":
                parts.append(rel.stem)
            found.append(SourceModule(".".join(parts), path, str(path.relative_to(root)), rel.name == "__init__.py"))
    return found


def resolve(module: SourceModule, node: ast.ImportFrom) -> str:
    """The absolute name of the module a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_uses(module: SourceModule, known_modules: set[str]) -> list[str]:
    """`module`'s uses of other project modules' private names, as 'file:line: what'."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    where = module.shown
    found = []
    aliases: dict[str, str] = {}  # local name -> the project module it is bound to
    for node in ast.walk(tree):  # every depth: function-level (lazy) imports count too
        if isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                # a private module is its package's own: the package and modules inside it may import it
                # (import-linter's private_modules contract holds that rule for every import form)
                own_private_module = target in known_modules and module.name.startswith(source + ".")
                if is_private(alias.name) and source != module.name and not own_private_module:
                    found.append(f"{where}:{node.lineno}: imports {alias.name} from {source}")
                elif target in known_modules:
                    aliases[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known_modules and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and is_private(node.attr) and aliases[node.value.id] != module.name):
            found.append(f"{where}:{node.lineno}: uses {node.attr} of {aliases[node.value.id]}")
    return found


def all_private_uses(root: Path = ROOT) -> list[str]:
    modules = project_modules(root)
    known = {m.name for m in modules}
    return [use for m in modules for use in private_uses(m, known)]


def test_no_module_uses_another_modules_private_names():
    offenders = all_private_uses()
    assert not offenders, "private names used across modules (make them public where they are defined):\n" + \
        "\n".join(offenders)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_private_use_scan_finds_every_form(tmp_path):
    """The scan on a made-up tree: each way of reaching a private name is reported, legitimate ones are not."""
    write(tmp_path / PACKAGE / "__init__.py", "from fwpkm_rag.util import helper\n")
    write(tmp_path / PACKAGE / "util.py", "def helper(): pass\ndef _hidden(): pass\n__version__ = '1'\n")
    write(tmp_path / PACKAGE / "sub" / "__init__.py", "from ._impl import run\n")  # public name of a private module
    write(tmp_path / PACKAGE / "sub" / "_impl.py", "def run(): _own()\ndef _own(): pass\n")
    write(tmp_path / PACKAGE / "sub" / "user.py",
          "from fwpkm_rag.util import _hidden, __version__\n"  # absolute, private: reported (line 1)
          "from ..util import helper\n"                          # relative, public: fine
          "def lazy():\n"
          "    from ..util import _hidden as h\n"                # lazy and relative: reported (line 4)
          "    from . import _impl\n"                            # a private module of its own package: fine
          "    return h, _impl.run\n")
    write(tmp_path / "memory" / "__init__.py", "")
    write(tmp_path / "memory" / "core.py",
          "import fwpkm_rag.util as U\n"
          "from fwpkm_rag import util\n"
          "import torch\n"
          "x = U._hidden, util._hidden, torch._C, util.helper\n")  # two reported (line 4), torch is not ours
    assert sorted(all_private_uses(tmp_path)) == [
        "fwpkm_rag/sub/user.py:1: imports _hidden from fwpkm_rag.util",
        "fwpkm_rag/sub/user.py:4: imports _hidden from fwpkm_rag.util",
        "memory/core.py:4: uses _hidden of fwpkm_rag.util",  # through U
        "memory/core.py:4: uses _hidden of fwpkm_rag.util",  # through util
    ]


def test_contracts_see_modules_installed_from_outside_fwpkm_rag(tmp_path):
    """memory/ lies outside fwpkm_rag/ on disk: an upward import from it must still break the layers contract
    (it would not, were lint-imports run on the bare tree). A copy of the repo's package folders gets one
    memory module that imports the RAG core."""
    for folder in install_roots():
        if folder.name == "memory":
            shutil.copytree(folder, tmp_path / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.symlink(folder, tmp_path / folder.name)
    os.symlink(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    write(tmp_path / "memory" / "upward.py", "def f():\n    from fwpkm_rag.pipelines import retrieval\n")
    done = lint_imports(["--contract", "layers"], root=tmp_path, capture=True)
    report = done.stdout + done.stderr
    assert done.returncode != 0, report
    assert "fwpkm_rag.memory.upward -> fwpkm_rag.pipelines.retrieval" in report, report


def test_test_module_basenames_are_unique():
    """pytest imports test files by basename (no __init__.py, rootdir mode): two test_x.py in different folders
    make one of them fail to collect."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], names
