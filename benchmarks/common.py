"""What every benchmark shares, written once: the machine and commit a result was measured on, the interleaved
timer, result files, and the small helpers of the tables and plots.

Every benchmark module imports these public names; no benchmark imports another benchmark's private names.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Iterable, Optional, Sequence

# ----------------------------------------------------------------------------------------------------------
# where and with what a result was measured
# ----------------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine(threads: Optional[int] = None) -> str:
    """One line naming the machine: CPU, cores, the load average when the run started (the machine may be
    shared, and a loaded machine explains slow figures), and the torch threads the run used."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    line = f"{cpu_name()}, {os.cpu_count()} cores (load average {load:.2f} at start)"
    return line if threads is None else f"{line}, torch threads {threads}"


def commit() -> str:
    """The short commit of the code this run imports, '+ uncommitted changes' when the working tree differs
    from it, or 'unknown' outside a git checkout (an installed wheel)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + (" + uncommitted changes" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_logger(wall0: float) -> Callable[[str], None]:
    """A benchmark's progress printer: each line prefixed with the seconds since `wall0`, flushed at once."""

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - wall0:7.1f} s] {msg}", flush=True)

    return log


def checkpoint_fingerprint(model_path: Optional[str] = None) -> str:
    """'; model.safetensors sha256 <12 hex>, written <UTC time>' of a checkpoint folder (the shipped model when
    None), or '' without one: the shipped model is retrained in place, so a result must name its weights."""
    from fwpkm_rag.default_model import DEFAULT_MODEL_DIR
    from fwpkm_rag.fingerprint import sha256_file

    path = os.path.join(model_path or DEFAULT_MODEL_DIR, "model.safetensors")
    if not os.path.exists(path):
        return ""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(path)))
    return f"; model.safetensors sha256 {sha256_file(path)[:12]}, written {stamp}"


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------


def _rss_status(field: str) -> Optional[int]:
    """A byte count from /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> Optional[int]:
    """Hand freed heap back to the OS (glibc malloc_trim), reset the kernel's peak-RSS mark (Linux
    clear_refs 5) and return the current RSS in bytes: the peak above it is what the next call allocates."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _rss_status("VmRSS")
    except OSError:
        return None


def peak_bytes(fn: Callable[[], object], device) -> Optional[int]:
    """Peak memory growth of one call of fn, in bytes (CUDA: max_memory_allocated above the start; CPU: peak
    RSS above the start, via /proc, after handing freed heap back to the OS; None where neither is known)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start_mem
    start_mem = _reset_peak_rss()
    fn()
    hwm = _rss_status("VmHWM")
    return None if start_mem is None or hwm is None else max(0, hwm - start_mem)


def measure(fns: Sequence[Callable[[], object]], repeats: int, device) -> list[tuple[float, Optional[int]]]:
    """(median seconds, peak bytes) per function. The functions run interleaved (a, b, a, b, ...) after one
    warm-up each, so a load change on a shared machine hits a fast op and its baseline alike."""
    import torch

    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), peak_bytes(fn, device)) for t, fn in zip(times, fns)]


# ----------------------------------------------------------------------------------------------------------
# result files
# ----------------------------------------------------------------------------------------------------------


def write_json(out_dir: str, name: str, data, *, indent: int = 2) -> str:
    """`data` as JSON in out_dir/name (folder created); objects JSON does not know are written as str."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=indent, default=str)
    return path


def write_final(out_dir: str, stem: str, res: dict, report) -> str:
    """The end of a resumable run: `res` as stem.json (replacing the stem.partial.json written as parts finished),
    `report(res)` as stem.md, printed; returns the markdown."""
    write_json(out_dir, f"{stem}.json", res, indent=1)
    partial = os.path.join(out_dir, f"{stem}.partial.json")
    if os.path.exists(partial):
        os.remove(partial)
    md = report(res)
    write_text(out_dir, f"{stem}.md", md)
    print(md)
    return md


def write_text(out_dir: str, name: str, text: str) -> str:
    """`text` plus a final newline in out_dir/name (folder created)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as fh:
        fh.write(text + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------
# table and plot helpers
# ----------------------------------------------------------------------------------------------------------


def percent(flags: Iterable) -> str:
    """'NN%' of the true values among `flags`, or '–' when there are none."""
    flags = list(flags)
    return f"{100 * sum(flags) / len(flags):.0f}%" if flags else "–"


def mean(xs: Iterable, default=None):
    """Arithmetic mean, or `default` for no values (None in tables; plots pass nan to leave a gap)."""
    xs = list(xs)
    return sum(xs) / len(xs) if xs else default


def quantile(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1, in steps of 0.01) by linear interpolation between order statistics."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(round(q * 100)) - 1]


def nearest_rank(xs: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) as the order statistic at index floor(p/100 * n), no interpolation; nan for
    no values."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def rank_of(hits: Sequence[int], gold: set) -> Optional[int]:
    """1-based rank of the first hit in `gold`, or None when no hit is."""
    for r, i in enumerate(hits, 1):
        if i in gold:
            return r
    return None


def klabel(tokens: int) -> str:
    """A token count as a short label: 1024 -> '1K', 1048576 -> '1M', 2000 -> '2K'."""
    if tokens >= 1_000_000:
        return f"{tokens / 1_048_576:.0f}M" if tokens % 1_048_576 == 0 else f"{tokens / 1e6:.1f}M"
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else f"{tokens / 1000:.0f}K"


# One colour per retrieval system in every plot. FwPKM is drawn last and on top: where systems tie, lines
# overlap and the one under would vanish.
STYLE = {"fwpkm": dict(color="tab:red", lw=2.4, zorder=5, marker="s"), "bm25": dict(color="tab:blue", lw=3.5, alpha=0.6),
         "minilm-faiss-flat": dict(color="tab:green"), "minilm-faiss-hnsw": dict(color="tab:olive", ls=":"),
         "minilm-inmemory": dict(color="tab:cyan", ls="--"), "minilm-chroma": dict(color="tab:purple", ls="-.")}


def style(system: str) -> dict:
    """matplotlib keyword arguments of a system's line (empty for a system without its own style)."""
    return dict(STYLE.get(system, {}))

