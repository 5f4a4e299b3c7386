"""The estimator reproduces the textbook worked examples and agrees with the model it describes."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.estimate import (
    activation_bytes,
    chinchilla_optimal,
    estimate,
    flops_per_token,
    gpus_to_hold,
    kv_cache_bytes,
    mfu,
    param_breakdown,
    size_for_budget,
    training_flops,
    training_memory,
    training_time,
)
from llmlab.model import GPT, from_depth, preset, save_checkpoint

CONFIGS = [
    preset("gpt2"), preset("llama-7b"), preset("smollm2-135m"), preset("tiny"), preset("tiny-llama"),
    preset("tiny", norm_placement="post", positions="sinusoidal", bias=False),
    preset("tiny-llama", bias=True, tie_embeddings=True, head_dim=24, activation="relu", d_ff=100),
    preset("tiny", norm="rmsnorm", positions="none", n_kv_heads=1),
    preset("tiny-llama", n_experts=4, experts_per_token=2),
    preset("tiny", n_experts=3, experts_per_token=1, n_shared_experts=2),  # GELU experts, a biased shared MLP
    preset("mixtral-8x7b"), preset("llama-3-8b"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_closed_form_matches_the_model(config):
    with torch.device("meta"):
        model = GPT(config)
    p = param_breakdown(config)
    assert p["total"] == model.num_params()
    assert p["non-embedding"] == model.num_params(exclude_embeddings=True)
    assert flops_per_token(config, 64) == model.flops_per_token(64)


def test_worked_examples_llama_3_and_mixtral_sizes():
    """Llama 3 (Grattafiori et al. 2024): 8B, 70B, 405B; Mixtral 8x7B (Jiang et al. 2024): 46.7B in all,
    12.9B active per token."""
    sizes = {name: param_breakdown(preset(name))["total"] / 1e9 for name in ("llama-3-8b", "llama-3-70b", "llama-3-405b")}
    assert [round(v, 1) for v in sizes.values()] == [8.0, 70.6, 405.9]
    mixtral = param_breakdown(preset("mixtral-8x7b"))
    assert round(mixtral["total"] / 1e9, 1) == 46.7 and round(mixtral["active"] / 1e9, 1) == 12.9
    assert flops_per_token(preset("mixtral-8x7b"), 1) < 0.3 * 6 * mixtral["total"]  # only 2 of 8 experts


def test_worked_example_405b_memory_and_the_gpus_to_hold_it():
    """The course's arithmetic: 405B fp32 weights are ~1.6 TB; weights, gradients and AdamW states
    (16 bytes per parameter) need 82 GPUs of 80 GB at the least, sharded; bf16 weights alone 11."""
    config = preset("llama-3-405b")
    assert training_memory(config, 1, 1, "fp32")["weights"] == pytest.approx(1.62e12, rel=0.01)
    assert gpus_to_hold(config, 80, "bf16") == {"training_state": 82, "inference": 11}
    assert gpus_to_hold(preset("gpt2"), 80) == {"training_state": 1, "inference": 1}
    assert estimate(config, gpu="h100").gpus_to_hold["training_state"] == 82


def test_worked_example_gpt2_small_has_124m_parameters():
    assert round(param_breakdown(preset("gpt2"))["total"] / 1e6) == 124


def test_worked_example_gpt3_on_300b_tokens_needs_3e23_flops():
    flops = training_flops(preset("gpt3-175b"), 300e9)
    assert abs(param_breakdown(preset("gpt3-175b"))["total"] / 175e9 - 1) < 0.01
    assert 3.1e23 <= flops["6ND"] <= 3.2e23  # Brown et al. 2020 table D.1: 3.14e23
    assert flops["with_attention"] > flops["6ND"]


def test_worked_example_llama7b_kv_cache_is_1gb_at_2048_tokens_fp16():
    assert kv_cache_bytes(preset("llama-7b"), 2048, batch=1, bytes_per_value=2) == 2**30  # 1.07 GB
    # GQA shrinks it by n_heads / n_kv_heads
    gqa = preset("llama-7b", n_kv_heads=8)
    assert kv_cache_bytes(gqa, 2048) == 2**30 / 4


def test_chinchilla_allocation():
    # Chinchilla itself: 70B parameters on 1.4T tokens, C = 5.76e23.
    opt = chinchilla_optimal(5.76e23)
    assert abs(opt["params"] / 70e9 - 1) < 0.02 and abs(opt["tokens"] / 1.4e12 - 1) < 0.02
    assert abs(6 * opt["params"] * opt["tokens"] / 5.76e23 - 1) < 1e-9
    assert opt["tokens"] == pytest.approx(20 * opt["params"])


def test_memory_is_16_bytes_per_parameter_for_adamw():
    c = preset("gpt2")
    n = param_breakdown(c)["total"]
    for precision in ("fp32", "bf16"):
        m = training_memory(c, batch=1, seq_len=1024, precision=precision)
        assert m["weights"] + m["gradients"] + m["optimizer"] == 16 * n
    assert training_memory(c, 1, 1024, "fp32", optimizer="sgd")["optimizer"] == 0
    # activations grow linearly in the batch; without flash attention, quadratically in the sequence
    assert activation_bytes(c, 4, 512) - activation_bytes(c, 2, 512) == pytest.approx(
        activation_bytes(c, 2, 512) - activation_bytes(c, 0, 512))
    no_flash = activation_bytes(c, 1, 1024, flash_attention=False) - activation_bytes(c, 1, 1024)
    assert no_flash == pytest.approx(12 * 1024 * 768 * 5 * 12 * 1024 / 768)


def test_time_cost_and_mfu_are_consistent():
    c = preset("gpt2")
    seconds = training_time(1e18, peak_flops=1e15, mfu=0.5, n_gpus=2)
    assert seconds == pytest.approx(1000)
    tokens_per_second = 1e15 * 0.5 / flops_per_token(c)
    assert mfu(tokens_per_second, c, 1e15) == pytest.approx(0.5)
    e = estimate(c, tokens=1e9, gpu="h100", n_gpus=8, mfu=0.4, price_per_hour=2.0)
    assert e.seconds == pytest.approx(training_flops(c, 1e9)["with_attention"] / (989e12 * 0.4 * 8))
    assert e.cost == pytest.approx(e.seconds / 3600 * 8 * 2.0)
    with pytest.raises(ValueError, match="mfu"):
        training_time(1.0, 1.0, mfu=1.5)


def test_size_for_budget_picks_the_largest_chinchilla_model_that_fits():
    flops_per_s = 1e11  # ~ a 2-core CPU at 70% of its fp32 peak
    plan = size_for_budget(600, flops_per_s, vocab_size=4096, context_length=256)
    assert plan.chinchilla
    assert plan.tokens == pytest.approx(20 * plan.params, rel=1e-6)
    assert plan.seconds <= 600
    bigger = from_depth(plan.depth + 1, 4096, 256)
    needed = 20 * param_breakdown(bigger)["total"] * flops_per_token(bigger)
    assert needed > 600 * flops_per_s  # one step deeper would not fit
    # More time, a bigger model.
    assert size_for_budget(6000, flops_per_s, vocab_size=4096, context_length=256).depth > plan.depth


def test_size_for_budget_with_measured_throughput_and_tiny_budgets():
    calls = []

    def tokens_per_second(config):  # e.g. a measured speed: smaller models run at lower MFU
        calls.append(config.n_layers)
        return 1e11 / flops_per_token(config) * min(1.0, config.n_layers / 8)

    plan = size_for_budget(3600, tokens_per_second, vocab_size=2048, context_length=128, family="llama")
    assert plan.config.positions == "rope" and plan.chinchilla and plan.depth >= 2
    assert calls == list(range(1, plan.depth + 2))  # stops at the first depth that does not fit
    tiny = size_for_budget(0.001, 1e9, vocab_size=2048)
    assert tiny.depth == 1 and not tiny.chinchilla and tiny.tokens < 20 * tiny.params
    with pytest.raises(ValueError):
        size_for_budget(0, 1e9, vocab_size=2048)


def test_cli_prints_tables_and_json(capsys):
    assert main(["estimate", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "Chinchilla" in out and "KV cache" in out
    assert main(["estimate", "--preset", "gpt3-175b", "--tokens", "300e9", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 3.1e23 <= data["training_flops"]["6ND"] <= 3.2e23
    assert main(["estimate", "--preset", "llama-7b", "--precision", "fp16", "--kv-tokens", "2048"]) == 0
    assert "1.07 GB" in capsys.readouterr().out
    assert main(["estimate", "--depth", "4", "--vocab-size", "1000", "--n-heads", "8", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert (config["d_model"], config["n_heads"], config["head_dim"], config["vocab_size"]) == (256, 8, 32, 1000)


def test_cli_reads_checkpoints_and_refuses_conflicts(tmp_path, capsys):
    from llmlab.model.hf import save_hf

    model = GPT(preset("tiny-llama"))
    save_checkpoint(tmp_path / "ours", model)
    save_hf(model, tmp_path / "hf")
    for source in ("ours", "hf"):
        assert main(["estimate", "--config", str(tmp_path / source), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["params"]["total"] == model.num_params()
    assert main(["estimate", "--preset", "gpt2", "--depth", "3"]) == 1
    assert "choose one of" in capsys.readouterr().err
    assert main(["estimate", "--preset", "gpt2", "--n-heads", "7"]) == 1
    assert "not divisible" in capsys.readouterr().err
