"""What `fwpkm-rag train --preset NAME` runs: the model preset, its data and curriculum, its start.

    tiny     from scratch with the recall-ready init; 8 train templates; stages A/B (docs/model-card.md v1)
    tiny-v2  warm-started from the shipped v1 checkpoint (pinned by its sha256, fwpkm_rag.training.warm_start);
             32,768-rank tokenizer, n = 256; grammar facts with chained values; stages 1/2 (model-card v2)
    tiny-v3-norm  v3 with the new ranks' embedding rows scaled to the v1 rows' norm, then 600 more steps
             (warm-started from the v3 checkpoint, pinned; model-card "v3")
    tiny-v3  warm-started from the v2 checkpoint (pinned by its sha256): a separate write gate per FwPKM layer
             that sees the query's conv context; 4K episodes of the v2 grammar data (model-card v3)
    paper    the spec's sizes with the v1 data (a GPU recipe; never run here)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from fwpkm_rag.errors import ConfigError
from fwpkm_rag.fingerprint import sha256_file
from fwpkm_rag.training.data import (CURRICULUM, CURRICULUM_V2, CURRICULUM_V3, CURRICULUM_V3_NORM, ChainEpisodeMaker,
                                    EpisodeMaker)

# sha256 of fwpkm_rag/default_model/model.safetensors as shipped by `fwpkm-rag train --preset tiny` (v1):
# tiny-v2 starts from exactly this file, even after a later default replaces it.
V1_SHA256 = "14f7edc38e9a5de3b9a77d1d9641546231b43f68d38ab9652c3a803b19b6bbff"
# sha256 of runs/tiny-v2/checkpoint/model.safetensors (fp32) at the end of `fwpkm-rag train --preset tiny-v2`
V2_SHA256 = "ab16a4fb725a4faf8174009e4120a7d0f77d334a158bed5f6c204c16bd7e87e6"
# sha256 of runs/tiny-v3/checkpoint/model.safetensors (fp32) at the end of `fwpkm-rag train --preset tiny-v3`
V3_SHA256 = "f78bb224e71d3c9aeb983765bcb762ca9b0c056574cc887cd0a3450036d0cb91"
WRITE_GATE_PARAMS = (".w_ctx.", ".w_proj.", ".w_norm.")  # the separate write gate's weights (memory/layer.py)


@dataclass(frozen=True)
class Recipe:
    model_preset: str
    curriculum: tuple
    episodes: type  # EpisodeMaker or ChainEpisodeMaker
    lr: float  # peak learning rate (warm-up, then cosine to lr/10)
    recall_init: bool  # recall-ready init of layer 0 (runs from scratch only)
    warm_start_sha256: Optional[str] = None  # start from the checkpoint whose model.safetensors has this hash
    gate_aux: float = 0.0  # weight of loop.gate_separation_loss (0: off)
    lr_replan: Optional[tuple] = None  # (at, planned): the schedule assumed `planned` steps until step `at`
    fast_params: tuple = ()  # parameter-name parts of weights new to the warm start (learn at fast_lr_scale x)
    fast_lr_scale: float = 1.0
    warm_start_name: str = "the v1 default"  # what the pinned checkpoint is (for errors)
    warm_start_path: Optional[str] = None  # where it is by default (None: the shipped default model)
    match_rows_from: Optional[int] = None  # after the warm start, warm_start.match_new_row_norms(model, this)


RECIPES = {
    "tiny": Recipe("tiny", CURRICULUM, EpisodeMaker, lr=1e-3, recall_init=True),
    # warm start: a lower peak than from scratch, so the trained v1 weights are refined, not scrambled
    "tiny-v2": Recipe("tiny-v2", CURRICULUM_V2, ChainEpisodeMaker, lr=5e-4, recall_init=False,
                      warm_start_sha256=V1_SHA256, gate_aux=0.05,
                      # the run was launched as 500 + 900 steps; at step 640, once its speed on the reserved
                      # core was known (3.4 s per 4K step), stage 2 was lengthened to fill the session
                      lr_replan=(640, 1400)),
    # v3 refines v2: the only new weights are the write gates' (which start as v2's gate), so a lower peak.
    # The separation term now acts on the write gate alone (the output mix no longer pulls against it), so it
    # is 10x v2's. Layer 0's write gate still moved slowly (filler 0.55 -> 0.52 in 90 steps at 0.1, about as
    # slowly at 0.5): its context weights start at 0 and Adam moves each by ~lr per step, so they learn at 10x.
    "tiny-v3": Recipe("tiny-v3", CURRICULUM_V3, ChainEpisodeMaker, lr=3e-4, recall_init=False,
                      warm_start_sha256=V2_SHA256, gate_aux=0.5, warm_start_name="the v2 checkpoint",
                      warm_start_path=os.path.join("runs", "tiny-v2", "checkpoint"),
                      fast_params=WRITE_GATE_PARAMS, fast_lr_scale=10.0),
    # v3 + the new ranks' rows at the old rows' norm (failure mode 1 of the model card); run with --seed 1
    "tiny-v3-norm": Recipe("tiny-v3", CURRICULUM_V3_NORM, ChainEpisodeMaker, lr=3e-4, recall_init=False,
                           warm_start_sha256=V3_SHA256, gate_aux=0.5, warm_start_name="the v3 checkpoint",
                           warm_start_path=os.path.join("runs", "tiny-v3", "checkpoint"),
                           fast_params=WRITE_GATE_PARAMS, fast_lr_scale=10.0, match_rows_from=8192),
    "paper": Recipe("paper", CURRICULUM, EpisodeMaker, lr=1e-3, recall_init=True),
}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown training preset {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def warm_start_source(rec: Recipe, path: Optional[str] = None) -> str:
    """The folder of the checkpoint `rec` starts from: `path`, or the shipped default model; ConfigError if its
    model.safetensors is not the pinned one (a later default would silently change the run)."""
    if path is None and rec.warm_start_path is not None:
        path = rec.warm_start_path
    if path is None:
        from fwpkm_rag.default_model import default_model_path

        path = default_model_path()
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise ConfigError(f"warm-start checkpoint {path} has no model.safetensors: pass {rec.warm_start_name}"
                          " with --warm-start PATH")
    got = sha256_file(weights)
    if got != rec.warm_start_sha256:
        raise ConfigError(
            f"warm-start checkpoint {weights} has sha256 {got[:12]}…, the recipe pins {rec.warm_start_sha256[:12]}… "
            f"({rec.warm_start_name}): pass its folder with --warm-start PATH"
        )
    return path
