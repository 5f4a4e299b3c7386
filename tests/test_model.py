"""The transformer itself: parameter counts and FLOPs equal the textbook formulas, attention weights are
a causal distribution, GPT-2 initialisation, every architectural variant trains, the KV cache and
padding give the same logits as a plain forward."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmlab.model import GPT, GPTConfig, KVCache, from_depth, preset, suggested_lr
from llmlab.model import fused, transformer
from llmlab.model.fused import cross_entropy, linear_cross_entropy, rms_norm, split_heads, swiglu
from llmlab.model.transformer import RMSNorm, apply_rope, rope_tables, sinusoidal_table


def meta_model(config):
    with torch.device("meta"):
        return GPT(config)


def gpt2_params(V, T, d, L):
    """Per layer: qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, fc-proj 4d^2+d, two LayerNorms 4d = 12d^2 + 13d;
    plus token and position embeddings and the final LayerNorm; the head is tied."""
    return L * (12 * d * d + 13 * d) + V * d + T * d + 2 * d


def llama_params(c):
    attn = c.d_model * c.head_dim * (c.n_heads + 2 * c.n_kv_heads) + c.n_heads * c.head_dim * c.d_model
    mlp = 3 * c.d_model * c.d_ff
    head = 0 if c.tie_embeddings else c.vocab_size * c.d_model
    return c.n_layers * (attn + mlp + 2 * c.d_model) + c.vocab_size * c.d_model + head + c.d_model


@pytest.mark.parametrize("name,expected", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                           ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_gpt2_parameter_counts_equal_the_formula(name, expected):
    c = preset(name)
    model = meta_model(c)
    assert model.num_params() == gpt2_params(c.vocab_size, c.context_length, c.d_model, c.n_layers) == expected
    # The textbook shorthand 12 d^2 L + V d (+ T d) ignores biases and norms: within 0.1% here.
    shorthand = 12 * c.d_model**2 * c.n_layers + c.vocab_size * c.d_model + c.context_length * c.d_model
    assert abs(shorthand - expected) / expected < 1e-3
    assert model.num_params(exclude_embeddings=True) == expected - (c.vocab_size + c.context_length) * c.d_model


@pytest.mark.parametrize("name,expected", [("llama-7b", 6_738_415_616), ("smollm2-135m", 134_515_008)])
def test_llama_parameter_counts_equal_the_formula(name, expected):
    c = preset(name)
    assert meta_model(c).num_params() == llama_params(c) == expected


def test_flops_per_token_is_6n_plus_attention():
    c = preset("gpt2")
    model = meta_model(c)
    n = model.num_params(exclude_embeddings=True) + c.vocab_size * c.d_model  # matmul weights, head included
    assert model.flops_per_token() == 6 * n + 12 * c.n_layers * c.d_model * c.context_length
    assert model.flops_per_token(seq_len=256) == 6 * n + 12 * c.n_layers * c.d_model * 256
    # Untied: the head is a parameter of its own, counted once (Llama-7B: 6.61B matmul weights).
    c = preset("llama-7b")
    n = meta_model(c).num_params() - c.vocab_size * c.d_model
    assert n == 6_607_343_616
    assert meta_model(c).flops_per_token(2048) == 6 * n + 12 * c.n_layers * c.d_model * 2048


def test_attention_weights_are_a_causal_distribution():
    torch.manual_seed(0)
    model = GPT(preset("tiny-llama")).eval()
    x = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        logits, _, weights = model(x, return_attention=True)
        assert torch.allclose(logits, model(x)[0], atol=1e-5)  # explicit softmax(QK^T)V == SDPA
    assert len(weights) == model.config.n_layers
    for w in weights:
        assert w.shape == (2, model.config.n_heads, 10, 10)
        assert torch.allclose(w.sum(-1), torch.ones(2, model.config.n_heads, 10))
        assert (w.triu(1) == 0).all()  # no position attends to the future
        assert (w[:, :, torch.ones(10, 10, dtype=torch.bool).tril()] > 0).all()
    # With a cache, one new query sees every cached key; padded keys get no weight.
    cache = KVCache(model.config, 2, 11)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        model(x, kv_cache=cache, attention_mask=mask[:, :10])
        _, _, weights = model(x[:, :1], kv_cache=cache, attention_mask=mask, return_attention=True)
    w = weights[0]
    assert w.shape == (2, model.config.n_heads, 1, 11)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert (w[0, :, :, :3] == 0).all() and (w[1] > 0).all()


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    c = preset("gpt2", n_layers=4, vocab_size=1000)
    model = GPT(c)
    block = model.blocks[0]
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 1e-3
    assert abs(block.mlp.up.weight.std().item() - 0.02) < 1e-3
    scaled = 0.02 / math.sqrt(2 * c.n_layers)
    assert abs(block.attn.proj.weight.std().item() - scaled) < 1e-3
    assert abs(block.mlp.down.weight.std().item() - scaled) < 1e-3
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 1e-3
    assert (block.attn.qkv.bias == 0).all() and (block.attn_norm.weight == 1).all()


VARIANTS = {
    "gpt2": dict(),
    "sinusoidal-relu-postnorm": dict(positions="sinusoidal", activation="relu", norm_placement="post"),
    "no-positions-gelu": dict(positions="none", activation="gelu"),
    "rope-mqa-rmsnorm-nobias": dict(positions="rope", n_kv_heads=1, norm="rmsnorm", bias=False),
    "rope-gqa-swiglu-untied": dict(positions="rope", n_kv_heads=2, activation="swiglu", tie_embeddings=False),
    "layernorm-nobias-dropout": dict(bias=False, dropout=0.1),
    "llama": dict(positions="rope", n_kv_heads=2, activation="swiglu", norm="rmsnorm", bias=False,
                  tie_embeddings=False, head_dim=24),
    "moe-top2-shared-jitter": dict(positions="rope", activation="swiglu", norm="rmsnorm", n_experts=4,
                                   experts_per_token=2, n_shared_experts=1, router_jitter=0.01),
    "moe-gelu-top1-capacity": dict(n_experts=4, experts_per_token=1, capacity_factor=1.0),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_builds_and_learns(name):
    torch.manual_seed(0)
    model = GPT(preset("tiny", **VARIANTS[name])).train()
    n_params = sum(p.numel() for p in model.parameters())
    assert model.num_params() == n_params
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        logits, loss = model(x[:, :-1], targets=x[:, 1:])
        assert logits is None  # the loss is computed without building them
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(512)) < 0.5  # starts near uniform
    assert losses[-1] < losses[0] - 0.3


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-llama-moe"])
def test_kv_cache_matches_full_forward(name):
    torch.manual_seed(0)
    model = GPT(preset("tiny-llama", n_experts=4) if name == "tiny-llama-moe" else preset(name)).eval()
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        full = model(x)[0]
        cache = KVCache(model.config, 2, 20)
        parts = [model(x[:, :7], kv_cache=cache)[0]]  # prefill, then a chunk, then one token at a time
        parts.append(model(x[:, 7:12], kv_cache=cache)[0])
        parts += [model(x[:, t : t + 1], kv_cache=cache)[0] for t in range(12, 16)]
        # the engine's path: the states before the head, then the head
        parts += [model.lm_head(model.hidden_states(x[:, t : t + 1], kv_cache=cache)[0]) for t in range(16, 20)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    assert cache.length == 20


def test_logits_at_selected_positions_equal_the_full_logits_there():
    torch.manual_seed(0)
    model = GPT(preset("tiny-llama"))
    x = torch.randint(0, 512, (3, 10))
    picked = torch.zeros(3, 10, dtype=torch.bool)
    picked[0, 7:], picked[2, 4] = True, True
    full = model(x)[0]
    sliced = model(x, logits_at=picked)[0]
    assert sliced.shape == (4, model.config.vocab_size)
    torch.testing.assert_close(sliced, full[picked])
    grad_full = torch.autograd.grad(full[picked].logsumexp(-1).sum(), model.tok_emb.weight)[0]
    grad_sliced = torch.autograd.grad(sliced.logsumexp(-1).sum(), model.tok_emb.weight)[0]
    torch.testing.assert_close(grad_sliced, grad_full)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_left_padded_batch_matches_unpadded_rows(name):
    torch.manual_seed(0)
    model = GPT(preset(name)).eval()
    short, long = torch.randint(0, 512, (1, 5)), torch.randint(0, 512, (1, 9))
    x = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(x, attention_mask=mask, position_ids=positions)[0]
        assert torch.allclose(batched[0, 4:], model(short)[0][0], atol=1e-5)
        assert torch.allclose(batched[1], model(long)[0][0], atol=1e-5)


def test_sinusoidal_table_is_the_papers_formula():
    table = sinusoidal_table(50, 16)
    pos, i = 37, 3
    assert math.isclose(table[pos, 2 * i].item(), math.sin(pos / 10000 ** (2 * i / 16)), abs_tol=1e-5)
    assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(pos / 10000 ** (2 * i / 16)), abs_tol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(64, 8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def rotated(v, pos):  # one head as query, key and value, at position `pos`
        q_, _, _ = split_heads(v.view(1, 1, 1, 8).repeat(1, 1, 3, 1), 1, 1, (cos[pos : pos + 1], sin[pos : pos + 1]))
        return q_.view(8)

    score = lambda m, n: torch.dot(rotated(q, m), rotated(k, n)).item()  # noqa: E731
    assert math.isclose(score(5, 2), score(40, 37), rel_tol=1e-4)
    assert math.isclose(rotated(q, 11).norm().item(), q.norm().item(), rel_tol=1e-5)  # a rotation


def test_depth_dial_derives_width_heads_and_lr():
    small, big = from_depth(4, vocab_size=4096), from_depth(12, vocab_size=4096, family="llama")
    assert (small.d_model, small.n_heads, small.n_layers) == (256, 4, 4)
    assert (big.d_model, big.n_heads, big.head_dim, big.positions) == (768, 12, 64, "rope")
    assert suggested_lr(small) > suggested_lr(big) and suggested_lr(from_depth(1, 256)) <= 3e-3
    model = GPT(small)
    assert model.num_params() == gpt2_params(4096, 512, 256, 4)


def test_overriding_a_preset_recomputes_the_fields_that_followed_their_rule():
    narrow = preset("gpt2", d_model=64, n_heads=4)
    assert (narrow.n_kv_heads, narrow.head_dim, narrow.d_ff) == (4, 16, 256)
    assert preset("gpt2", d_model=1536).d_ff == 6144  # not GPT-2's 3072
    assert preset("tiny", activation="swiglu").d_ff == 256  # the Llama rule for the new activation
    half = preset("smollm2-135m", d_model=288)  # GQA's 3 key/value heads were chosen, not derived: kept
    assert (half.n_kv_heads, half.head_dim, half.d_ff) == (3, 32, 768)
    assert preset("gpt2", d_ff=1000, d_model=64, n_heads=4).d_ff == 1000  # an explicit value wins
    with pytest.raises(ValueError, match="n_heads=4 must be a multiple of n_kv_heads=3 .set n_kv_heads too"):
        preset("smollm2-135m", n_heads=4)


def test_context_window_is_enforced():
    model = GPT(preset("tiny"))
    with pytest.raises(ValueError, match="exceeds the context window of 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_loss_and_its_gradient_equal_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(40, 30, requires_grad=True)
    targets = torch.randint(0, 30, (40,))
    targets[::3] = -100  # ignored positions (prompt tokens in SFT, padding)
    ours = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(2.5 * ours, logits)
    theirs = F.cross_entropy(logits, targets, ignore_index=-100)
    (want,) = torch.autograd.grad(2.5 * theirs, logits)
    assert torch.allclose(ours, theirs) and torch.allclose(grad, want, atol=1e-7)
    model = GPT(preset("tiny"))
    x = torch.randint(0, 512, (2, 9))
    logits, _ = model(x)
    _, loss = model(x, targets=x)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 512), x.view(-1)))


@pytest.mark.parametrize("rope", [True, False])
def test_split_heads_backward_equals_autograd(rope):
    """Queries and keys are rotated, values are not; the hand-written gradient passes gradcheck."""
    cos, sin = rope_tables(6, 8, 10000.0)
    tables = (cos.double(), sin.double()) if rope else None
    qkv = torch.randn(2, 6, 3 + 2 * 1, 8, dtype=torch.float64, requires_grad=True)  # 3 query heads, 1 kv head
    q, k, v = split_heads(qkv, 3, 1, tables)
    assert q.shape == (2, 3, 6, 8) and k.shape == v.shape == (2, 1, 6, 8)
    assert torch.equal(v, qkv[:, :, 4:].transpose(1, 2))
    assert torch.equal(q, qkv[:, :, :3].transpose(1, 2)) != rope
    assert torch.autograd.gradcheck(lambda t: split_heads(t, 3, 1, tables), (qkv,))


def test_rms_norm_and_its_gradient_equal_the_formula():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    want = w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(rms_norm(x, w, 1e-5), want)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))
    # bf16 input: normalised in fp32, cast back (Llama's order), as the module does.
    xb = x.detach().bfloat16()
    norm = RMSNorm(16, 1e-5).bfloat16()
    ref = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(norm(xb), ref * norm.weight)


def test_swiglu_and_its_gradient_equal_the_formula():
    h = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(swiglu(h), F.silu(h[..., :5]) * h[..., 5:])
    assert torch.autograd.gradcheck(swiglu, (h,))


@pytest.mark.parametrize("compiling", [False, True])
@pytest.mark.parametrize("ignored", [0, 7])
def test_linear_cross_entropy_equals_logits_then_cross_entropy(monkeypatch, ignored, compiling):
    """Chunked head + loss (chunks of 4 rows here) against F.linear + F.cross_entropy: loss and both
    gradients, with ignored rows dropped (eager) or weighted by zero (under torch.compile); without
    grad, the same loss."""
    monkeypatch.setitem(fused._CHUNK_ELEMENTS, "cpu", 4 * 50)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    torch.manual_seed(0)
    x = torch.randn(18, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 12, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (18,))
    t[torch.randperm(18)[:ignored]] = -100
    ours = linear_cross_entropy(x, w, t)
    got = torch.autograd.grad(3.0 * ours, (x, w))
    theirs = F.cross_entropy(F.linear(x, w), t, ignore_index=-100)
    want = torch.autograd.grad(3.0 * theirs, (x, w))
    assert torch.allclose(ours, theirs, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, want))
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(x, w, t), theirs, atol=1e-12)
    # A frozen head (LoRA) gets no gradient: only x's is computed and kept for the backward pass.
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s.numel()) or s, lambda s: s):
        frozen = linear_cross_entropy(x, w.detach(), t)
    assert torch.allclose(torch.autograd.grad(3.0 * frozen, x)[0], want[0], atol=1e-12)
    assert saved and max(saved) <= x.numel() < w.numel()  # no (V x d) tensor


def test_fused_split_heads_equals_the_plain_rope():
    """The kernel's rotation against apply_rope as the paper writes it, with default and per-row positions."""
    torch.manual_seed(0)
    cos, sin = rope_tables(16, 8, 10000.0)
    qkv = torch.randn(2, 6, 3 + 2 * 1, 8)
    positions = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    for tables in [(cos[:6], sin[:6]), (cos[positions][:, None], sin[positions][:, None])]:
        q, k, v = split_heads(qkv, 3, 1, tables)
        heads = qkv.transpose(1, 2)
        assert torch.allclose(q, apply_rope(heads[:, :3], *tables), atol=1e-6)
        assert torch.allclose(k, apply_rope(heads[:, 3:4], *tables), atol=1e-6)
        assert torch.equal(v, heads[:, 4:])


