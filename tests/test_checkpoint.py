"""The checkpoint format: round trips exactly and refuses broken files with a clear error."""

import pytest
import torch

from llmlab.errors import CheckpointError
from llmlab.model import GPT, load_checkpoint, preset, save_checkpoint


@pytest.mark.parametrize("name,positions", [("tiny", "learned"), ("tiny-llama", "rope"), ("tiny", "sinusoidal")])
def test_checkpoint_round_trip_gives_same_logits(tmp_path, name, positions):
    torch.manual_seed(0)
    model = GPT(preset(name, positions=positions)).eval()
    save_checkpoint(tmp_path / "ckpt", model, metadata={"step": 3})
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_truncated_weights_give_clear_error(tmp_path):
    save_checkpoint(tmp_path, GPT(preset("tiny")))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)


def test_missing_directory_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid"):
        load_checkpoint(tmp_path)
