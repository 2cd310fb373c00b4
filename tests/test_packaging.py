"""The distribution installs memory/, kernels/ and pipelines/ only under fwpkm_rag, and `import fwpkm_rag`
stays light."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_subpackages_under_fwpkm_rag(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("fwpkm_rag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fwpkm_rag"}, tops
    for module in ("memory/core.py", "memory/naive.py", "kernels/torch_ops.py", "pipelines/__init__.py", "cli.py",
                   "modeling/model.py", "data/needles.py", "training/loop.py"):
        assert f"fwpkm_rag/{module}" in names, module


def test_import_is_light():
    code = (
        "import sys, fwpkm_rag; fwpkm_rag.FwPKMConfig(); "
        "heavy = [m for m in ('triton', 'transformers', 'langchain_core', 'sentence_transformers', 'faiss', 'tiktoken')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "", f"import fwpkm_rag pulled in {out}"


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