def _loss_and_grads(model, x):
    _, loss = model(x, targets=torch.where(torch.arange(x.size(1)) < 3, -100, x.roll(-1, 1)))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_fused_kernels_equal_the_plain_reference_in_the_whole_model(monkeypatch, name):
    """Eager CPU uses llmlab.model.fused, a compiled graph or a GPU the plain expressions: the same
    logits, loss and gradients (fp32 and under bf16 autocast)."""
    torch.manual_seed(0)
    model = GPT(preset(name, dropout=0.0))
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    for autocast, tol in [(False, 1e-5), (True, 2e-2)]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fused_logits = model(x)[0].float()
            fused_loss, fused_grads = _loss_and_grads(model, x)
            monkeypatch.setattr(transformer, "FUSED_ON_CPU", False)
            plain_logits = model(x)[0].float()
            plain_loss, plain_grads = _loss_and_grads(model, x)
            monkeypatch.setattr(transformer, "FUSED_ON_CPU", True)
        assert torch.allclose(fused_logits, plain_logits, atol=tol, rtol=tol)
        assert torch.allclose(fused_loss, plain_loss, atol=tol, rtol=tol)
        for a, b in zip(fused_grads, plain_grads):
            assert torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])  # GPT-2 style, and Llama style with RoPE and GQA
