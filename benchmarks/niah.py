"""`fwpkm-rag bench niah`: needle-in-a-haystack recall of a FwPKM model, answering from its memory.

RULER-style items (fwpkm_rag.data.needles, *bench* templates and keys, never used in training) in natural
text haystacks: a gold needle at a depth, 0/4/16 same-template distractor needles with other keys, a
question. The haystack streams once (or n times, spec §9) through the model, writing its memory chunk by
chunk; the memory is flushed; then the prompt

    <haystack>\\n\\nQuestion: <question>\\nAnswer: <the needle's words before its value>

is read with the memory frozen and the answer generated greedily (`pipelines.generation.stream_generate`, the
decode loop of every answer path; it ends at eos or any special token). Exact match: the generated text starts
with the value. The ablation runs the same with every memory write off ("frozen"): the attention window alone
cannot reach the needle, so it must fall to chance.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from fwpkm_rag.benchmarks.common import commit, machine, write_json, write_text
from fwpkm_rag.pipelines.generation import stream_generate

LENGTHS = (1024, 4096, 16384, 32768, 65536, 131072)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DISTRACTORS = (0, 4, 16)


@dataclass
class NIAHResult:
    length: int
    depth: float
    distractors: int
    template: str
    answer: str
    generated: str
    correct: bool
    frozen: bool
    passes: int
    ingest_tokens_per_s: float


def answer_prompt(item) -> str:
    prefix = item.needle[: item.needle.index(item.answer)].rstrip()
    return f"\n\nQuestion: {item.question}\nAnswer: {prefix}"


@torch.no_grad()
def ask_from_memory(model, tokenizer, text: str, prompt: str, *, max_new_tokens: int, frozen: bool = False,
                    passes: int = 1, piece: int = 4096) -> tuple[str, float]:
    """Stream `text` through a fresh memory (`passes` times), flush, then greedily complete `prompt` with the
    memory frozen, through the library's one decode loop (`stream_generate`).

    Returns (generated text, ingest tokens/s)."""
    ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(text)])
    cache = model.init_cache(1)
    start = time.perf_counter()
    for _ in range(passes):
        for i in range(0, ids.shape[1], piece):
            model(ids[:, i : i + piece], cache=cache, read_only=frozen, logits_to_keep=1)
    if not frozen:
        model.flush_memory(cache)
    rate = passes * ids.shape[1] / (time.perf_counter() - start)
    answer = "".join(stream_generate(model, cache, tokenizer.encode(prompt), read_only=True,
                                     max_new_tokens=max_new_tokens))
    return answer, rate


def is_correct(generated: str, answer: str) -> bool:
    return generated.strip().startswith(answer.strip())


def run_item(model, tokenizer, length, depth, distractors, *, seed, frozen=False, passes=1) -> NIAHResult:
    from fwpkm_rag.data.needles import make_item

    item = make_item(length, depth, distractors, split="bench", seed=seed, tokenizer=tokenizer)
    budget = len(tokenizer.encode(" " + item.answer)) + 2
    generated, rate = ask_from_memory(model, tokenizer, item.text, answer_prompt(item), max_new_tokens=budget,
                                      frozen=frozen, passes=passes)
    return NIAHResult(length, depth, distractors, item.template, item.answer, generated,
                      is_correct(generated, item.answer), frozen, passes, rate)


def run_niah_bench(model=None, out_dir: str = "results/niah", quick: bool = False, threads: int = 2,
                   passes: int = 1, lengths=None, seeds: int = 1) -> int:
    from tqdm import tqdm

    from fwpkm_rag import load_default_model

    torch.set_num_threads(threads)
    model = model or load_default_model()
    tokenizer = model.get_tokenizer()
    lengths = tuple(lengths) if lengths else ((1024, 4096) if quick else LENGTHS)
    depths = (0.25, 0.75) if quick else DEPTHS
    distractors = (0, 4) if quick else DISTRACTORS
    os.makedirs(out_dir, exist_ok=True)
    grid = [(L, d, n, s, fz) for L in lengths for d in depths for n in distractors for s in range(seeds)
            for fz in (False, True)]
    results = []
    start = time.perf_counter()
    for L, d, n, s, fz in tqdm(grid, desc="niah"):
        seed = 1000 * s + int(100 * d) + 7 * n + L
        results.append(run_item(model, tokenizer, L, d, n, seed=seed, frozen=fz, passes=passes))
    wall = time.perf_counter() - start
    meta = dict(machine=machine(threads), commit=commit(), threads=threads, torch=torch.__version__, passes=passes,
                quick=quick, wall_s=wall, model=getattr(model.config, "_name_or_path", ""))
    write_json(out_dir, "niah.json", dict(meta=meta, results=[asdict(r) for r in results]))
    table = niah_table(results, lengths, distractors)
    write_text(out_dir, "niah.md", table)
    print(table)
    print(f"wall time {wall:.0f} s")
    plot_niah(results, lengths, depths, distractors, os.path.join(out_dir, "niah_heatmap.png"))
    return 0


def _acc(rows) -> str:
    return f"{100 * sum(r.correct for r in rows) / len(rows):.0f}%" if rows else "-"


def niah_table(results, lengths, distractors) -> str:
    head = "| memory | distractors | " + " | ".join(f"{L // 1024}K" for L in lengths) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(lengths)]
    for frozen in (False, True):
        for n in distractors:
            cells = [_acc([r for r in results if r.frozen == frozen and r.distractors == n and _bucket(r, lengths) == L])
                     for L in lengths]
            lines.append(f"| {'frozen' if frozen else 'written'} | {n} | " + " | ".join(cells) + " |")
    rate = [r.ingest_tokens_per_s for r in results if not r.frozen and r.length == max(x.length for x in results)]
    if rate:
        lines.append(f"\ningest (memory written) at the longest length: {sorted(rate)[len(rate) // 2]:,.0f} tokens/s (median)")
    return "\n".join(lines)


def _bucket(result, lengths) -> int:
    """The requested length an item belongs to (its actual token count differs by a few tokens)."""
    return min(lengths, key=lambda L: abs(L - result.length))


def plot_niah(results, lengths, depths, distractors, path: str) -> None:
    from fwpkm_rag.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(distractors) + 1, figsize=(4 * (len(distractors) + 1), 3.2), squeeze=False)
    panels = [(n, False) for n in distractors] + [(None, True)]
    for col, (ax, (n, frozen)) in enumerate(zip(axes[0], panels)):
        grid = torch.full((len(depths), len(lengths)), float("nan"))
        for i, d in enumerate(depths):
            for j, L in enumerate(lengths):
                rows = [r for r in results if r.frozen == frozen and r.depth == d and _bucket(r, lengths) == L
                        and (n is None or r.distractors == n)]
                if rows:
                    grid[i, j] = 100 * sum(r.correct for r in rows) / len(rows)
        im = ax.imshow(grid.numpy(), vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{L // 1024}K" for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
        ax.set_xlabel("haystack tokens")
        if col == 0:  # shared by the row; repeated labels overlap the neighbouring panel
            ax.set_ylabel("needle depth")
        ax.set_title(f"{n} distractors" if not frozen else "memory frozen (all)")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if not torch.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="exact match %")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"heatmap: {path}")
