"""A compact copy of a trained checkpoint to ship: matrices stored in fp16, everything else in fp32.

`tiny-v2` has 12.8M parameters; in fp32 that is 51 MB, over the package's 30 MB budget (issue 15). Storing
the 2-D weights (the tied 32,773 x 256 embedding and every projection) in fp16 gives about 26 MB; vectors
(norms, biases, the query conv's taps) stay fp32 (a few KB). `FwPKMForCausalLM.from_pretrained` upcasts
every tensor to the model's fp32 on load, so inference is unchanged but for the fp16 rounding of the
weights (relative error <= 2^-11 per weight). Training checkpoints stay fp32: a resumed run must equal an
uninterrupted one.

    python -m fwpkm_rag.training.export runs/tiny-v2/checkpoint runs/tiny-v2/model-fp16
"""
from __future__ import annotations

import argparse
import os

import torch


def compact_state_dict(model) -> dict:
    """The model's state dict with every floating 2-D tensor cast to fp16; a tied head is left out (it is the
    embedding; transformers re-ties it on load), as save_pretrained does by itself."""
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else set()
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() and v.dim() == 2 else v.detach())
            for k, v in model.state_dict().items() if k not in tied}


def save_compact(model, folder: str) -> str:
    """save_pretrained(folder) with fp16 matrices; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, state_dict=compact_state_dict(model))
    return folder


def main(argv=None) -> int:
    from fwpkm_rag.modeling.model import FwPKMForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a save_pretrained folder (e.g. runs/tiny-v2/checkpoint)")
    ap.add_argument("out", help="folder for the compact copy")
    args = ap.parse_args(argv)
    save_compact(FwPKMForCausalLM.from_pretrained(args.checkpoint), args.out)
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