def test_training_step_and_decode_step_compile_to_one_graph(name):
    """fullgraph=True refuses any graph break: forward + loss + backward (AOT autograd traces the
    backward), and one KV-cache decode step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(preset(name))
    x = torch.randint(0, model.config.vocab_size, (2, 16))

    eager_loss = model(x, targets=x.roll(-1, 1))[1]
    compiled_loss = torch.compile(model, backend="aot_eager", fullgraph=True)(x, targets=x.roll(-1, 1))[1]
    compiled_loss.backward()
    assert torch.allclose(eager_loss, compiled_loss, atol=1e-5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    cache = KVCache(model.config, 2, 32)
    with torch.no_grad():
        model(x, kv_cache=cache)
        step = torch.compile(lambda tok: model(tok, kv_cache=cache)[0], backend="eager", fullgraph=True)
        logits = step(x[:, -1:])
        assert logits.shape == (2, 1, model.config.vocab_size) and cache.length == 17
    torch._dynamo.reset()


def test_moe_counts_active_parameters_and_adds_the_balancing_loss_only_in_training():
    """FLOPs follow the k experts a token visits; the training loss is cross-entropy plus
    router_aux_loss x the layers' mean balancing loss, which is 1 for an even load and at least 1."""
    torch.manual_seed(0)
    dense, moe = preset("tiny-llama"), preset("tiny-llama", n_experts=4, experts_per_token=1, router_aux_loss=0.5)
    router = 6 * moe.n_layers * moe.n_experts * moe.d_model
    assert GPT(moe).flops_per_token(64) == GPT(dense).flops_per_token(64) + router
    assert GPT(moe).num_params() == GPT(dense).num_params() + moe.n_layers * (3 * moe.expert_params + moe.n_experts * moe.d_model)
    model = GPT(moe)
    x = torch.randint(0, moe.vocab_size, (2, 16))
    _, train_loss = model.train()(x, targets=x)
    balance = model.router_balance_loss()
    assert balance.item() >= 1.0 - 1e-6
    _, eval_loss = model.eval()(x, targets=x)
    assert torch.allclose(train_loss, eval_loss + 0.5 * balance, atol=1e-5)


