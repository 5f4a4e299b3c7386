"""The training loop: it learns, resumes exactly, scales to 2 processes, and refuses bad inputs clearly."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.model import GPT, load_checkpoint, preset
from llmlab.train import TrainConfig, Trainer, TrainingDiverged, load_config, lm_loss
from llmlab.train.resume import resolve_latest
from llmlab.train.data import WindowBatches, split_stream
from llmlab.train.optim import build_optimizer, decay_names, lr_at
from llmlab.train.pretrain import prepare, pretrain

WORDS = "the a cat dog sat ran on under mat log big small red quick slow and then".split()


def corpus(n_docs: int = 150, seed: int = 0) -> list[str]:
    """Sentences from a small grammar: learnable structure, no external data."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            s = f"the {rng.choice(WORDS[6:12])} {rng.choice(WORDS[4:8])} on the {rng.choice(WORDS[8:10])}"
            sentences.append(s.capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with tokenizer/tokenizer.json and shards/ written by llmlab's own tokenizer stage."""
    from llmlab.tokenizer import train_bpe
    from llmlab.tokenizer.shards import write_shards

    root = tmp_path_factory.mktemp("run")
    docs = corpus()
    tok = train_bpe(docs, vocab_size=300)
    (root / "tokenizer").mkdir()
    tok.save(root / "tokenizer" / "tokenizer.json")
    write_shards(docs, tok, root / "shards")
    return root


def tiny_config(run_dir, out, **kw) -> TrainConfig:
    values = dict(
        shards=str(run_dir / "shards"), out_dir=str(out), depth=1, context_length=32, micro_batch=4,
        max_steps=8, warmup_steps=2, lr=3e-3, eval_every=4, eval_tokens=256, checkpoint_every=4, log_every=2,
        sample_tokens=0, peak_flops=1e11, val_fraction=0.1, threads=1,  # tiny models: 1 thread is fastest
        device="cpu",  # exact comparisons between runs: the same kernels with a GPU visible (no TF32)
    )
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("LLMLAB_PROGRESS", "0")


# --- learning -----------------------------------------------------------------------------------------

def test_loss_decreases_and_run_leaves_report_metrics_and_checkpoint(run_dir, tmp_path):
    cfg = tiny_config(run_dir, tmp_path / "pre", max_steps=40, eval_every=20, checkpoint_every=20,
                      sample_tokens=12, sample_prompts=["The big"])
    result = pretrain(cfg)
    first, last = result.losses[0][1], np.mean([l for _, l in result.losses[-5:]])
    assert last < first - 1.5, (first, last)
    ev = result.last_eval
    assert ev["val_loss"] < 3.0 and ev["val_ppl"] == pytest.approx(math.exp(ev["val_loss"]))
    assert 0 < ev["val_bpb"] < ev["val_loss"] / math.log(2)  # several bytes per token
    out = tmp_path / "pre"
    report = (out / "report.md").read_text()
    assert "val_loss" in report and "tokens_per_second" in report and (out / "loss.png").stat().st_size > 1000
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tok_s", "mfu"} <= set(records[0]) and any("val_bpb" in r for r in records)
    latest = resolve_latest(out / "checkpoints")
    assert latest.name == "step_000040"
    model = load_checkpoint(out / "checkpoints" / "latest")  # the symlink is itself a checkpoint path
    assert (out / "checkpoints" / "latest" / "tokenizer.json").is_file()
    assert model.config.vocab_size == json.loads((run_dir / "shards" / "meta.json").read_text())["vocab_size"]
    (prompt, text), = ev["samples"]  # sampled by llmlab.infer from the fixed prompt
    assert prompt == "The big" and (" on" in text or " the" in text), text


# --- exact resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["random", "packed"])
def test_resume_continues_exactly_like_an_uninterrupted_run(run_dir, tmp_path, sampling):
    kw = dict(sampling=sampling, model={"dropout": 0.1})  # dropout: the RNG state must be restored too
    full = pretrain(tiny_config(run_dir, tmp_path / "full", **kw))
    first = pretrain(tiny_config(run_dir, tmp_path / "cut", **kw), until_step=4)
    assert [s for s, _ in first.losses] == [1, 2, 3, 4]
    rest = pretrain(tiny_config(run_dir, tmp_path / "cut", **kw), resume=True)
    assert [s for s, _ in rest.losses] == [5, 6, 7, 8]
    assert first.losses + rest.losses == full.losses  # bitwise-equal floats
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest").state_dict()
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "latest").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == sorted(set(steps))  # no duplicated records after the resume


