"""`fwpkm-rag train --backbone`: only the FwPKM weights train (the backbone stays bit-identical), the loss goes
down on the project's data recipe, checkpoints hold only the FwPKM weights and a run resumes from them."""
import json

import torch

from fwpkm_rag.backbone import tiny_random_llama
from fwpkm_rag.cli import main
from fwpkm_rag.modeling.attach import backbone_fingerprint
from fwpkm_rag.modeling.attached import AttachedFwPKMModel


def test_cli_trains_only_the_fwpkm_weights_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["train", "--backbone", "tiny-random-llama", "--out", str(out), "--stage-steps", "6", "1", "--lr", "3e-3"]
    assert main(common + ["--max-steps", "4", "--save-every", "2"]) == 0
    ckpt = out / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["fwpkm.json", "fwpkm.safetensors", "optimizer.safetensors",
                                                      "trainer_state.json"]
    backbone, tok = tiny_random_llama(0)
    before = backbone_fingerprint(backbone)
    model = AttachedFwPKMModel.load(ckpt, backbone=backbone, tokenizer=tok)
    assert backbone_fingerprint(backbone) == before  # the frozen backbone's weights are the originals
    assert model.fwpkm_modules[0].o_proj.weight.abs().sum() > 0  # trained away from the zero output path
    # resuming goes on from step 4 with the saved FwPKM weights and optimizer state
    assert main(common + ["--max-steps", "6", "--save-every", "3"]) == 0
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 6


def test_the_loss_goes_down_and_gate_statistics_are_logged(tmp_path):
    from fwpkm_rag.training.loop import TrainConfig, train

    record = train(TrainConfig(backbone="tiny-random-llama", out_dir=str(tmp_path), max_steps=8, stage_steps=(8, 1),
                               log_every=1, save_every=8, resume=False, lr=1e-2, warmup=2))
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert record["step"] == 8 and len(log) == 8
    first, last = sum(r["loss"] for r in log[:2]) / 2, sum(r["loss"] for r in log[-2:]) / 2
    assert last < first, [r["loss"] for r in log]
    assert 0.0 < record["gate0_filler"] < 1.0 and torch.isfinite(torch.tensor(record["loss"]))
