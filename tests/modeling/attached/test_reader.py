"""`ReaderLM`: a plain transformers causal LM (no memory) behind the decode interface. The library's one decode
loop over it gives the tokens transformers' own greedy `generate` gives (an independent reference), and
ChatFwPKM's reader mode answers through it."""
import torch
from langchain_core.messages import HumanMessage

from backbone_helpers import tiny_hf_tokenizer, tiny_llama
from fwpkm_rag.modeling.protocol import TextDecoder
from fwpkm_rag.modeling.reader import ReaderLM
from fwpkm_rag.pipelines import ChatFwPKM
from fwpkm_rag.pipelines.generation import format_prompt, stream_generate


def _reader():
    """A random 2-layer Llama whose weights are large enough (std 0.3) that greedy decoding varies from token
    to token (at the default 0.02 it repeats one token, which would make the comparison below weak)."""
    tok = tiny_hf_tokenizer()
    model = tiny_llama(len(tok), layers=2, seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=gen)
    return ReaderLM(model, tok, name="tiny")


def test_decode_loop_over_a_reader_matches_transformers_greedy_generate():
    reader = _reader()
    assert isinstance(reader, TextDecoder)
    tok = reader.get_tokenizer()
    prompt = format_prompt(tok, [("user", "Read the text and answer: where do rivers flow?")], "chat")
    n_new = 12
    text = "".join(stream_generate(reader, reader.init_cache(1), prompt, read_only=True, max_new_tokens=n_new))
    x = torch.tensor([prompt])
    ref = reader.hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, do_sample=False,
                             pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
    # the decode loop stops at the first special token (never emitted); generate may run on past eos
    special = set(tok.special_token_ids)
    ref_text_ids = []
    for i in ref:
        if i in special:
            break
        ref_text_ids.append(i)
    assert len(set(ref_text_ids)) >= 4, "degenerate reference: the tiny reader repeats itself"
    assert text == tok.decode(ref_text_ids)


def test_chat_reader_mode_uses_the_given_reader_on_the_messages_as_given():
    reader = _reader()
    tok = reader.get_tokenizer()
    reply = ChatFwPKM(mode="reader", reader=reader, max_tokens=4).invoke([HumanMessage("What is the capital?")])
    assert reply.usage_metadata["input_tokens"] == len(format_prompt(tok, [("user", "What is the capital?")], "chat"))
    assert 1 <= reply.usage_metadata["output_tokens"] <= 4 and "sources" not in reply.response_metadata