def test_corrupt_checkpoint_on_resume_is_a_clear_error(run_dir, tmp_path):
    pretrain(tiny_config(run_dir, tmp_path), until_step=4)
    state = tmp_path / "checkpoints" / "step_000004" / "trainer.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        prepare(tiny_config(run_dir, tmp_path), resume=True)


# --- distributed ----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out_file: str, resume: bool = False) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LLMLAB_PROGRESS="0",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from llmlab.train.distributed import shutdown

    try:
        result = pretrain(TrainConfig(**cfg_dict), resume=resume)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump({"losses": result.losses, "val_loss": result.last_eval["val_loss"]}, f)
    finally:
        shutdown()


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(run_dir, tmp_path):
    torch.set_num_threads(1)
    single = pretrain(tiny_config(run_dir, tmp_path / "one", micro_batch=4))
    cfg = tiny_config(run_dir, tmp_path / "two", micro_batch=2).to_dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path / "ddp.json")), nprocs=2, join=True)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert [s for s, _ in ddp["losses"]] == [s for s, _ in single.losses]
    np.testing.assert_allclose([l for _, l in ddp["losses"]], [l for _, l in single.losses], rtol=1e-5)
    assert ddp["val_loss"] == pytest.approx(single.last_eval["val_loss"], rel=1e-5)


def test_gradient_accumulation_matches_one_big_batch(run_dir, tmp_path):
    big = pretrain(tiny_config(run_dir, tmp_path / "big", micro_batch=4, max_steps=4))
    accum = pretrain(tiny_config(run_dir, tmp_path / "acc", micro_batch=2, tokens_per_step=4 * 32, max_steps=4))
    np.testing.assert_allclose([l for _, l in accum.losses], [l for _, l in big.losses], rtol=1e-5)


def test_activation_checkpointing_trains_the_same_run(run_dir, tmp_path):
    plain = pretrain(tiny_config(run_dir, tmp_path / "plain", max_steps=4, model={"dropout": 0.1}))
    training = prepare(tiny_config(run_dir, tmp_path / "ckpt", max_steps=4, activation_checkpointing=True,
                                   model={"dropout": 0.1}))
    assert training.trainer.gpt.activation_checkpointing
    recomputed = training.trainer.fit()
    np.testing.assert_allclose([l for _, l in recomputed.losses], [l for _, l in plain.losses], rtol=1e-6)


def test_each_process_takes_its_own_gpu_and_too_few_gpus_is_a_clear_error(monkeypatch):
    from llmlab.train.hardware import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", 0) == torch.device("cuda", 0)
    assert resolve_device("cpu", 1) == torch.device("cpu")
    for name in ["auto", "cuda"]:
        with pytest.raises(ConfigError, match="process 1 of this run needs GPU 1, but 1 are visible"):
            resolve_device(name, 1)


# --- optimiser and schedule -------------------------------------------------------------------------------

