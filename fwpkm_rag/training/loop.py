"""The training loop: `fwpkm-rag train --preset tiny`.

Trains through the memory updates (each sequence has its own isolated memory; the LM loss back-propagates
through every unrolled write). Seeded and resumable; CPU by default, CUDA when present, several GPUs through
torchrun (DDP, one process per GPU). Writes checkpoints (transformers safetensors + config; optimizer state
in safetensors, no pickle), a JSON log and a loss-curve PNG.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from fwpkm_rag.training.data import Stage
from fwpkm_rag.training.recipes import recipe, warm_start_source


@dataclass
class TrainConfig:
    preset: str = "tiny"
    out_dir: str = "runs/tiny"
    seed: int = 0
    lr: Optional[float] = None  # None: the recipe's (fwpkm_rag.training.recipes)
    warmup: int = 30
    weight_decay: float = 0.01
    clip: float = 1.0
    max_steps: Optional[int] = None  # stop early (smoke runs); None = the whole curriculum
    stage_steps: Optional[tuple] = None  # override the steps of each curriculum stage
    log_every: int = 10
    save_every: int = 100
    threads: int = 1
    resume: bool = True
    recall_init: bool = True
    warm_start: Optional[str] = None  # a warm-starting recipe's source folder (None: the shipped default, hash-checked)
    backbone: Optional[str] = None  # train FwPKM attached to this frozen backbone ("smollm2"; docs/backbone.md)
    backbone_layers: Optional[tuple] = None  # its FwPKM layers (default: attach.default_layers)
    # the backbone's attention window while training (default: the memory's chunk size). Spec §9: a model that
    # attends over the whole episode learns to ignore its memory; a short window makes far facts reachable only
    # through it. Saved with the FwPKM weights (the window the model was trained for).
    backbone_window: Optional[int] = None


def _dist():
    """(rank, world, device) under torchrun, else (0, 1, cuda-or-cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        rank = dist.get_rank()
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return rank, world, device
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(preset: str, recall_init: bool = True, seed: int = 0, warm_start: Optional[str] = None):
    """The starting model of training preset `preset`: warm-started from its pinned source checkpoint when the
    recipe has one (`warm_start` overrides the folder), else fresh with the recall-ready init."""
    from fwpkm_rag.modeling.config import FwPKMModelConfig
    from fwpkm_rag.modeling.model import FwPKMForCausalLM
    from fwpkm_rag.training.init import recall_ready_init

    rec = recipe(preset)
    torch.manual_seed(seed)
    model = FwPKMForCausalLM(FwPKMModelConfig.preset(rec.model_preset))
    if rec.warm_start_sha256:
        from fwpkm_rag.training.warm_start import warm_start as copy_from

        copy_from(model, FwPKMForCausalLM.from_pretrained(warm_start_source(rec, warm_start)))
        if rec.match_rows_from is not None:
            from fwpkm_rag.training.warm_start import match_new_row_norms

            match_new_row_norms(model, rec.match_rows_from)
    elif recall_init and rec.recall_init:
        recall_ready_init(model, layer=model.config.fwpkm_layers[0], seed=seed)
    return model


def build_attached(name: str, layers=None, seed: int = 0):
    """A frozen backbone with FwPKM attached (only the FwPKM weights train): "smollm2", or
    "tiny-random-llama" (a 2-layer random Llama with the project tokenizer: the CPU smoke test's stand-in)."""
    from fwpkm_rag.memory.config import FwPKMConfig
    from fwpkm_rag.modeling.attach import attach_fwpkm
    from fwpkm_rag.modeling.attached import AttachedFwPKMModel

    torch.manual_seed(seed)
    if name == "tiny-random-llama":
        from fwpkm_rag.backbone import tiny_random_llama

        backbone, tok = tiny_random_llama(seed)
        attach_fwpkm(backbone, layers if layers else [1],
                     FwPKMConfig(n_subkeys=32, k_dim=32, v_dim=32, topk=4, chunk_size=64, q_conv=4))
        return AttachedFwPKMModel(backbone, tok, name=name)
    return AttachedFwPKMModel.from_backbone(name, layers=list(layers) if layers else None)


def _resume_attached(name: str, ckpt: str, seed: int = 0):
    from fwpkm_rag.modeling.attached import AttachedFwPKMModel

    if name == "tiny-random-llama":
        from fwpkm_rag.backbone import tiny_random_llama

        backbone, tok = tiny_random_llama(seed)
        return AttachedFwPKMModel.load(ckpt, backbone=backbone, tokenizer=tok)
    return AttachedFwPKMModel.load(ckpt)


def weighted_lm_loss(model, ids: torch.Tensor, weights: torch.Tensor, return_memory: bool = False):
    """Next-token cross-entropy at the scored positions only (the tied head over 8K tokens is the costliest
    matmul of a step, so unscored positions are never projected). Returns (loss, answer_loss, output)."""
    out = model(ids, use_cache=False, output_hidden_states=True, logits_to_keep=1, return_memory=return_memory)
    hidden = out.hidden_states[:, :-1]  # (B, T-1, d), already final-normed
    target, w = ids[:, 1:], weights[:, 1:]
    sel = w > 0
    logits = model.lm_head(hidden[sel])  # (S, vocab)
    ce = F.cross_entropy(logits.float(), target[sel], reduction="none")
    loss = (ce * w[sel]).sum() / w[sel].sum().clamp_min(1)
    answers = w[sel] > 1
    answer_loss = ce[answers].mean() if answers.any() else ce.new_tensor(float("nan"))
    return loss, answer_loss, out


def gate_separation_loss(memory_reads, roles: torch.Tensor) -> torch.Tensor:
    """Balanced binary cross-entropy of every FwPKM layer's write gate (g_t itself unless the layer has a separate
    write gate, FwPKMConfig.write_gate) against "is a fact token" (roles == 1) on
    fact and filler (roles == 0) tokens; other tokens (questions, answers: roles == 2) are free, since reading
    there needs an open gate. Why: g_t scales both the read and the write of token t (spec §5-6); filler that
    writes at g ≈ 0.6 overwrites facts in long haystacks (v1: 0.63 fact vs 0.58 filler at layer 0), and the
    LM loss alone did not separate them in v1's budget. Balanced (mean over facts + mean over filler) so the
    rare facts weigh as much as the filler. Layer 0's gate sees only the token itself (its input is the
    embedding), so there a shared gate can learn only which tokens tend to be facts; later layers, and a
    separate write gate (it also reads the conv'd query), see context."""
    fact, filler = roles == 1, roles == 0
    total = roles.new_zeros((), dtype=torch.float32)
    if not fact.any() or not filler.any():
        return total
    for _, _, gate in memory_reads:  # gate (B, T)
        g = gate.float().clamp(1e-6, 1 - 1e-6)
        total = total - 0.5 * (torch.log(g[fact]).mean() + torch.log1p(-g[filler]).mean())
    return total / len(memory_reads)


def _optimizer(model, cfg: TrainConfig):
    # Weights new to a warm-started model (the recipe's `fast_params`) learn at lr_scale x the schedule.
    rec = recipe(cfg.preset)
    fast = lambda name: any(part in name for part in rec.fast_params)  # noqa: E731
    groups = []
    for is_fast in (False, True):
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and fast(n) == is_fast]
        scale = rec.fast_lr_scale if is_fast else 1.0
        for decays in (True, False):
            chosen = [p for n, p in params if (p.dim() >= 2) == decays]
            if chosen:
                groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decays else 0.0, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=_peak_lr(cfg), betas=(0.9, 0.95))


