"""Parameters, memory, FLOPs, time, cost and the Chinchilla-optimal size of a transformer, in closed form.

Pick the model with --preset (default gpt2), --depth (the size dial used for from-scratch runs) or
--config (an llmlab checkpoint or a Hugging Face config.json / directory); any field can be
overridden (--n-layers, --d-model, ...). Nothing is built or downloaded, so 175B costs nothing.

Formulas (see llmlab/estimate.py): training FLOPs C = 6ND (+ attention, PaLM appendix B);
memory 16 bytes/parameter for weights + gradients + AdamW states (fp32 or mixed precision),
activations after Korthikanti et al. 2022; KV cache 2 x layers x kv_heads x head_dim x tokens x bytes;
Chinchilla (Hoffmann et al. 2022): D ~= 20 N, C ~= 6 N D.

examples:
  llmlab estimate --preset gpt2                                  # ~124M parameters
  llmlab estimate --preset gpt3-175b --tokens 300e9 --gpu a100 --gpus 1024   # ~3.1e23 FLOPs
  llmlab estimate --preset llama-7b --precision fp16 --kv-tokens 2048        # KV cache ~1 GB
  llmlab estimate --depth 6 --vocab-size 8192 --json
  llmlab estimate --budget 5.76e23                               # Chinchilla: ~70B params, ~1.4T tokens
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmlab.errors import ConfigError

OVERRIDES = ("vocab_size", "context_length", "n_layers", "n_heads", "n_kv_heads", "d_model", "head_dim", "d_ff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmlab.estimate import GPUS
    from llmlab.model.config import PRESETS

    g = parser.add_argument_group("model (one of --preset, --depth, --config; then overrides)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration (default: gpt2)")
    g.add_argument("--depth", type=int, help="the size dial: width 64 x depth, heads of 64 (llmlab.model.from_depth)")
    g.add_argument("--family", choices=["gpt2", "llama"], default="gpt2", help="architecture family for --depth")
    g.add_argument("--config", help="an llmlab checkpoint directory, or a Hugging Face config.json (or its directory)")
    for name in OVERRIDES:
        g.add_argument("--" + name.replace("_", "-"), type=int, help=f"override {name}")
    g.add_argument("--tie", dest="tie_embeddings", action="store_true", default=None, help="tie the head to the embedding")
    g.add_argument("--untie", dest="tie_embeddings", action="store_false", help="separate output head")

    g = parser.add_argument_group("workload")
    g.add_argument("--batch", type=int, default=8, help="training micro-batch, sequences (default: 8)")
    g.add_argument("--seq-len", type=int, help="training sequence length (default: the context length)")
    g.add_argument("--tokens", type=float, help="training tokens D, e.g. 300e9 (default: Chinchilla's 20 x params)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16",
                   help="training/inference number format (default: bf16 mixed precision)")
    g.add_argument("--kv-tokens", type=int, help="KV-cache length in tokens (default: the context length)")
    g.add_argument("--kv-batch", type=int, default=1, help="sequences in the KV cache (default: 1)")

    g = parser.add_argument_group("hardware and price")
    g.add_argument("--gpu", choices=sorted(GPUS), default="h100",
                   help="peak dense bf16 FLOP/s and a rough $/hour: " + ", ".join(
                       f"{k} {v.peak_flops / 1e12:.0f}T ${v.price_per_hour:.2f}" for k, v in GPUS.items()))
    g.add_argument("--peak-flops", type=float, help="override the GPU's peak FLOP/s (e.g. a measured CPU peak)")
    g.add_argument("--gpus", type=int, default=1, help="number of GPUs (default: 1)")
    g.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default: 0.4)")
    g.add_argument("--price", type=float, help="USD per GPU-hour (default: the GPU's rough on-demand price)")
    g.add_argument("--budget", type=float, help="compute budget in FLOPs for the Chinchilla line (default: this run's 6ND)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _config(args):
    from llmlab.model.config import from_depth, preset

    chosen = [x for x in ("preset", "depth", "config") if getattr(args, x) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of --preset, --depth, --config (got {', '.join(chosen)})")
    if args.depth is not None:
        config = from_depth(args.depth, args.vocab_size or 50257, args.context_length or 512, args.family)
    elif args.config is not None:
        config = _config_from_file(Path(args.config))
    else:
        config = preset(args.preset or "gpt2")
    changes = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    if args.tie_embeddings is not None:
        changes["tie_embeddings"] = args.tie_embeddings
    if "n_heads" in changes or "d_model" in changes:
        changes.setdefault("head_dim", None)  # re-derive d_model / n_heads unless given
        changes.setdefault("n_kv_heads", config.n_kv_heads if config.n_kv_heads != config.n_heads else None)
    if "d_model" in changes and "d_ff" not in changes:
        changes["d_ff"] = None
    try:
        return config.replace(**changes) if changes else config
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _config_from_file(path: Path):
    from llmlab.model.config import GPTConfig

    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no config.json at {path}")
    data = json.loads(file.read_text(encoding="utf-8"))
    if "model" in data and isinstance(data["model"], dict):  # llmlab checkpoint
        return GPTConfig.from_dict(data["model"])
    from llmlab.model.hf import config_from_hf

    return config_from_hf(data)


def _num(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def _bytes(x: float) -> str:
    return f"{x / 1e9:.3g} GB" if x >= 1e8 else f"{x / 1e6:.3g} MB"


def _duration(s: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s:.3g} s"


def _table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows)])


def format_estimate(e) -> str:
    c, p, m = e.config, e.params, e.memory
    arch = (f"{c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']} heads"
            + (f" ({c['n_kv_heads']} kv)" if c["n_kv_heads"] != c["n_heads"] else "")
            + f", d_ff {c['d_ff']}, vocab {c['vocab_size']}, context {c['context_length']}, "
            + f"{c['positions']}/{c['norm']}/{c['activation']}, {'tied' if c['tie_embeddings'] else 'untied'}")
    total = p["total"]
    parts = [(k, f"{v:>15,}  {100 * v / total:5.1f}%") for k, v in p.items()
             if k not in ("total", "non-embedding", "active") and v]
    parts += [("total", f"{total:>15,}  ({_num(total)})"), ("non-embedding", f"{p['non-embedding']:>15,}")]
    if p["active"] != total:
        parts.append((f"active per token ({c['experts_per_token']} of {c['n_experts']} experts)",
                      f"{p['active']:>15,}  ({_num(p['active'])})"))
    hw = e.gpu
    sections = [
        "model: " + arch,
        _table("parameters", parts),
        _table(f"training memory ({e.precision}, AdamW, batch {e.batch} x {e.seq_len} tokens)", [
            ("weights", _bytes(m["weights"])), ("gradients", _bytes(m["gradients"])),
            ("AdamW states" + (" + fp32 master" if e.precision != "fp32" else ""), _bytes(m["optimizer"])),
            ("activations (flash attention)", _bytes(m["activations"])), ("total", _bytes(m["total"])),
            (f"{hw['name']}s ({hw['memory_gb']:g} GB) to hold the state, sharded (ZeRO-3/FSDP)",
             f"at least {e.gpus_to_hold['training_state']:,}"),
        ]),
        _table(f"inference ({e.precision})", [
            ("weights", _bytes(e.inference_weights_bytes)),
            (f"KV cache, {e.kv_cache['batch']} x {e.kv_cache['tokens']} tokens", _bytes(e.kv_cache["bytes"])),
            (f"{hw['name']}s to hold the weights", f"at least {e.gpus_to_hold['inference']:,}"),
        ]),
        _table(f"training compute for D = {_num(e.tokens)} tokens", [
            ("FLOPs per token (6N + attention)", f"{e.flops_per_token:.3g}"),
            ("C = 6ND", f"{e.training_flops['6ND']:.3g} FLOPs"),
            ("C with attention", f"{e.training_flops['with_attention']:.3g} FLOPs"),
            (f"time on {e.n_gpus} x {hw['name']} at {e.mfu:.0%} MFU", _duration(e.seconds)),
            (f"cost at ${hw['price_per_hour']:.2f}/GPU-hour", f"${e.cost:,.0f}"),
        ]),
        _table(f"Chinchilla-optimal for C = {e.chinchilla['compute']:.3g} FLOPs (Hoffmann et al. 2022: D ~= 20N, C ~= 6ND)", [
            ("parameters", _num(e.chinchilla["params"])), ("tokens", _num(e.chinchilla["tokens"])),
            ("this model's tokens per parameter", f"{e.tokens / total:.3g}"),
        ]),
    ]
    return "\n\n".join(sections)


def run(args: argparse.Namespace) -> int:
    from llmlab.estimate import GPUS, GPU, estimate

    config = _config(args)
    gpu = GPUS[args.gpu]
    if args.peak_flops is not None:
        gpu = GPU(f"{gpu.name} (peak {args.peak_flops:.3g} FLOP/s)" if args.peak_flops != gpu.peak_flops else gpu.name,
                  args.peak_flops, gpu.memory_gb, gpu.price_per_hour)
    for name in ("batch", "gpus", "kv_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.mfu <= 1:
        raise ConfigError("--mfu must be in (0, 1]")
    e = estimate(config, batch=args.batch, seq_len=args.seq_len, tokens=args.tokens, precision=args.precision,
                 gpu=gpu, n_gpus=args.gpus, mfu=args.mfu, price_per_hour=args.price, kv_tokens=args.kv_tokens,
                 kv_batch=args.kv_batch, compute_budget=args.budget)
    print(json.dumps(e.to_dict(), indent=2) if args.json else format_estimate(e))
    return 0
