"""The "import stays light" check, written once: import modules in a fresh interpreter, see what came along.

A test process has long since imported torch, transformers, langchain..., so only a new interpreter can tell
what an import pulls in.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable

# What `import fwpkm_rag` must never load (torch is fine): the kernels' compiler, the HF stack, LangChain, Ray,
# the baselines' stacks, and the tokenizer's BPE (loaded on first get_tokenizer()).
HEAVY = (
    "triton", "transformers", "langchain", "langchain_core", "langchain_text_splitters", "ray",
    "sentence_transformers", "faiss", "tiktoken",
)


def fresh_modules(code: str, timeout: float = 120) -> set[str]:
    """Run `code` in a new interpreter (same venv) and return the names in its sys.modules afterwards."""
    script = f"{code}\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"fresh interpreter failed on:\n{code}\n{done.stderr}"
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], forbidden: Iterable[str]) -> list[str]:
    """The forbidden top-level names present in `modules` (a submodule counts for its top-level package)."""
    tops = {name.split(".")[0] for name in modules}
    return sorted(set(forbidden) & tops)


def assert_import_light(*modules: str, forbidden: Iterable[str] = HEAVY, then: str = "") -> None:
    """Fail unless importing `modules` (then running `then`, e.g. building a config) in a fresh interpreter
    leaves every name of `forbidden` out of sys.modules."""
    code = "".join(f"import {m}\n" for m in modules) + then
    heavy = loaded(fresh_modules(code), forbidden)
    assert not heavy, f"importing {', '.join(modules)} pulled in {', '.join(heavy)}"