def _peak_lr(cfg: TrainConfig) -> float:
    return cfg.lr if cfg.lr is not None else recipe(cfg.preset).lr


def _cosine(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine from lr to lr/10 at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    lr = _peak_lr(cfg)
    replan = recipe(cfg.preset).lr_replan
    if replan is None or cfg.stage_steps is not None:
        return _cosine(step, total, lr, cfg.warmup)
    # The run was planned for `planned` steps and re-planned at step `at` (longer): until `at` the first plan,
    # then a cosine from the lr reached at `at` down to lr/10 at the new end. Continuous, and a function of
    # the step only, so a rerun or a resume sees exactly the run's learning rates.
    at, planned = replan
    if step < at:
        return _cosine(step, planned, lr, cfg.warmup)
    start = _cosine(at, planned, lr, cfg.warmup)
    progress = min(1.0, (step - at) / max(1, total - at))
    return 0.1 * lr + (start - 0.1 * lr) * 0.5 * (1 + math.cos(math.pi * progress))


def _save_optimizer(opt, path: str) -> None:
    from safetensors.torch import save_file

    state = opt.state_dict()
    tensors, meta = {}, {"param_groups": json.dumps([{k: v for k, v in g.items()} for g in state["param_groups"]])}
    for pid, st in state["state"].items():
        for name, value in st.items():
            tensors[f"{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, path, metadata=meta)


def _load_optimizer(opt, path: str) -> None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        groups = json.loads(fh.metadata()["param_groups"])
        state: dict = {}
        for key in fh.keys():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = fh.get_tensor(key)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _schedule(cfg: TrainConfig) -> list[Stage]:
    stages = list(recipe(cfg.preset).curriculum)
    if cfg.stage_steps is not None:
        stages = [replace(s, steps=n) for s, n in zip(stages, cfg.stage_steps)]
    return stages


def _stage_at(stages: list[Stage], step: int) -> Stage:
    for s in stages:
        if step < s.steps:
            return s
        step -= s.steps
    return stages[-1]


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) the curriculum; returns the final log record."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    rank, world, device = _dist()
    stages = _schedule(cfg)
    total = sum(s.steps for s in stages)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt = os.path.join(cfg.out_dir, "checkpoint")
    log_path = os.path.join(cfg.out_dir, "log.jsonl")

    step, history = 0, []
    if cfg.resume and os.path.exists(os.path.join(ckpt, "trainer_state.json")):
        from fwpkm_rag.modeling.model import FwPKMForCausalLM

        model = _resume_attached(cfg.backbone, ckpt, cfg.seed) if cfg.backbone else FwPKMForCausalLM.from_pretrained(ckpt)
        trainer_state = json.load(open(os.path.join(ckpt, "trainer_state.json")))
        step = trainer_state["step"]
        if os.path.exists(log_path):
            history = [json.loads(line) for line in open(log_path)]
    elif cfg.backbone:
        model = build_attached(cfg.backbone, cfg.backbone_layers, cfg.seed)
    else:
        model = build_model(cfg.preset, cfg.recall_init, cfg.seed, cfg.warm_start)
    if cfg.backbone:
        model.window = model.config.window = cfg.backbone_window or model.config.fwpkm_config.chunk_size
    model.to(device).train()
    opt = _optimizer(model, cfg)
    if step and os.path.exists(os.path.join(ckpt, "optimizer.safetensors")):
        _load_optimizer(opt, os.path.join(ckpt, "optimizer.safetensors"))
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # Each step's batch is a function of (seed, rank, step): resuming needs no data state.
    maker = recipe(cfg.preset).episodes(model.get_tokenizer(), seed=cfg.seed * 1000 + rank)
    gate_aux = recipe(cfg.preset).gate_aux
    random.seed(cfg.seed + step)
    torch.manual_seed(cfg.seed + step)

    bar = tqdm(total=total, initial=step, disable=rank != 0, desc="train", unit="step")
    tokens_seen, t0 = 0, time.perf_counter()
    record: dict = {}
    while step < total:
        stage = _stage_at(stages, step)
        ids, weights, is_fact = (x.to(device) for x in maker.batch(stage, step))
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, cfg) * group.get("lr_scale", 1.0)
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == total
        loss, answer_loss, out = weighted_lm_loss(wrapped.module if world > 1 else model, ids, weights,
                                                  return_memory=log_now or gate_aux > 0)
        aux = gate_separation_loss(out.memory_reads, is_fact) if gate_aux > 0 else None
        opt.zero_grad(set_to_none=True)
        (loss + gate_aux * aux if aux is not None else loss).backward()
        if world > 1:
            for p in model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        tokens_seen += ids.numel() * world
        rate = tokens_seen / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", ans=f"{answer_loss.item():.3f}", tok_s=f"{rate:,.0f}", stage=stage.name[0])
        if log_now and rank == 0:
            record = {"step": step, "stage": stage.name, "loss": loss.item(), "answer_loss": answer_loss.item(),
                      "grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"], "tokens_per_s": rate,
                      "time": time.time()}
            if aux is not None:
                record["gate_aux"] = aux.item()
            # token roles: 0 filler, 1 fact (v1's data gives bool is_fact: False == 0, True == 1)
            for i, (slots, w, gate) in enumerate(out.memory_reads):
                fact, filler = is_fact == 1, is_fact == 0
                record[f"gate{i}_filler"] = gate[filler].mean().item()
                record[f"gate{i}_fact"] = gate[fact].mean().item() if fact.any() else float("nan")
            history.append(record)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if rank == 0 and (step % cfg.save_every == 0 or step == total):
            save_checkpoint(model, opt, ckpt, step, cfg)
            plot_losses(history, os.path.join(cfg.out_dir, "loss.png"))
            if step == total and recipe(cfg.preset).model_preset in ("tiny-v2", "tiny-v3"):
                from fwpkm_rag.training.export import save_compact

                save_compact(model, os.path.join(cfg.out_dir, "model-fp16"))  # the shippable copy (<= 30 MB)
    bar.close()
    return record