def test_learning_rate_schedule_values():
    peak, warm, total = 1e-3, 10, 110
    assert lr_at(0, peak, warm, total, 0.1) == pytest.approx(1e-4)
    assert lr_at(9, peak, warm, total, 0.1) == pytest.approx(peak)
    assert lr_at(10, peak, warm, total, 0.1) == pytest.approx(peak)
    assert lr_at(60, peak, warm, total, 0.1) == pytest.approx(0.1 * peak + 0.5 * 0.9 * peak)  # cosine midpoint
    assert lr_at(110, peak, warm, total, 0.1) == pytest.approx(1e-4)
    assert lr_at(500, peak, warm, total, 0.1) == pytest.approx(1e-4)  # stays at the floor
    values = [lr_at(s, peak, warm, total, 0.1) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_weight_decay_only_on_linear_weights(name):
    model = GPT(preset(name))
    decay, no_decay = decay_names(model)
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    expected_decay = {f"{n}.weight" for n in linear if n != "lm_head" or not model.config.tie_embeddings}
    assert set(decay) == expected_decay
    assert "tok_emb.weight" in no_decay and all(not n.endswith(".bias") for n in decay)
    assert any("norm" in n for n in no_decay) and not any("norm" in n for n in decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_decay_is_decoupled_and_skips_norms():
    model = GPT(preset("tiny"))
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95), eps=1e-8)
    w, g = model.blocks[0].mlp.up.weight, model.blocks[0].attn_norm.weight
    w0, g0 = w.detach().clone(), g.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decoupled decay can move a weight
    opt.step()
    torch.testing.assert_close(w, w0 * (1 - 0.1 * 0.5))
    assert torch.equal(g, g0)


# --- pluggable parts and robustness -----------------------------------------------------------------------