def test_moe_with_every_expert_chosen_equals_the_dense_mlp_of_their_joint_width():
    """2 experts, both always chosen, the router split evenly: by default (routed output times k) the
    layer is exactly a dense MLP whose hidden units are the two experts' side by side, not half of it."""
    from llmlab.model.transformer import MLP

    torch.manual_seed(0)
    config = preset("tiny", bias=False, n_experts=2, experts_per_token=2)
    moe = GPT(config).blocks[0].mlp.eval()
    torch.nn.init.zeros_(moe.router.weight)
    dense = MLP(config, d_ff=2 * config.d_ff)
    with torch.no_grad():
        dense.up.weight.copy_(moe.experts_up.flatten(0, 1))
        dense.down.weight.copy_(torch.cat(list(moe.experts_down), dim=1))
    x = torch.randn(1, 16, config.d_model)
    torch.testing.assert_close(moe(x), dense(x))
    mixtral = GPT(config.replace(routed_scale=1.0)).blocks[0].mlp.eval()  # Mixtral's plain sum: half
    mixtral.load_state_dict(moe.state_dict())
    torch.testing.assert_close(mixtral(x), dense(x) / 2)
    saved_before_the_field = {k: v for k, v in config.to_dict().items() if k != "routed_scale"}
    assert GPTConfig.from_dict(saved_before_the_field).routed_output_scale == 1.0  # old checkpoints keep theirs
    assert GPTConfig.from_dict(config.to_dict()).routed_output_scale == 2.0


