"""The RAG pipeline over an attached backbone: FwPKMStore ingests (memory-only, truncated forward), retrieves a
needle through provenance, saves/loads; ChatFwPKM answers from memory and as a reader of retrieved chunks; the
wrapped transformers tokenizer round-trips text and chat prompts."""
import random

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage

from backbone_helpers import small_memory, tiny_hf_tokenizer, tiny_llama
from fwpkm_rag import attach_fwpkm
from fwpkm_rag.modeling.attached import AttachedFwPKMModel, HFTokenizer
from fwpkm_rag.pipelines import ChatFwPKM, FwPKMStore
from fwpkm_rag.pipelines.generation import format_prompt

WORDS = ("river hill rain table list number class method object value function water sea city capital "
         "memory model question answer fox dog quick brown lazy tables lists").split()


@pytest.fixture(scope="module")
def attached():
    tok = tiny_hf_tokenizer()
    model = tiny_llama(len(tok), layers=3)
    attach_fwpkm(model, layers=[0, 1], config=small_memory(n_subkeys=32, k_dim=32, v_dim=16, chunk_size=32))
    with torch.no_grad():  # a sharper hash than the N(0, 0.02) default, as an untrained memory needs
        for layer in model.model.layers[:2]:
            layer.fwpkm.q_proj.weight.normal_(0, 0.5)
    return AttachedFwPKMModel(model, tok, window=64)


def _docs(n=12, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(60)) + "." for _ in range(n)]


def test_store_ingests_retrieves_a_needle_and_round_trips(attached, tmp_path):
    docs = _docs()
    needle = "The secret number for ID-4821 is 730954."
    docs[7] = docs[7][:150] + " " + needle + " " + docs[7][150:]
    store = FwPKMStore(model=attached, chunk_tokens=32)
    ids = store.add_texts(docs, ids=[f"d{i}" for i in range(len(docs))])
    assert len(store) == 12 and store.index.tokens_ingested > 500
    # ingestion ran memory-only: no KV above the last FwPKM layer
    (segment,) = store.index.segments  # one segment (far below segment_tokens)
    assert segment.index.cache.kv[2] is None and segment.index.cache.kv[1] is not None
    hits = store.search_with_provenance("secret number for ID-4821", k=3)
    assert hits[0].doc_id == "d7" and needle[:20] in hits[0].text and hits[0].matched_slots
    assert store.similarity_search("secret number for ID-4821", k=1)[0].id == ids[7]
    snap = store.save(tmp_path / "store")
    assert snap
    again = FwPKMStore.load(tmp_path / "store", model=attached)
    assert [h.chunk_id for h in again.search_with_provenance("secret number for ID-4821", k=3)] == \
        [h.chunk_id for h in hits]


def test_chat_answers_from_memory_and_as_a_reader(attached):
    store = FwPKMStore(model=attached, chunk_tokens=32)
    docs = _docs(6, seed=1)
    docs[2] = "Paris is the capital of France. " + docs[2]
    store.add_texts(docs, ids=[f"d{i}" for i in range(6)])
    before = [m.clone() for m in store.index.view.memory]
    memory_chat = ChatFwPKM(store=store, max_tokens=5)
    reply = memory_chat.invoke([HumanMessage("What is the capital of France?")])
    assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] >= 1
    reader = attached.as_reader()  # a stand-in for the default reader (SmolLM2), tested in test_smollm2_real
    reader_chat = ChatFwPKM(store=store, mode="reader", reader=reader, k=2, max_tokens=5)
    r = reader_chat.invoke([SystemMessage("Be brief."), HumanMessage("What is the capital of France?")])
    assert r.response_metadata["sources"][0]["doc_id"] == "d2"
    # the reader's prompt holds the retrieved chunks: far longer than the question alone
    assert r.usage_metadata["input_tokens"] > 60
    with pytest.raises(ValueError, match="mode"):
        ChatFwPKM(store=store, mode="oracle").invoke([HumanMessage("hi")])
    # without a store the reader reads the messages as given (an LCEL chain put the text in the prompt)
    tok = reader.get_tokenizer()
    alone = ChatFwPKM(mode="reader", reader=reader, max_tokens=3).invoke([HumanMessage("hi")])
    assert alone.usage_metadata["input_tokens"] == len(format_prompt(tok, [("user", "hi")], "chat"))
    assert "sources" not in alone.response_metadata
    for a, b in zip(before, store.index.view.memory):  # questions never change the store
        assert torch.equal(a.values.dense(0), b.values.dense(0))


def test_wrapped_tokenizer_round_trips_and_formats_chat():
    tok = HFTokenizer(tiny_hf_tokenizer())
    text = "Ünïcode — 🙂 and a literal <|im_end|> in a document\n\tstays text."
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode()
    assert int(tok.token_byte_lengths()[ids].sum()) == len(text.encode())
    assert not set(ids) & tok.special_token_ids  # the literal special string stayed text
    assert tok.eos_id == tok.special_ids["<|endoftext|>"]
    prompt = format_prompt(tok, [("system", "S"), ("user", "Q?")], "chat")
    assert tok.decode(prompt) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="role"):
        format_prompt(tok, [("robot", "x")], "chat")
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")
