"""Bad input gives fwpkm_rag errors with clear messages."""
import pytest
import torch

from fwpkm_rag.errors import ConfigError, InputError, StateError
from fwpkm_rag.modeling import FwPKMModelConfig

from model_helpers import VOCAB, tiny_model, tiny_model_config


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([[1, VOCAB]]), "outside the vocabulary"),
        (torch.tensor([[1, -1]]), "outside the vocabulary"),
        (torch.tensor([[1.0, 2.0]]), "integer tensor"),
        (torch.tensor([[True, False]]), "integer tensor"),
        (torch.tensor([1, 2]), "shape (batch, tokens)"),
        (torch.zeros(1, 0, dtype=torch.long), "both > 0"),
        ([[1, 2]], "torch.Tensor"),
    ],
)
def test_bad_input_ids(model, ids, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(ids)


def test_bad_cache_and_mask(model):
    ids = torch.randint(0, VOCAB, (2, 4))
    with pytest.raises(InputError, match="FwPKMCache"):
        model(ids, cache=("k", "v"))
    with pytest.raises(StateError, match="3 stream"):
        model(ids, cache=model.init_cache(3))
    with pytest.raises(InputError, match="attention_mask covers"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(StateError, match="other layers"):
        model(ids, cache=tiny_model(fwpkm_layers=[1]).init_cache(2))


def test_bad_config():
    with pytest.raises(ConfigError, match="fwpkm_layers"):
        tiny_model_config(fwpkm_layers=[3])
    with pytest.raises(ConfigError, match="n_heads"):
        tiny_model_config(d_model=30)
    with pytest.raises(ConfigError, match="vocab_size"):
        FwPKMModelConfig(vocab_size=None)
    with pytest.raises(ConfigError, match="unknown preset"):
        FwPKMModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="FwPKMConfig"):
        tiny_model_config(fwpkm={"n_subkeys": 8, "bogus": 1})