class ListBatches:
    """A minimal batch source (the SFT/DPO kind): fixed batches with masked targets, position as state."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_custom_batches_with_masked_targets_and_custom_loss(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 512, (2, 16))
    y = x.roll(-1, 1).clone()
    y[:, :8] = -100  # a prompt: no loss there
    seen = []

    def loss_fn(model, batch):
        assert (batch["targets"][:, :8] == -100).all()
        loss = lm_loss(model, batch)
        seen.append(loss.item())
        return loss, {"masked": 8.0}

    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=5, warmup_steps=0, lr=1e-2, checkpoint_every=100,
                      log_every=1, peak_flops=1e11, threads=1)
    result = Trainer(cfg, GPT(preset("tiny")), ListBatches([{"input_ids": x, "targets": y}]),
                     loss_fn=loss_fn, stage="sft").fit()
    assert [l for _, l in result.losses] == seen and seen[-1] < seen[0]
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["masked"] == 8.0
    assert resolve_latest(tmp_path / "checkpoints").name == "step_000005"


def test_mfu_counts_the_head_only_where_the_models_loss_takes_it(tmp_path):
    x = torch.randint(0, 512, (2, 16))
    y = x.roll(-1, 1).clone()
    y[:, :12] = -100  # 8 of 32 positions have a target
    batch = {"input_ids": x, "targets": y}
    model = GPT(preset("tiny"))
    body, full = model.flops_per_token(16, head=False), model.flops_per_token(16)
    assert full - body == 6 * model.config.vocab_size * model.config.d_model

    def cfg(out):
        return TrainConfig(out_dir=str(tmp_path / out), max_steps=2, warmup_steps=0, checkpoint_every=100,
                           peak_flops=1e11, threads=1)

    own = Trainer(cfg("own"), model, ListBatches([batch]))  # lm_loss: the fused head skips masked rows
    assert own._model_flops(batch) == 32 * body + 8 * (full - body)
    other = Trainer(cfg("other"), GPT(preset("tiny")), ListBatches([batch]), loss_fn=lambda m, b: lm_loss(m, b))
    assert other._model_flops(batch) == 32 * full  # a loss of its own may take every position's logits
    result = own.fit()
    assert result.mfu == pytest.approx(2 * own._model_flops(batch) / own.elapsed / 1e11)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    x = torch.randint(0, 512, (2, 16))
    calls = []

    def exploding(model, batch):
        loss = lm_loss(model, batch)
        calls.append(1)
        return loss * float("nan") if len(calls) == 6 else loss

    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=10, warmup_steps=0, checkpoint_every=4, peak_flops=1e11, threads=1)
    trainer = Trainer(cfg, GPT(preset("tiny")), ListBatches([{"input_ids": x, "targets": x.roll(-1, 1)}]),
                      loss_fn=exploding)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 6.*step_000004"):
        trainer.fit()
    assert resolve_latest(tmp_path / "checkpoints").name == "step_000004"
    assert not (tmp_path / "checkpoints" / "step_000006").exists()
    load_checkpoint(tmp_path / "checkpoints" / "latest")
    # Noticed steps later (the loop does not wait for the device each step), the NaN step was still skipped.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# --- no waiting on the device, prefetching, deadlines ----------------------------------------------------

READS = ("item", "tolist", "__float__", "__int__", "__bool__")


def test_the_loop_reads_device_values_only_where_it_logs_evaluates_or_saves(tmp_path, monkeypatch):
    x = torch.randint(0, 512, (2, 16))
    reads = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            caller = __import__("sys")._getframe(1)
            if caller.f_code.co_filename.endswith(os.path.join("train", "loop.py")):
                reads.append(caller.f_code.co_name)
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=12, warmup_steps=0, checkpoint_every=100, log_every=4,
                      peak_flops=1e11, threads=1)
    result = Trainer(cfg, GPT(preset("tiny")), ListBatches([{"input_ids": x, "targets": x.roll(-1, 1)}])).fit()
    assert [s for s, _ in result.losses] == list(range(1, 13))
    # One transfer per log line (steps 4, 8, 12); the host batch is counted before it is copied over.
    assert [r for r in reads if r != "_model_flops"] == ["_numbers"] * 3


@pytest.mark.parametrize("sampling", ["random", "packed"])
def test_prefetching_changes_nothing_and_resumes_exactly(run_dir, tmp_path, sampling):
    plain = pretrain(tiny_config(run_dir, tmp_path / "plain", sampling=sampling, checkpoint_every=3))
    kw = dict(sampling=sampling, prefetch=True, checkpoint_every=3)
    first = pretrain(tiny_config(run_dir, tmp_path / "cut", **kw), until_step=5)  # the thread has read step 6's batch
    rest = pretrain(tiny_config(run_dir, tmp_path / "cut", **kw), resume=True)  # from the checkpoint at step 3
    assert first.losses == plain.losses[:5]
    assert first.losses[:3] + rest.losses == plain.losses


def test_prefetcher_position_is_after_the_batches_handed_out():
    from llmlab.train.prefetch import Prefetcher

    batches = [{"input_ids": torch.full((1, 2), i)} for i in range(6)]
    ahead = Prefetcher(ListBatches(batches), pin_memory=False)
    assert ahead.state_dict() == {"i": 0}
    assert [int(ahead.next_batch()["input_ids"][0, 0]) for _ in range(2)] == [0, 1]
    assert ahead.state_dict() == {"i": 2}  # the batch read ahead is not counted as taken
    ahead.load_state_dict({"i": 4})
    assert int(ahead.next_batch()["input_ids"][0, 0]) == 4 and ahead.state_dict() == {"i": 5}
    ahead.close()


def test_a_time_limit_ends_the_run_on_its_deadline_with_the_schedule_finished(tmp_path):
    x = torch.randint(0, 512, (2, 16))

    def slow(model, batch):  # ~20 steps fit in the limit, whatever the machine's load
        time.sleep(0.1)
        return lm_loss(model, batch)

    limit = 2.5
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=100_000, time_limit_s=limit, warmup_steps=2, lr=1e-3,
                      checkpoint_every=8, log_every=1, peak_flops=1e11, threads=1)
    trainer = Trainer(cfg, GPT(preset("tiny")), ListBatches([{"input_ids": x, "targets": x.roll(-1, 1)}]),
                      loss_fn=slow)
    started = time.perf_counter()
    result = trainer.fit()
    took = time.perf_counter() - started
    assert result.out_of_time and 5 <= result.step <= 25, result.step
    assert took <= limit + 0.5, took  # the last step left room for the final checkpoint
    assert resolve_latest(tmp_path / "checkpoints").name == f"step_{result.step:06d}"
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert lrs[1] == pytest.approx(1e-3) and lrs[-1] < 0.2e-3  # warmup, then the cosine ran out with the time
    assert trainer.throughput(result)["wall_time_s"] <= limit + 0.5


# --- distillation ----------------------------------------------------------------------------------------

def test_distillation_loss_is_hintons_formula():
    import torch.nn.functional as F

    from llmlab.train.distill import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, :2] = -100
    keep = targets.flatten() != -100
    T = 3.0
    kl = F.kl_div(F.log_softmax(student / T, -1), F.log_softmax(teacher / T, -1), log_target=True, reduction="none")
    kl = kl.sum(-1).flatten()[keep].mean()
    ce = F.cross_entropy(student.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss, parts = distillation_loss(student, teacher, targets, alpha=0.3, temperature=T)
    assert torch.allclose(parts["kl"], kl) and torch.allclose(parts["ce"], ce)
    assert torch.allclose(loss, 0.3 * ce + 0.7 * T**2 * kl)
    same, _ = distillation_loss(teacher, teacher, targets, alpha=0.0, temperature=T)
    assert same.abs().item() < 1e-6  # a student equal to its teacher has nothing left to learn from it


def test_distillation_trains_a_student_that_resumes_exactly_and_refuses_a_foreign_teacher(run_dir, tmp_path):
    from llmlab.tokenizer import train_bpe
    from llmlab.train.distill import distill

    teacher = tmp_path / "teacher"
    pretrain(tiny_config(run_dir, teacher, depth=2, max_steps=8))
    full = distill(tiny_config(run_dir, tmp_path / "full", max_steps=8), str(teacher), alpha=0.5, temperature=2.0)
    distill(tiny_config(run_dir, tmp_path / "cut", max_steps=8), str(teacher), until_step=4)
    cut = distill(tiny_config(run_dir, tmp_path / "cut", max_steps=8), str(teacher), resume=True)
    assert [l for _, l in cut.losses] == [l for _, l in full.losses][4:]
    report = (tmp_path / "full" / "report.md").read_text()
    assert report.startswith("# Distillation report") and "distilled from" in report
    records = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any("kl" in r and "ce" in r for r in records)

    foreign = tmp_path / "foreign"
    import shutil

    shutil.copytree(resolve_latest(teacher / "checkpoints"), foreign)
    train_bpe(corpus()[:40], vocab_size=280).save(foreign / "tokenizer.json")
    with pytest.raises(CheckpointError, match="the teacher cannot read these shards"):
        distill(tiny_config(run_dir, tmp_path / "x"), str(foreign))
    with pytest.raises(ConfigError, match="alpha=1.5"):
        distill(tiny_config(run_dir, tmp_path / "y"), str(teacher), alpha=1.5)


def test_prune_cli_writes_a_smaller_checkpoint_curve_and_report_and_recovers(run_dir, tmp_path, capsys):
    from llmlab.cli import main
    from llmlab.model.loading import load_model
    from llmlab.model.prune import sparsity

    model_dir = tmp_path / "model"
    pretrain(tiny_config(run_dir, model_dir, depth=2, max_steps=40, eval_every=40, checkpoint_every=40))
    text = tmp_path / "held_out.txt"
    text.write_text(" ".join(corpus(5, seed=9)))
    out = tmp_path / "pruned"
    assert main(["prune", str(model_dir), "--method", "neurons", "--amount", "0.5", "--text", str(text), "--curve",
                 "--out", str(out), "--recover-steps", "6", "--shards", str(run_dir / "shards")]) == 0
    pruned, _ = load_model(out)
    original, _ = load_model(model_dir)
    assert pruned.config.d_ff == original.config.d_ff // 2 and pruned.num_params() < original.num_params()
    result = json.loads((out / "prune.json").read_text())
    curve = result["curve"]
    assert [a for a, _ in curve] == [round(0.1 * i, 1) for i in range(10)]
    assert curve[0][1] == result["perplexity"][0] and curve[-1][1] > curve[0][1]  # 90% of the neurons: worse
    assert math.isfinite(result["recovered_perplexity"]) and (out / "recover" / "checkpoints" / "latest").exists()
    assert (out / "prune_curve.png").stat().st_size > 0 and "perplexity" in (out / "report.md").read_text()
    assert main(["prune", str(model_dir), "--method", "magnitude", "--out", str(tmp_path / "m"),
                 "--recover-steps", "5", "--shards", str(run_dir / "shards")]) == 0
    recovered, _ = load_model(tmp_path / "m" / "recover")
    sparse, _ = load_model(tmp_path / "m")
    assert sparsity(recovered) == pytest.approx(0.5, abs=1e-3)  # the fine-tune kept the zeros
    assert not torch.equal(recovered.blocks[0].mlp.up.weight, sparse.blocks[0].mlp.up.weight)
    assert main(["prune", str(model_dir), "--method", "wanda", "--out", str(tmp_path / "w")]) == 1
    assert "--calibrate" in capsys.readouterr().err
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(" ".join(corpus(20, seed=3)))
    assert main(["prune", str(model_dir), "--method", "wanda", "--amount", "0.5", "--calibrate", str(calibration),
                 "--out", str(tmp_path / "w")]) == 0
    assert "scored with calibration text" in (tmp_path / "w" / "report.md").read_text()
    assert main(["prune", str(model_dir), "--method", "sparsegpt", "--amount", "0.5", "--calibrate", str(calibration),
                 "--out", str(tmp_path / "s")]) == 0
    assert sparsity(load_model(tmp_path / "s")[0]) == pytest.approx(0.5, abs=1e-3)


# --- data ------------------------------------------------------------------------------------------------

def test_windows_are_deterministic_shifted_and_split_across_processes():
    stream = np.arange(10_000, dtype=np.uint16)
    train, val = split_stream([stream[:6000], stream[6000:]], 0.1)
    assert sum(len(s) for s in val) == 1000 and val[-1].end == 4000
    one = WindowBatches(train, 16, micro_batch=4, seed=3)
    b = one.next_batch()
    assert torch.equal(b["targets"][:, :-1], b["input_ids"][:, 1:])
    assert (b["input_ids"] < 9000).all()  # never reads the validation tail
    ranks = [WindowBatches(train, 16, micro_batch=2, rank=r, world=2, seed=3) for r in range(2)]
    halves = torch.cat([r.next_batch()["input_ids"] for r in ranks])
    assert torch.equal(halves, b["input_ids"])


def test_packed_windows_cover_the_stream_once_per_epoch():
    train, _ = split_stream([np.arange(1000, dtype=np.uint16)], 0.01)
    batches = WindowBatches(train, 9, micro_batch=10, sampling="packed", seed=1)
    n = batches.n_positions
    firsts = torch.cat([batches.next_batch()["input_ids"][:, 0] for _ in range(math.ceil(n / 10))])[:n]
    assert sorted(firsts.tolist()) == list(range(0, 9 * n, 9))


# --- configuration and bad inputs -------------------------------------------------------------------------

def test_recipe_then_overrides_then_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('max_steps = 50\nlr = 1e-3\n[model]\ndropout = 0.2\n')
    cfg = load_config(str(recipe), ["lr=5e-4", "model.n_layers=3", "sample_prompts=['A', 'B']"], max_steps=7)
    assert (cfg.max_steps, cfg.lr, cfg.model, cfg.sample_prompts) == (7, 5e-4, {"dropout": 0.2, "n_layers": 3}, ["A", "B"])
    assert load_config("cpu-demo").context_length == 256
    with pytest.raises(ConfigError, match="unknown training option 'max_stpes'"):
        load_config(None, ["max_stpes=3"])
    with pytest.raises(ConfigError, match="no recipe"):
        load_config("nope-recipe")


def test_missing_or_truncated_shards_are_clear_errors(run_dir, tmp_path):
    with pytest.raises(InputError, match="no token shards"):
        prepare(tiny_config(run_dir, tmp_path, shards=str(tmp_path / "missing")))
    bad = tmp_path / "shards"
    bad.mkdir()
    for f in (run_dir / "shards").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    shard = sorted(bad.glob("*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(InputError):
        prepare(tiny_config(run_dir, tmp_path, shards=str(bad), tokenizer=str(run_dir / "tokenizer" / "tokenizer.json")))


def test_vocab_and_tokenizer_mismatches_are_refused_before_training(run_dir, tmp_path):
    vocab = json.loads((run_dir / "shards" / "meta.json").read_text())["vocab_size"]
    with pytest.raises(CheckpointError, match=f"vocabulary of {vocab} tokens but the model's embedding has 256"):
        prepare(tiny_config(run_dir, tmp_path, model={"vocab_size": 256}))
    from llmlab.tokenizer import train_bpe

    other = tmp_path / "other.json"
    train_bpe(corpus(seed=5)[:20], vocab_size=280).save(other)
    with pytest.raises(CheckpointError, match="not the one that encoded the shards"):
        prepare(tiny_config(run_dir, tmp_path, tokenizer=str(other)))
    with pytest.raises(ConfigError, match="not a multiple"):
        prepare(tiny_config(run_dir, tmp_path, tokens_per_step=100))


def test_cli_trains_from_a_recipe_and_resumes(run_dir, tmp_path, capsys):
    from llmlab.cli import main

    args = ["train", "--recipe", "tiny", "--shards", str(run_dir / "shards"), "--out", str(tmp_path),
            "--steps", "6", "--set", "checkpoint_every=3", "--set", "context_length=32", "--set", "peak_flops=1e11", "--set", "threads=1"]
    assert main(args) == 0
    assert "step_000006" in capsys.readouterr().out
    assert main(args) == 1  # a second fresh run would overwrite the first
    assert "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume", "--steps", "8"]) == 0  # extends the run: steps 7 and 8 only
    assert resolve_latest(tmp_path / "checkpoints").name == "step_000008"
    losses = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in losses][-2:] == [6, 8]


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_exactly(run_dir, tmp_path):
    losses = {}
    for name, kw in [("ddp", {}), ("fsdp", {"distributed": "fsdp"}),
                     ("cut", {"distributed": "fsdp", "max_steps": 8})]:
        cfg = tiny_config(run_dir, tmp_path / name, micro_batch=2, **kw).to_dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path / f"{name}.json")), nprocs=2, join=True)
        losses[name] = json.loads((tmp_path / f"{name}.json").read_text())["losses"]
    np.testing.assert_allclose([l for _, l in losses["fsdp"]], [l for _, l in losses["ddp"]], rtol=1e-5)
    # resume the FSDP run from its step-4 checkpoint: steps 5..8 again, exactly
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    os.symlink("step_000004", tmp_path / "cut" / "checkpoints" / "latest")
    cfg = tiny_config(run_dir, tmp_path / "cut", micro_batch=2, distributed="fsdp").to_dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path / "resumed.json"), True), nprocs=2, join=True)
    resumed = json.loads((tmp_path / "resumed.json").read_text())["losses"]
    assert resumed == losses["fsdp"][4:]


# --- review fixes: exact resume, derived model fields, one-line errors, safe checkpoints, honest reports --------

def test_resume_with_dropout_is_exact_when_the_matmul_peak_is_measured(run_dir, tmp_path, monkeypatch):
    """Measuring the peak (for MFU) after the RNG is restored must not draw from it."""
    from llmlab.train import loop

    kw = dict(model={"dropout": 0.1}, peak_flops=None)
    monkeypatch.setattr(loop, "_PEAKS", {})
    full = pretrain(tiny_config(run_dir, tmp_path / "full", **kw))
    first = pretrain(tiny_config(run_dir, tmp_path / "cut", **kw), until_step=4)
    monkeypatch.setattr(loop, "_PEAKS", {})  # a new process: the resumed run measures again
    rest = pretrain(tiny_config(run_dir, tmp_path / "cut", **kw), resume=True)
    assert first.losses + rest.losses == full.losses


def test_the_best_measured_peak_is_remembered(tmp_path, monkeypatch):
    from llmlab.train.hardware import best_measured_peak, peak_cache_path

    monkeypatch.setenv("LLMLAB_CACHE_DIR", str(tmp_path))
    assert best_measured_peak("cpu x", 5e10) == 5e10
    assert best_measured_peak("cpu x", 2e10) == 5e10  # measured under load: the machine can do more
    assert best_measured_peak("cpu y", 1e10) == 1e10
    assert json.loads(peak_cache_path().read_text()) == {"cpu x": 5e10, "cpu y": 1e10}


def test_preset_with_a_new_width_gets_the_derived_fields_of_that_width(run_dir, tmp_path, capsys):
    from llmlab.cli import main

    out = tmp_path / "out"
    args = ["train", "--preset", "gpt2", "--shards", str(run_dir / "shards"), "--out", str(out), "--steps", "2",
            "--set", "model.d_model=64", "--set", "model.n_heads=4", "--set", "model.context_length=32",
            "--set", "model.n_layers=1", "--set", "peak_flops=1e11", "--set", "threads=1",
            "--set", "eval_every=100", "--set", "sample_tokens=0"]
    assert main(args) == 0, capsys.readouterr().err
    config = load_checkpoint(out / "checkpoints" / "latest").config
    assert (config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff) == (64, 4, 4, 16, 256)


@pytest.mark.parametrize("extra, message", [
    (["--set", "context_length=0"], "context_length=0 must be at least 2"),
    (["--lr=-1e-3"], "lr=-0.001 must be a positive number"),
    (["--lr", "0"], "lr=0.0 must be a positive number"),
    (["--set", "weight_decay=-0.1"], "weight_decay=-0.1 must not be negative"),
    (["--set", "grad_clip=-1"], "grad_clip=-1 must not be negative"),
    (["--out", "FILE"], "is a file, not a directory"),
])
def test_bad_training_options_are_one_line_errors_before_any_work(run_dir, tmp_path, capsys, extra, message):
    from llmlab.cli import main

    (tmp_path / "FILE").write_text("not a directory")
    extra = [str(tmp_path / "FILE") if a == "FILE" else a for a in extra]
    args = ["train", "--shards", str(run_dir / "shards"), "--out", str(tmp_path / "out"), "--steps", "2",
            "--set", "threads=1", *extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_full_disk_while_saving_keeps_the_last_checkpoint_and_says_so(run_dir, tmp_path, monkeypatch):
    import errno

    from llmlab.train import resume

    trainer = prepare(tiny_config(run_dir, tmp_path, max_steps=8)).trainer
    trainer.fit(until_step=4)
    real_save = resume.save_file

    def full_disk(tensors, path, *args, **kwargs):
        real_save(tensors, path, *args, **kwargs)  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="(?s)No space left on device.*--resume continues from step_000004"):
        trainer.fit()
    checkpoints = tmp_path / "checkpoints"
    assert resolve_latest(checkpoints).name == "step_000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_000004"]  # no partial .tmp left


def test_report_names_the_run_and_the_tokenizer_it_used(run_dir, tmp_path):
    out = tmp_path / "demo" / "pretrain"
    pretrain(tiny_config(run_dir, out, max_steps=2, eval_every=2))
    report = (out / "report.md").read_text()
    assert report.startswith("# Pretraining report: demo\n")
    assert f"| tokenizer | {run_dir / 'tokenizer' / 'tokenizer.json'} |" in report
