"""The distribution installs memory/, kernels/, pipelines/ and benchmarks/ only under fwpkm_rag, with every
package folder of the tree, and `import fwpkm_rag` stays light."""
import subprocess
import sys
import zipfile
from pathlib import PurePosixPath

import pytest
from lightimport import assert_import_light
from lint_imports import ROOT, install_roots, source_packages


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    (wheel,) = out.glob("fwpkm_rag-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_wheel_maps_subpackages_under_fwpkm_rag(wheel_names):
    # PyPI has unrelated top-level `kernels` (used by transformers), `memory` and `pipelines`: never ship those
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fwpkm_rag"}, tops
    for module in ("memory/core.py", "memory/naive.py", "kernels/__init__.py", "pipelines/__init__.py", "cli.py",
                   "benchmarks/__init__.py", "data/needles.py", "training/loop.py"):
        assert f"fwpkm_rag/{module}" in wheel_names, module
    # the shipped checkpoint is package data: load_default_model() reads it offline
    for data in ("default_model/config.json", "default_model/model.safetensors"):
        assert f"fwpkm_rag/{data}" in wheel_names, data


def test_wheel_holds_every_package_folder_of_the_tree(wheel_names):
    """A package folder that pyproject's `packages` list forgets is silently left out of the wheel: compare
    the tree's package folders (memory/ -> fwpkm_rag/memory/, ...) and their modules with the wheel's."""
    in_source = source_packages()
    in_wheel = {".".join(PurePosixPath(n).parent.parts) for n in wheel_names if n.endswith("/__init__.py")}
    assert set(in_source) <= in_wheel, f"package folders missing from the wheel: {sorted(set(in_source) - in_wheel)}"
    assert in_wheel <= set(in_source), f"packages in the wheel without a source folder: {sorted(in_wheel - set(in_source))}"
    # every module under a top package folder, also one in a subfolder that lacks its __init__.py
    missing = [
        str(source.relative_to(ROOT))
        for folder, package in install_roots().items()
        for source in sorted(folder.rglob("*.py"))
        if "__pycache__" not in source.parts
        and str(PurePosixPath(*package.split("."), *source.relative_to(folder).parts)) not in wheel_names
    ]
    assert not missing, ("modules of the tree missing from the wheel (a folder without __init__.py, or a "
                         f"package missing from pyproject's packages list): {missing}")


def test_import_is_light():
    assert_import_light("fwpkm_rag", then="fwpkm_rag.FwPKMConfig()")


def test_light_import_check_sees_what_first_use_loads():
    # the check is not vacuous: the lazy model class brings transformers in, and the helper says so
    with pytest.raises(AssertionError, match="pulled in transformers"):
        assert_import_light("fwpkm_rag", then="fwpkm_rag.FwPKMForCausalLM")


def test_public_names():
    import fwpkm_rag
    from fwpkm_rag.memory import FwPKM, MemoryState, fwpkm_forward

    assert fwpkm_rag.FwPKM is FwPKM and fwpkm_rag.MemoryState is MemoryState
    assert fwpkm_rag.fwpkm_forward is fwpkm_forward
    assert fwpkm_rag.get_tokenizer().vocab_size > 8192


def test_cli_demo_and_quick_memory_bench(tmp_path):
    cli = [sys.executable, "-m", "fwpkm_rag.cli"]
    demo = subprocess.run(cli + ["demo", "--tokens", "3000", "--facts", "2", "--distractors", "1", "--no-baseline",
                                 "--threads", "1"], check=True, capture_output=True, text=True)
    assert "gold chunk in the top 3" in demo.stdout and "FwPKM" in demo.stdout
    bench = subprocess.run(cli + ["bench", "memory", "--quick", "--threads", "1", "--out", str(tmp_path)],
                           check=True, capture_output=True, text=True)
    assert (tmp_path / "memory_bench.json").exists() and (tmp_path / "memory_bench.md").exists()
    assert "µs / token" in bench.stdout
    missing = subprocess.run(cli + ["ingest"], capture_output=True, text=True)
    assert missing.returncode == 2 and "PATH" in missing.stderr  # argparse names the missing argument
