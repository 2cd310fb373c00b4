"""`attach_fwpkm`: FwPKM sub-blocks inserted into a frozen, pretrained transformers decoder (docs/backbone.md).

    model, tok = fwpkm_rag.backbone.load_smollm2()          # any Llama-family CausalLM works
    fwpkm_rag.attach_fwpkm(model, layers=[8], config=FwPKMConfig(...))
    model.generate(ids, max_new_tokens=8)                    # unchanged at first: the output path is zero

Each chosen decoder layer gets a child module `fwpkm` (`fwpkm_rag.memory.FwPKM`, the project's layer, not a
copy of its math) and a forward pre-hook that adds its output to the residual stream *before* the layer's
token mixer (spec §2: h = h + FwPKM(h), then the layer's own attention and MLP). Queries, values and the gate
are projected from the hidden states entering that layer; the output projection W_o and its bias start at
zero, so logits are unchanged (bit for bit) until the FwPKM weights are trained. The backbone is frozen
(requires_grad False); only the FwPKM slow weights train.

Where the memories live during a call:
- through `AttachedFwPKMModel` (fwpkm_rag.modeling.attached): in its streaming cache, with read-only,
  memory-only (truncated) calls and the memory reads/writes returned — the interface of FwPKMForCausalLM;
- through the HF model's own forward / `generate`: on the transformers cache object of the call (a fresh
  memory per new cache, written as the prompt and the generated tokens stream through; greedy and sampling).
  Without a cache each forward starts fresh memories (training-style).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from fwpkm_rag.errors import ConfigError, InputError, ModelMismatchError, StateError, StateFormatError, check_int
from fwpkm_rag.memory import FwPKM
from fwpkm_rag.memory.config import FwPKMConfig

FORMAT_NAME = "fwpkm-attached"
FORMAT_VERSION = 1
WEIGHTS_FILE = "fwpkm.safetensors"
META_FILE = "fwpkm.json"

# A memory sized for a 100M-class backbone: 16,384 slots of 128 floats, updates every 128 tokens, a 4-tap
# query convolution that starts as the identity (so the query is a projection of the layer's hidden state).
DEFAULT_ATTACH_CONFIG = FwPKMConfig(n_subkeys=128, k_dim=128, v_dim=128, topk=8, chunk_size=128, q_conv=4)


@dataclass
class Attachment:
    """What attach_fwpkm changed on a model (kept on it as `model._fwpkm_attachment`)."""

    layers: list  # decoder-layer indices with a FwPKM sub-block, ascending
    config: FwPKMConfig
    handles: list = field(default_factory=list)
    saved_requires_grad: dict = field(default_factory=dict)


# ---- the per-call context (thread-local: concurrent readers each have their own) --------------------------------
class MemoryCall:
    """Memories and options of one forward: `states[j]` is the MemoryState of the j-th FwPKM layer (None = fresh)."""

    def __init__(self, states: list, *, mask: Optional[Tensor] = None, read_only: bool = False, inplace: bool = False,
                 collect: bool = False, use_memory: bool = True):
        self.states, self.mask, self.read_only, self.inplace = states, mask, read_only, inplace
        self.collect, self.use_memory = collect, use_memory
        self.reads: dict = {}
        self.writes: dict = {}


_local = threading.local()


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextlib.contextmanager
def memory_call(states: list, **options):
    """Run the model's FwPKM sub-blocks on `states` (a list, one entry per FwPKM layer) inside this block."""
    call = MemoryCall(states, **options)
    _stack().append(call)
    try:
        yield call
    finally:
        _stack().pop()


