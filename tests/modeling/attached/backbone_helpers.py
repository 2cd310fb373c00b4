"""Tiny stand-ins for SmolLM2 in unit tests: a byte-level BPE tokenizer trained in memory (offline, ~0.1 s)
and a random LlamaConfig (hidden 64, 4 layers), so every test runs in seconds."""
from __future__ import annotations

import functools

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A memory is written while the model reads, and read back when a question comes.",
    "The secret number for ID-4821 is 730954.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Functions return values; classes define objects with methods and attributes.",
    "Rain falls on the hills, rivers carry the water to the sea.",
    "Numbers like 12, 345 and 6789 appear in tables and lists.",
    "Ünïcode text — with accents, dashes and emoji 🙂 — must round-trip exactly.",
]


@functools.lru_cache(maxsize=None)
def tiny_hf_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_SENTENCES * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(vocab_size: int, layers: int = 4, seed: int = 0, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def small_memory(**over):
    from fwpkm_rag import FwPKMConfig

    kw = dict(n_subkeys=16, k_dim=16, v_dim=16, topk=4, chunk_size=8, q_conv=4)
    kw.update(over)
    return FwPKMConfig(**kw)


def nonzero_output(model, scale: float = 0.5, seed: int = 3):
    """Give every attached FwPKM block a random (non-zero) output projection, as training would."""
    from fwpkm_rag.modeling.attach import fwpkm_blocks

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in fwpkm_blocks(model):
            b.o_proj.weight.copy_(torch.randn(b.o_proj.weight.shape, generator=gen) * scale)
            b.o_proj.bias.copy_(torch.randn(b.o_proj.bias.shape, generator=gen) * 0.1)