def save_checkpoint(model, opt, path: str, step: int, cfg: TrainConfig) -> None:
    """Model (safetensors + config), optimizer (safetensors) and step, written to a temp folder then renamed."""
    import shutil

    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _save_optimizer(opt, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "trainer_state.json"), "w") as fh:
        json.dump({"step": step, "config": asdict(cfg)}, fh, indent=2, default=list)
    old = path + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def plot_losses(history: list, path: str) -> None:
    from fwpkm_rag.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return
    if not history:
        return
    steps = [r["step"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [r["loss"] for r in history], label="weighted loss")
    ax1.plot(steps, [r["answer_loss"] for r in history], label="answer-token loss")
    ax1.set_xlabel("step")
    ax1.set_yscale("log")
    ax1.legend()
    for key in sorted(k for k in history[-1] if k.startswith("gate")):
        ax2.plot(steps, [r.get(key, float("nan")) for r in history], label=key)
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean gate")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def answer_accuracy(model, batches, *, read_only: bool = False) -> float:
    """Teacher-forced accuracy on answer-value tokens (loss weight > 1) of the given (ids, weights, _) batches.

    With read_only=True every memory write is off: answers sit beyond the attention window, so this is the
    memory-frozen ablation."""
    hit = total = 0
    for ids, weights, _ in batches:
        logits = model(ids, use_cache=False, read_only=read_only).logits  # (B, T, vocab)
        pred = logits[:, :-1].argmax(-1)
        sel = weights[:, 1:] > 1
        hit += int((pred[sel] == ids[:, 1:][sel]).sum())
        total += int(sel.sum())
    return hit / max(total, 1)