# ---- locating the decoder layers -------------------------------------------------------------------------------
def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (embed_tokens, layers, norm, rotary_emb) of a Llama-family model or CausalLM."""
    inner = getattr(model, "model", None)
    for cand in (inner, model):
        if cand is not None and isinstance(getattr(cand, "layers", None), nn.ModuleList) and hasattr(cand, "embed_tokens"):
            return cand
    raise ConfigError(f"{type(model).__name__} is not a Llama-family decoder: expected `.model.layers` (an "
                      "nn.ModuleList of decoder layers) and `.model.embed_tokens`, as LlamaForCausalLM has")


def _check_layer_family(layer: nn.Module, i: int) -> None:
    for attr in ("self_attn", "mlp", "input_layernorm"):
        if not hasattr(layer, attr):
            raise ConfigError(f"decoder layer {i} ({type(layer).__name__}) has no {attr!r}: attach_fwpkm supports "
                              "Llama-family pre-norm decoders (Llama, SmolLM2, Mistral, Qwen2, ...)")


def attachment(model: nn.Module) -> Attachment:
    att = getattr(model, "_fwpkm_attachment", None)
    if att is None:
        raise StateError(f"no FwPKM is attached to this {type(model).__name__}: call fwpkm_rag.attach_fwpkm(model) first")
    return att


def is_attached(model: nn.Module) -> bool:
    return getattr(model, "_fwpkm_attachment", None) is not None


def fwpkm_blocks(model: nn.Module) -> list:
    """The attached FwPKM modules, in the order of their decoder layers."""
    layers = decoder_of(model).layers
    return [layers[i].fwpkm for i in attachment(model).layers]


def _check_layers(layers, n: int) -> list:
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) and not hasattr(layers, "__iter__"):
        raise ConfigError(f"layers must be a list of decoder-layer indices, got {layers!r}")
    out = []
    for i in layers:
        i = check_int("each entry of layers", i)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ConfigError(f"layer {i} is out of range: the model has {n} decoder layers (0..{n - 1})")
        out.append(j)
    if not out:
        raise ConfigError("layers is empty: give at least one decoder layer for a FwPKM sub-block")
    if len(set(out)) != len(out):
        raise ConfigError(f"layers has duplicates: {list(layers)!r}")
    return sorted(out)


def default_layers(n_layers: int) -> list:
    """The recommended placement (docs/backbone.md): one memory before decoder layer 1 — after one attention
    layer (so queries see some context), and the cheapest truncated forward. Measured on SmolLM2-135M needles
    (8K tokens, 16 distractors): the same hit@5 as layer 3 at 3.7x the ingest speed; deeper is slower and
    no better on exact or paraphrased questions before any training."""
    return [1] if n_layers > 1 else [0]


# ---- attach / detach -------------------------------------------------------------------------------------------
def attach_fwpkm(model: nn.Module, layers=None, config: Optional[FwPKMConfig] = None, *, freeze: bool = True) -> nn.Module:
    """Insert FwPKM sub-blocks before the token mixer of decoder `layers` of a transformers Llama-family model.

    layers: indices (negative count from the top; default `default_layers`); config: the memory of every
    inserted block (default DEFAULT_ATTACH_CONFIG). The backbone's parameters are frozen (freeze=True). The
    new blocks' output projection is zero, so the model's outputs are unchanged until they are trained.
    Returns the model (changed in place)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch nn.Module (a transformers causal LM), got {type(model).__name__}")
    if is_attached(model):
        raise StateError("FwPKM is already attached to this model: detach_fwpkm(model) first")
    config = DEFAULT_ATTACH_CONFIG if config is None else config
    if not isinstance(config, FwPKMConfig):
        raise ConfigError(f"config must be a FwPKMConfig, got {type(config).__name__}")
    decoder = decoder_of(model)
    n = len(decoder.layers)
    chosen = _check_layers(default_layers(n) if layers is None else layers, n)
    d_model = decoder.embed_tokens.weight.shape[1]
    ref = decoder.embed_tokens.weight
    att = Attachment(chosen, config)
    if freeze:
        att.saved_requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
    for slot, i in enumerate(chosen):
        layer = decoder.layers[i]
        _check_layer_family(layer, i)
        if hasattr(layer, "fwpkm"):
            raise StateError(f"decoder layer {i} already has an attribute 'fwpkm'")
        block = FwPKM(d_model, config).to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        with torch.no_grad():
            block.o_proj.weight.zero_()
            block.o_proj.bias.zero_()
        layer.add_module("fwpkm", block)
        att.handles.append(layer.register_forward_pre_hook(_layer_hook(slot), with_kwargs=True))
    att.handles.append(model.register_forward_pre_hook(_model_pre_hook, with_kwargs=True))
    att.handles.append(model.register_forward_hook(_model_post_hook, with_kwargs=True, always_call=True))
    model._fwpkm_attachment = att
    return model


def detach_fwpkm(model: nn.Module) -> list:
    """Remove the FwPKM sub-blocks and hooks, restore the parameters' requires_grad; returns the removed blocks."""
    att = attachment(model)
    for h in att.handles:
        h.remove()
    layers = decoder_of(model).layers
    removed = []
    for i in att.layers:
        removed.append(layers[i].fwpkm)
        del layers[i]._modules["fwpkm"]
    for name, p in model.named_parameters():
        if name in att.saved_requires_grad:
            p.requires_grad_(att.saved_requires_grad[name])
    del model._fwpkm_attachment
    return removed


