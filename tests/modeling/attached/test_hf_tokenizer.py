"""HFTokenizer (a transformers tokenizer behind the Tokenizer protocol): byte lengths, chat ids, the mask of
ids that end an answer."""
import pytest

from backbone_helpers import tiny_hf_tokenizer
from fwpkm_rag.errors import InputError
from fwpkm_rag.modeling.hf_tokenizer import HFTokenizer, adapt_tokenizer
from fwpkm_rag.tokenizer import Tokenizer, get_tokenizer


@pytest.fixture(scope="module")
def tok():
    return HFTokenizer(tiny_hf_tokenizer())


def test_implements_the_tokenizer_protocol_and_adapts_once(tok):
    assert isinstance(tok, Tokenizer)
    assert adapt_tokenizer(tok) is tok and adapt_tokenizer(get_tokenizer()) is get_tokenizer()
    assert isinstance(adapt_tokenizer(tiny_hf_tokenizer()), HFTokenizer)
    with pytest.raises(InputError, match="transformers tokenizer"):
        adapt_tokenizer("gpt2")


def test_token_byte_lengths_are_the_bytes_of_each_token(tok):
    lengths = tok.token_byte_lengths()
    assert lengths.dtype.name == "int32" and lengths.shape == (tok.vocab_size,)
    assert lengths.tolist() == [len(tok.decode_bytes([i])) for i in range(tok.vocab_size)]
    assert tok.token_byte_lengths() is lengths
    text = "Ünïcode — 🙂 stays exact"
    assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_chat_ids_follow_the_chat_template_and_refuse_unknown_roles(tok):
    ids = tok.chat_ids([("system", "S"), ("user", "Q?")])
    assert tok.decode(ids) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(InputError, match="unknown message role 'robot'"):
        tok.chat_ids([("robot", "x")])


def test_special_token_mask_marks_special_ids_and_rows_past_the_vocabulary(tok):
    mask = tok.special_token_mask(tok.vocab_size + 4)
    marked = set(mask.nonzero().flatten().tolist())
    specials = {tok.special_ids[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert marked == specials | set(range(tok.vocab_size, tok.vocab_size + 4))
    assert not mask[tok.encode("plain words")].any()
