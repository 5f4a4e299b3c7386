"""The quickstart: budget planning (fast) and the whole pipeline end to end on a tiny budget (slow)."""

import json

import pytest

from llmlab.quickstart import plan


def test_budget_split_reserves_evaluation_time():
    b = plan.split_budget(1000)
    assert b.pretrain == pytest.approx(plan.PRETRAIN_SHARE * (1000 - plan.EVAL_RESERVE_S))
    assert b.pretrain + b.sft == pytest.approx(1000 - plan.EVAL_RESERVE_S)
    tiny = plan.split_budget(10)
    assert tiny.pretrain == plan.MIN_PRETRAIN_S and tiny.sft == plan.MIN_SFT_S


def test_chinchilla_sizing_when_data_is_plentiful():
    n, reason = plan.optimal_params(compute_flops=6e15, tokens_available=10**12)
    assert n == pytest.approx((6e15 / 120) ** 0.5)  # C = 6ND with D = 20N
    assert "Chinchilla" in reason


def test_data_limited_sizing_spends_compute_on_a_bigger_model():
    n, reason = plan.optimal_params(compute_flops=6e15, tokens_available=10**6)
    assert n == pytest.approx(6e15 / (6 * plan.MAX_EPOCHS * 10**6))
    assert n > (6e15 / 120) ** 0.5 and "data-limited" in reason


def test_plan_model_picks_the_depth_closest_to_the_target():
    p = plan.plan_model(seconds=600, flops_per_second=5e10, tokens_available=2_000_000, vocab_size=4096,
                        context_length=256)
    others = [plan.plan_model(600, 5e10, 2_000_000, 4096, 256, max_depth=d).params for d in range(1, 9)]
    import math
    assert all(abs(math.log(p.params / p.target_params)) <= abs(math.log(o / p.target_params)) + 1e-9 for o in others)
    assert p.compute_flops == 600 * 5e10


def test_a_gpu_buys_a_far_larger_compiled_model_and_stops_after_its_passes_over_the_data():
    budget, corpus = 0.8 * (1200 - plan.EVAL_RESERVE_S), 2_000_000  # the default 20 minutes, a small crawl
    cpu = plan.plan_pretraining(budget, "cpu", 2e11, corpus, 4096, 256)  # 200 GFLOP/s measured fp32
    gpu = plan.plan_pretraining(budget, "cuda", 989e12, corpus, 4096, 256)  # H100/H200 datasheet bf16
    assert not cpu.compile and gpu.compile and gpu.micro_batch > cpu.micro_batch
    assert gpu.model.params > 10 * cpu.model.params and gpu.model.depth == 12
    assert cpu.expected_steps < cpu.max_steps  # the CPU's deadline comes first
    passes = plan.MAX_EPOCHS * corpus / (gpu.micro_batch * 256)
    assert gpu.max_steps == gpu.expected_steps == pytest.approx(passes, abs=1)  # the GPU's data runs out first


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    from llmlab.cli import main

    out = tmp_path / "run"
    assert main(["quickstart", "--minutes", "3", "--max-pages", "40", "--no-serve", "--out", str(out)]) == 0
    state = json.loads((out / "quickstart.json").read_text())
    stages = state["stages"]
    assert list(stages) == ["site", "crawl", "clean", "index", "tokenizer", "pretrain", "sft", "eval", "rag", "report"]
    for path in ("crawl/pages.warc.gz", "clean/documents.parquet", "clean/stats.md", "tokenizer/tokenizer.json",
                 "shards/meta.json", "pretrain/report.md", "pretrain/checkpoints/latest/model.safetensors",
                 "sft/checkpoints/latest/model.safetensors", "figures/loss.png", "figures/tokenizers.png",
                 "index/index.sqlite", "report.md"):
        assert (out / path).exists(), path
    meta = json.loads((out / "shards/meta.json").read_text())
    report = (out / "report.md").read_text()
    assert f"**{meta['tokens']:,} tokens**" in report
    assert f"**{stages['clean']['summary']['documents_out']} documents**" in report
    assert stages["crawl"]["summary"]["pages_stored"] >= 30
    assert stages["index"]["summary"]["documents"] == stages["clean"]["summary"]["documents_out"]
    rag = stages["rag"]["summary"]
    assert "## Answers from the crawl (RAG)" in report
    if "skipped" not in rag:  # SmolLM2 installed: its answers alone and with passages, with their sources
        assert rag["questions"] > 0 and {"alone", "rag"} <= set(rag) and rag["samples"][0]["sources"]
        assert rag["samples"][0]["sources"][0] in report
    for name in ("pretrain", "sft"):  # each training stage ends on its deadline, whatever the machine's load
        assert stages[name]["seconds"] <= stages[name]["summary"]["planned_seconds"] + 3, stages[name]
    assert stages["pretrain"]["summary"]["final"]["val_loss"] < 8.4  # below uniform over 4,096 tokens (ln 4096 = 8.32) + noise
    # A second run skips every finished stage and leaves the results as they were.
    assert main(["quickstart", "--minutes", "3", "--max-pages", "40", "--no-serve", "--out", str(out)]) == 0
    again = json.loads((out / "quickstart.json").read_text())
    assert again["stages"]["pretrain"] == stages["pretrain"]