# ---- hooks -----------------------------------------------------------------------------------------------------
def _layer_hook(slot: int):
    def hook(module, args, kwargs):
        stack = _stack()
        call = stack[-1] if stack else None
        if call is not None and not call.use_memory:
            return None
        h = args[0] if args else kwargs["hidden_states"]
        block = module.fwpkm
        if call is None:  # a decoder layer called on its own: a fresh memory for this call
            out = block(h)
        else:
            out = block(h, call.states[slot], mask=call.mask, read_only=call.read_only, inplace=call.inplace,
                        return_reads=call.collect)
            call.states[slot] = out.state
            if call.collect:
                call.reads[slot] = (out.slots, out.weights, out.write_gate)
                call.writes[slot] = out.writes
        h = h + out.output
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    return hook


def _model_pre_hook(module, args, kwargs):
    """A direct call of the HF model (forward / generate): memories on the call's transformers cache."""
    att = module._fwpkm_attachment
    x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    n = len(att.layers)
    states = None
    if cache is not None:
        states = getattr(cache, "_fwpkm_memory", None)
        if states is None:
            states = [None] * n
            try:
                cache._fwpkm_memory = states
            except AttributeError:  # pragma: no cover - a slotted cache class: memories live for this call only
                pass
    if states is None:
        states = [None] * n
    mask = None
    am = kwargs.get("attention_mask")
    if x is not None and isinstance(am, Tensor) and am.dim() == 2:
        T = x.shape[1]
        m = am[:, -T:].bool()
        mask = None if bool(m.all()) else m
    if x is not None:
        B = x.shape[0]
        for s in states:
            if s is not None and s.batch_size != B:
                raise StateError(f"the memories on this cache hold {s.batch_size} stream(s) but the input has {B}")
    outer = _stack()[-1] if _stack() else None  # e.g. calibrate_fwpkm's memory-off call around this one
    _stack().append(MemoryCall(states, mask=mask, inplace=not torch.is_grad_enabled(),
                               use_memory=outer.use_memory if outer is not None else True))
    return None


def _model_post_hook(module, args, kwargs, output):
    stack = _stack()
    if stack:
        stack.pop()
    return None


# ---- saving only the FwPKM weights -----------------------------------------------------------------------------
def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 of the backbone alone: its config (names dropped) and every parameter/buffer outside the FwPKM
    blocks (names, shapes, dtypes, bytes). Cached while the tensors are unchanged."""
    from fwpkm_rag.fingerprint import weights_fingerprint

    state = {k: v for k, v in model.state_dict().items() if ".fwpkm." not in f".{k}"}
    cfg = getattr(model, "config", None)
    return weights_fingerprint(model, cfg.to_dict() if hasattr(cfg, "to_dict") else None, state)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_fwpkm(model: nn.Module, directory, *, backbone_name: Optional[str] = None, extra: Optional[dict] = None) -> str:
    """Write only the FwPKM slow weights (`fwpkm.safetensors`) and `fwpkm.json` (layers, memory config, the
    backbone's name and fingerprint) into `directory`; each file is replaced atomically. Returns the folder."""
    from safetensors.torch import save_file

    att = attachment(model)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for slot, (i, block) in enumerate(zip(att.layers, fwpkm_blocks(model))):
        for name, t in block.state_dict().items():
            tensors[f"{i}.{name}"] = t.detach().to("cpu").contiguous()
    cfg = getattr(model, "config", None)
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "layers": att.layers, "fwpkm": att.config.to_dict(),
        "backbone": {
            "name": backbone_name or getattr(cfg, "_name_or_path", None) or type(model).__name__,
            "class": type(model).__name__,
            "model_type": getattr(cfg, "model_type", None),
            "num_hidden_layers": len(decoder_of(model).layers),
            "hidden_size": int(decoder_of(model).embed_tokens.weight.shape[1]),
            "fingerprint": backbone_fingerprint(model),
        },
        **(extra or {}),
    }
    _atomic_write(os.path.join(directory, WEIGHTS_FILE), lambda p: save_file(tensors, p, metadata={"format": "pt"}))

    def write_json(p):
        with open(p, "w") as fh:
            json.dump(meta, fh, indent=2)

    _atomic_write(os.path.join(directory, META_FILE), write_json)  # written last: it names what the weights are
    return directory