def test_moe_balancing_loss_equals_transformers_switch_loss():
    pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from llmlab.model.transformer import load_balancing_loss

    torch.manual_seed(0)
    logits = torch.randn(40, 6)
    k = 2
    probs = logits.softmax(-1)
    ours = load_balancing_loss(probs, probs.topk(k, dim=-1).indices, 6)
    # transformers counts k choices per token (its fractions sum to k), ours sum to 1.
    assert torch.allclose(k * ours, load_balancing_loss_func((logits,), 6, k))


def test_moe_capacity_drops_only_in_training_and_only_overflow():
    """With capacity for one token per expert, the tokens after the first few pass through no expert in
    training (their MLP output is zero); in evaluation no token is dropped."""
    torch.manual_seed(0)
    config = preset("tiny", n_experts=2, experts_per_token=1, capacity_factor=2 / 16)  # 1 token per expert
    moe = GPT(config).blocks[0].mlp
    x = torch.randn(1, 16, config.d_model)
    trained = moe.train()(x)
    routed = moe.eval()(x)
    kept = (trained.abs().sum(-1) > 0).sum().item()
    assert kept == 2 and (routed.abs().sum(-1) > 0).all()


def _saved_by_autograd(model, x):
    """Bytes of the tensors autograd packs for backward (checkpointed blocks pack theirs elsewhere)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, targets=x.roll(-1, 1))
    return loss, sum(seen.values())


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_activation_checkpointing_keeps_less_and_gives_the_same_gradients(monkeypatch, name):
    """Recomputing each block in the backward pass: the same loss and gradients (dropout masks included),
    with a fraction of the activations kept."""
    monkeypatch.setattr(transformer, "FUSED_ON_CPU", False)  # the path whose saved tensors the formula counts
    config = preset(name, n_layers=4, dropout=0.1)
    x = torch.randint(0, config.vocab_size, (4, 64))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(config).train()
        model.activation_checkpointing = checkpointing
        loss, saved = _saved_by_autograd(model, x)
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters()], saved))
    (loss, grads, kept), (loss_ckpt, grads_ckpt, kept_ckpt) = results
    assert torch.equal(loss, loss_ckpt)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ckpt))
    assert kept_ckpt < 0.5 * kept


# --- pruning ---------------------------------------------------------------------------------------------

def test_magnitude_pruning_zeroes_the_smallest_block_weights():
    from llmlab.model.prune import block_matrices, magnitude_prune, sparsity

    torch.manual_seed(0)
    model = GPT(preset("tiny-llama"))
    embedding = model.tok_emb.weight.clone()
    before = {n: p.clone() for n, p in block_matrices(model)}
    stats = magnitude_prune(model, 0.5, scope="global")
    assert stats["all"] == pytest.approx(0.5, abs=1e-3) and sparsity(model) == pytest.approx(0.5, abs=1e-3)
    zeroed = torch.cat([before[n][p == 0].abs() for n, p in block_matrices(model)])
    kept = torch.cat([p[p != 0].abs() for _, p in block_matrices(model)])
    assert zeroed.max() <= kept.min()  # one threshold over every matrix
    assert torch.equal(model.tok_emb.weight, embedding)  # embeddings (and head, norms) untouched
    layer = GPT(preset("tiny-llama"))
    per_matrix = magnitude_prune(layer, 0.3, scope="layer")
    assert all(v == pytest.approx(0.3, abs=0.01) for v in per_matrix.values())


@pytest.mark.parametrize("name,kw", [("tiny", {}), ("tiny-llama", {}), ("tiny-llama", {"n_kv_heads": 4})])
def test_structured_pruning_equals_zeroing_the_removed_units(name, kw):
    """The smaller model computes exactly what the original does with the removed neurons' (or heads')
    outputs zeroed: removing them is lossless bookkeeping, the loss is in what they contributed."""
    from llmlab.model.prune import prune_heads, prune_neurons

    torch.manual_seed(0)
    model = GPT(preset(name, **kw)).eval()
    x = torch.randint(0, 512, (2, 12))
    c = model.config
    smaller, info = prune_neurons(model, 0.25)
    assert smaller.config.d_ff == info["kept"] == 192 and smaller.num_params() < model.num_params()
    masked = GPT(c).eval()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block, kept in zip(masked.blocks, info["kept_per_layer"]):
            drop = torch.ones(c.d_ff, dtype=torch.bool)
            drop[kept] = False
            block.mlp.down.weight[:, drop] = 0
        assert torch.allclose(smaller(x)[0], masked(x)[0], atol=1e-5)
    fewer, info = prune_heads(model, 0.5)
    assert fewer.config.n_heads == info["kept_heads"] == 2 and fewer.config.head_dim == c.head_dim
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block, kept in zip(masked.blocks, info["kept_per_layer"]):
            drop = torch.ones(c.n_heads, dtype=torch.bool)
            drop[kept] = False
            block.attn.proj.weight.view(c.d_model, c.n_heads, c.head_dim)[:, drop] = 0
        assert torch.allclose(fewer(x)[0], masked(x)[0], atol=1e-5)


def test_wanda_scores_weights_by_their_inputs_row_by_row():
    """Wanda zeroes, in each output row, the weights whose |w| x ||x_j|| is smallest: with one input
    feature made 100x louder, its weights survive even where they are small."""
    from llmlab.model.prune import input_norms, wanda_prune

    torch.manual_seed(0)
    model = GPT(preset("tiny-llama")).eval()
    norms = input_norms(model, [torch.randint(0, 512, (1, 32)) for _ in range(2)])
    qkv = model.blocks[0].attn.qkv
    assert norms["0.attn.qkv"].shape == (qkv.in_features,) and (norms["0.attn.qkv"] > 0).all()
    loud = {k: v.clone() for k, v in norms.items()}
    loud["0.attn.qkv"][5] *= 100
    stats = wanda_prune(model, 0.5, loud)
    assert stats["all"] == pytest.approx(0.5, abs=1e-3)
    assert ((qkv.weight == 0).sum(dim=1) == qkv.in_features // 2).all()  # half of every row
    assert (qkv.weight[:, 5] != 0).all()


def test_moe_router_jitter_leaves_the_experts_input_alone():
    """With a router that scores every expert equally, jittering its input cannot change the routing,
    so the output must not change either: the noise is for the router only."""
    torch.manual_seed(0)
    config = preset("tiny", n_experts=4, experts_per_token=2, router_jitter=0.5)
    moe = GPT(config).blocks[0].mlp.train()
    torch.nn.init.zeros_(moe.router.weight)
    x = torch.randn(1, 16, config.d_model)
    torch.testing.assert_close(moe(x), moe.eval()(x))  # evaluation never jitters


def test_sparsegpt_reconstructs_a_layer_better_than_wanda():
    """At the same 50% per-row sparsity, SparseGPT's corrected weights give a smaller output error
    ||X W^T - X W'^T|| on correlated calibration inputs than Wanda's mask alone (and both beat nothing)."""
    from llmlab.model.prune import sparsegpt_matrix

    torch.manual_seed(0)
    mixing = torch.randn(64, 64) / 8 + torch.eye(64)
    X = torch.randn(2048, 64) @ mixing * torch.linspace(0.2, 3.0, 64)  # correlated features of unequal size
    W = torch.randn(48, 64)
    sparse = sparsegpt_matrix(W, X.T @ X, 0.5)
    assert ((sparse == 0).sum(dim=1) == 32).all()  # half of every row, exactly zero
    score = W.abs() * X.norm(dim=0)
    wanda = W.scatter(1, score.topk(32, dim=1, largest=False).indices, 0.0)

    def error(w: torch.Tensor) -> float:
        return (X @ (W - w).T).norm().item()

    assert error(sparse) < 0.9 * error(wanda)  # 948 against 1,111 with this seed
    assert torch.allclose(sparsegpt_matrix(W, X.T @ X, 0.0), W, atol=1e-4)  # nothing pruned: nothing moves


def test_sparsegpt_prune_sets_every_block_matrix_sparse():
    from llmlab.model.prune import input_grams, sparsegpt_prune, sparsity

    torch.manual_seed(0)
    model = GPT(preset("tiny-llama")).eval()
    grams = input_grams(model, [torch.randint(0, 512, (1, 32)) for _ in range(2)])
    qkv = model.blocks[0].attn.qkv
    assert grams["0.attn.qkv"].shape == (qkv.in_features, qkv.in_features)
    stats = sparsegpt_prune(model, 0.5, grams)
    assert stats["all"] == pytest.approx(0.5, abs=1e-3) and sparsity(model) == pytest.approx(0.5, abs=1e-3)
    assert torch.isfinite(model(torch.randint(0, 512, (1, 8)))[0]).all()


def test_hold_zeros_keeps_pruned_weights_exactly_zero_through_adamw():
    from llmlab.model.prune import block_matrices, hold_zeros, magnitude_prune

    torch.manual_seed(0)
    model = GPT(preset("tiny-llama"))
    magnitude_prune(model, 0.5)
    zeros = {n: p == 0 for n, p in block_matrices(model)}
    before = {n: p.clone() for n, p in block_matrices(model)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    handle = hold_zeros(model, optimizer)
    for _ in range(3):
        x = torch.randint(0, 512, (2, 16))
        _, loss = model(x, targets=x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in block_matrices(model):
        assert (p[zeros[n]] == 0).all()  # the pruned weights never came back
        assert not torch.equal(p[~zeros[n]], before[n][~zeros[n]])  # the kept ones trained
    handle.remove()
    x = torch.randint(0, 512, (2, 16))
    model(x, targets=x)[1].backward()
    optimizer.step()
    assert any((p[zeros[n]] != 0).any() for n, p in block_matrices(model))  # without the hook they refill
