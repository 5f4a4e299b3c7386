"""Trainer checkpoints: everything `--resume` needs to continue a run exactly where it stopped.

    checkpoints/step_000500/
        config.json, model.safetensors, tokenizer.json   the llmlab checkpoint (llmlab.model.checkpoint)
        trainer.safetensors                              optimizer moments, torch/CUDA RNG states
        trainer.json                                     step, data position, optimizer hyperparameters,
                                                         numpy/python RNG states, the run's config
    checkpoints/latest -> step_000500                    a symlink, so `checkpoints/latest` is a checkpoint

Nothing is pickled: tensors go to safetensors, everything else to JSON. A checkpoint directory is
written under a temporary name and renamed into place, and `latest` is swapped by an atomic rename, so
a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import CheckpointError
from llmlab.files import atomic_path, fsync_path, fsync_tree, write_json
from llmlab.model import GPT, GPTConfig, load_checkpoint, save_checkpoint
from llmlab.train.distributed import DistInfo, unwrap

TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
LATEST = "latest"


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step:06d}"


# --- RNG states -------------------------------------------------------------------------------------

def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) of every random generator training touches: torch, CUDA, numpy, python."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return tensors, {
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def restore_rng(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# --- optimizer state ----------------------------------------------------------------------------------

def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into safetensors-able tensors and a JSON remainder."""
    tensors, scalars = {}, {}
    for key, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{key}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(key), {})[name] = value
    return tensors, {
        "param_groups": sd["param_groups"],
        "keys": [[str(k), isinstance(k, int)] for k in sd["state"]],
        "scalars": scalars,
    }


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict = {}
    for key, is_int in meta["keys"]:
        entry = dict(meta["scalars"].get(key, {}))
        prefix = f"optim.{key}."
        entry.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state[int(key) if is_int else key] = entry
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (collective under FSDP: every rank must call this)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


# --- save / load -------------------------------------------------------------------------------------

def save_trainer_checkpoint(
    checkpoints: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    info: DistInfo,
    fsdp: bool = False,
    tokenizer_file: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
    keep: int = 0,
    extra: Callable[[Path], None] | None = None,
) -> Path | None:
    """Write step `step` atomically and point `latest` at it; returns its directory on the main process.

    `extra(directory)` adds a stage's own files (a LoRA adapter) before the directory is renamed into
    place, so `latest` never names a checkpoint that lacks them. A failed write (a full disk) removes
    the partial directory and raises CheckpointError; the previous checkpoint stays `latest`.

    Collective in a distributed run: every process calls it (FSDP gathers shards, RNG states of all
    ranks are collected); only rank 0 writes.
    """
    model_sd, optim_sd = _full_state(model, optimizer, fsdp)
    rng_tensors, rng_json = capture_rng()
    if info.enabled:
        gathered: list = [None] * info.world
        dist.all_gather_object(gathered, (rng_tensors, rng_json))
    else:
        gathered = [(rng_tensors, rng_json)]
    if not info.is_main:
        return None
    final = step_dir(checkpoints, step)
    tmp = checkpoints / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_step(tmp, step, model, model_sd, optim_sd, gathered, trainer_state, fsdp, tokenizer_file, metadata)
        if extra is not None:
            extra(tmp)
        fsync_tree(tmp)
    except (OSError, SafetensorError) as e:  # a full disk, a quota: keep the last good checkpoint as it was
        shutil.rmtree(tmp, ignore_errors=True)
        last = resolve_latest(checkpoints)
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {checkpoints} ({getattr(e, 'strerror', None) or e}); nothing was replaced",
            hint=(f"free disk space, then --resume continues from {last.name}" if last is not None
                  else "free disk space and start the run again"),
        ) from e
    if final.exists():  # a re-run of a step after resuming from an earlier one
        shutil.rmtree(final)
    os.replace(tmp, final)
    point_latest(checkpoints, final.name)
    fsync_path(checkpoints)
    prune(checkpoints, keep)
    return final


def _write_step(tmp: Path, step: int, model: nn.Module, model_sd: dict, optim_sd: dict, gathered: list,
                trainer_state: dict[str, Any], fsdp: bool, tokenizer_file: str | os.PathLike | None,
                metadata: dict[str, Any] | None) -> None:
    """The files of one trainer checkpoint, written into the directory `tmp`."""
    gpt: GPT = unwrap(model)
    if fsdp:  # rebuild a plain CPU model from the gathered full state, for the standard format
        gpt = GPT(gpt.config)
        gpt.load_state_dict(model_sd)
    save_checkpoint(tmp, gpt, tokenizer_file=tokenizer_file, metadata={"step": step, **(metadata or {})})
    optim_tensors, optim_json = _flatten_optimizer(optim_sd)
    tensors = dict(optim_tensors)
    for rank, (t, _) in enumerate(gathered):
        tensors.update({f"rank{rank}.{k}": v.contiguous() for k, v in t.items()})
    with atomic_path(tmp / TRAINER_TENSORS) as p:
        save_file(tensors, str(p))
    write_json(tmp / TRAINER_JSON, {
        "step": step,
        "optimizer": optim_json,
        "rng": [j for _, j in gathered],
        **trainer_state,
    }, indent=None)


def point_latest(checkpoints: Path, name: str) -> None:
    """Swap the `latest` symlink to `name` with one rename (atomic on POSIX)."""
    tmp = checkpoints / f".{LATEST}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(name, tmp)
    os.replace(tmp, checkpoints / LATEST)


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the `keep` newest step directories (never the one `latest` names)."""
    if keep <= 0:
        return
    latest = resolve_latest(checkpoints)
    steps = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if latest is None or old.resolve() != latest.resolve():
            shutil.rmtree(old, ignore_errors=True)


def resolve_latest(checkpoints: Path) -> Path | None:
    """The directory `latest` points at, or None when the run has no checkpoint yet."""
    link = checkpoints / LATEST
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if not target.is_dir():
            raise CheckpointError(f"{link} points at {target}, which does not exist",
                                  hint="point it at an existing step_* directory or start without --resume")
        return target
    return None


def load_trainer_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: DistInfo,
    fsdp: bool = False,
) -> dict[str, Any]:
    """Restore optimizer and RNG state saved by `save_trainer_checkpoint`; returns trainer.json.

    The model's weights must already be loaded (see `load_weights`).
    """
    try:
        meta = json.loads((directory / TRAINER_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / TRAINER_TENSORS))
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optim_sd = _unflatten_optimizer(optim_tensors, meta["optimizer"])
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory} has no trainer state ({e.filename} is missing)",
                              hint="it is a model-only checkpoint: start a new run with init_from= instead") from e
    except (json.JSONDecodeError, SafetensorError, KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"trainer state in {directory} is corrupt or truncated ({e})",
                              hint="delete that step directory and point checkpoints/latest at an earlier one") from e
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(optim_sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state in {directory} does not fit this model ({e})",
                              hint="resume with the same model configuration as the interrupted run") from e
    rank = info.rank if len(meta["rng"]) == info.world else 0
    prefix = f"rank{rank}."
    restore_rng({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, meta["rng"][rank])
    return meta


def load_weights(directory: Path, expected: GPTConfig) -> GPT:
    """The checkpoint's model, checked to have the architecture this run builds."""
    model = load_checkpoint(directory)
    if model.config != expected:
        raise CheckpointError(
            f"{directory} holds a different model ({model.config}) than this run builds ({expected})",
            hint="resume with the same model options as the interrupted run",
        )
    return model.train()