def read_fwpkm_meta(directory) -> dict:
    path = os.path.join(os.fspath(directory), META_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {META_FILE} in {directory}: not a folder written by save_fwpkm")
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except ValueError as exc:
        raise StateFormatError(f"{path} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT_NAME:
        raise StateFormatError(f"{path} is not a {FORMAT_NAME} file (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise StateFormatError(f"{path} has format version {meta.get('version')!r}; this library reads {FORMAT_VERSION}")
    return meta


def load_fwpkm(model: nn.Module, directory, *, check_backbone: bool = True) -> nn.Module:
    """Load FwPKM weights saved by `save_fwpkm` into `model` (attaching the saved layers/config first when the
    model has none). Raises ModelMismatchError when the backbone differs from the one they were trained on
    (check_backbone=False skips that check), StateFormatError for damaged files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_fwpkm_meta(directory)
    try:
        config = FwPKMConfig.from_dict(meta["fwpkm"])
        layers = [int(i) for i in meta["layers"]]
    except (KeyError, TypeError, ConfigError) as exc:
        raise StateFormatError(f"{directory}/{META_FILE} lacks a valid layers/fwpkm record: {exc}") from None
    if check_backbone:
        want = meta.get("backbone", {}).get("fingerprint")
        have = backbone_fingerprint(model)
        if want != have:
            raise ModelMismatchError(
                f"the FwPKM weights in {directory} were trained on another backbone "
                f"({meta.get('backbone', {}).get('name')!r}, fingerprint {str(want)[:12]}...) than this model "
                f"({have[:12]}...): load them onto that backbone, or pass check_backbone=False")
    if is_attached(model):
        att = attachment(model)
        if att.layers != layers or att.config != config:
            raise ConfigError(f"the model has FwPKM at layers {att.layers} with another config than the saved "
                              f"weights (layers {layers}): detach_fwpkm(model) first, or load into a bare backbone")
    else:
        attach_fwpkm(model, layers, config)
    path = os.path.join(os.fspath(directory), WEIGHTS_FILE)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise StateFormatError(f"{path} cannot be read: {exc}") from None
    blocks = dict(zip(attachment(model).layers, fwpkm_blocks(model)))
    expected = {f"{i}.{k}" for i, b in blocks.items() for k in b.state_dict()}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise StateFormatError(f"{path} does not match the FwPKM blocks: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for i, block in blocks.items():
            for k, t in block.state_dict().items():
                src = tensors[f"{i}.{k}"]
                if src.shape != t.shape:
                    raise StateFormatError(f"{path}: {i}.{k} has shape {tuple(src.shape)}, expected {tuple(t.shape)}")
                t.copy_(src.to(t.dtype))
    return model


# ---- calibration of the projections to the backbone's hidden-state statistics ---------------------------------
@torch.no_grad()
def calibrate_fwpkm(model: nn.Module, input_ids: Tensor, *, min_std: float = 1e-3) -> dict:
    """Standardise what each attached block's projections see, from a sample of text (in place).

    Pretrained decoders carry a few "massive" hidden features (in SmolLM2-135M, features 507 and 247 are
    10-50x the median) that would dominate a random projection and send every token's query to the same
    slots. For each block, over the tokens of `input_ids` (B, T), with ĥ = RMSNorm(h) of the hidden states
    entering its layer: the q/v/g norm gains become 1/σ_j and the projection biases -W·(μ/σ), so that q, v
    and the gate are random projections of the standardised features (ĥ - μ)/σ. The output path stays zero.
    Returns {layer: (mean of σ, max |μ|/σ)} for a report."""
    att = attachment(model)
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.numel() < 2:
        raise InputError("calibrate_fwpkm needs input_ids of shape (batch, tokens) with at least 2 tokens")
    dev = decoder_of(model).embed_tokens.weight.device
    with memory_call([None] * len(att.layers), use_memory=False):
        out = model(input_ids.to(dev), output_hidden_states=True, use_cache=False)
    report = {}
    for i, block in zip(att.layers, fwpkm_blocks(model)):
        h = out.hidden_states[i].reshape(-1, block.d_model).float()  # the input of decoder layer i
        hn = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        mu, sigma = hn.mean(0), hn.std(0).clamp_min(min_std)
        for norm, proj in ((block.q_norm, block.q_proj), (block.v_norm, block.v_proj), (block.g_norm, block.g_proj)):
            norm.weight.copy_((1.0 / sigma).to(norm.weight.dtype))
            proj.bias.copy_((-(proj.weight.float() @ (mu / sigma))).to(proj.bias.dtype))
        report[i] = (float(sigma.mean()), float((mu.abs() / sigma).max()))
    return report
