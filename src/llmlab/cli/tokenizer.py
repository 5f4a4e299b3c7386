"""Train, inspect and compare tokenizers; encode documents into token shards.

subcommands:
  train     learn a tokenizer (byte-level BPE, char or word) from documents
  encode    text -> token ids          decode    token ids -> text
  inspect   vocabulary, special tokens, longest tokens, last merges, a sample segmentation
  compare   the trade-off table (vocab size, tokens, chars/token, unknown rate) for several tokenizers
  shards    encode documents (text files, JSONL, Parquet) into token shards for training
  export    write a tokenizer as llmlab JSON, Hugging Face tokenizer.json or a .tiktoken file

A TOKENIZER argument is a path (llmlab or Hugging Face tokenizer.json, a .tiktoken file, GPT-2's
encoder.json) or one of the names gpt2, cl100k_base, o200k_base.

examples:
  llmlab tokenizer train --input runs/demo/clean/documents.parquet --vocab-size 8192 --out runs/demo/tokenizer/tokenizer.json
  llmlab tokenizer encode --tokenizer cl100k_base "Hello world" --show
  llmlab tokenizer compare --text notes.txt
  llmlab tokenizer shards --tokenizer runs/demo/tokenizer/tokenizer.json --input runs/demo/clean/documents.parquet --out runs/demo/shards
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmlab.errors import ConfigError, InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("train", help="learn a tokenizer from documents", description=_train.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="text files (one document each), .jsonl (field --text-field), .parquet (column --text-field) or directories")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text (default: text)")
    p.add_argument("--out", required=True, help="where to write the llmlab tokenizer.json")
    p.add_argument("--kind", choices=["bpe", "char", "word"], default="bpe", help="tokenizer family (default: bpe)")
    p.add_argument("--vocab-size", type=int, default=8192,
                   help="ids in the vocabulary, special tokens included (default: 8192; char/word: a cap)")
    p.add_argument("--pattern", default="gpt4",
                   help="BPE pre-split regex: gpt4 (default), gpt2, o200k, or a regex of your own")
    p.add_argument("--method", choices=["fast", "reference"], default="fast",
                   help="BPE trainer: fast (rustbpe's Rust loop) or reference (pure Python); same merges")
    p.add_argument("--special-tokens", nargs="*", default=None, metavar="TOKEN",
                   help="special tokens (default: <|endoftext|> <|system|> <|user|> <|assistant|> <|end|>)")
    p.add_argument("--max-chars", type=int, default=None, help="train on at most this many characters of input")
    p.set_defaults(_sub=_train)

    p = sub.add_parser("encode", help="text -> token ids")
    p.add_argument("--tokenizer", required=True, help="path or name (gpt2, cl100k_base, o200k_base)")
    p.add_argument("text", nargs="?", help="text to encode (default: --file or standard input)")
    p.add_argument("--file", help="read the text from this file")
    p.add_argument("--allowed-special", default="none",
                   help="special tokens to recognise in the text: none (default; their text is an error), all, or a comma list")
    p.add_argument("--show", action="store_true", help="show each token's text beside its id")
    p.set_defaults(_sub=_encode)

    p = sub.add_parser("decode", help="token ids -> text")
    p.add_argument("--tokenizer", required=True, help="path or name")
    p.add_argument("ids", nargs="*", help="token ids (default: --file or standard input, whitespace-separated or JSON list)")
    p.add_argument("--file", help="read the ids from this file")
    p.set_defaults(_sub=_decode)

    p = sub.add_parser("inspect", help="vocabulary, special tokens, longest tokens, merges")
    p.add_argument("--tokenizer", required=True, help="path or name")
    p.add_argument("--top", type=int, default=10, help="how many longest tokens / last merges to list")
    p.add_argument("--text", default="Tokenizers turn text into integers: 12345 tokens, naïve café, 👋!",
                   help="a sample to show segmented")
    p.set_defaults(_sub=_inspect)

    p = sub.add_parser("compare", help="the trade-off table for char, word, BPE sizes, GPT-2, cl100k",
                       description=_compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", help="file to measure on (default: Shakespeare's works from the shakespeare package)")
    p.add_argument("--train", nargs="*", metavar="PATH",
                   help="documents to train char/word/BPE on (default: the first 90%% of --text; measured on the rest)")
    p.add_argument("--bpe-sizes", default="512,2048,8192", help="comma-separated BPE vocabulary sizes (default: 512,2048,8192)")
    p.add_argument("--word-vocab", type=int, default=8192, help="word-level vocabulary cap (default: 8192)")
    p.add_argument("--tokenizer", nargs="*", default=[], metavar="TOKENIZER", help="more tokenizers (paths or names) to include")
    p.add_argument("--no-pretrained", action="store_true", help="leave out gpt2 and cl100k_base")
    p.set_defaults(_sub=_compare)

    p = sub.add_parser("shards", help="encode documents into token shards for training",
                       description=_shards.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="path or name")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="text / .jsonl / .parquet files or directories")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text (default: text)")
    p.add_argument("--out", required=True, help="output directory (meta.json, shard_NNNNN.bin, tokenizer.json)")
    p.add_argument("--workers", type=int, default=None, help="encoder processes (default: one per core)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default: 100M)")
    p.add_argument("--dtype", choices=["uint16", "uint32"], default=None, help="default: uint16 if the vocabulary fits")
    p.set_defaults(_sub=_shards)

    p = sub.add_parser("export", help="write a tokenizer in another format")
    p.add_argument("--tokenizer", required=True, help="path or name")
    p.add_argument("--format", choices=["llmlab", "hf", "tiktoken"], required=True,
                   help="llmlab JSON, Hugging Face tokenizer.json, or tiktoken mergeable ranks (.tiktoken)")
    p.add_argument("--out", required=True, help="output file")
    p.set_defaults(_sub=_export)


def run(args: argparse.Namespace) -> int:
    return int(args._sub(args) or 0)


# ---- subcommands ---------------------------------------------------------------------------------


def _documents(paths: list[str], text_field: str, max_chars: int | None = None):
    from llmlab.tokenizer.shards import iter_documents

    total = 0
    for doc in iter_documents(paths, text_field):
        if max_chars is not None and total + len(doc) > max_chars:
            if max_chars - total > 0:
                yield doc[: max_chars - total]
            return
        total += len(doc)
        yield doc


def _train(args: argparse.Namespace) -> int:
    """Learn a tokenizer from documents and save it as llmlab JSON.

    BPE: byte-level, GPT-4-style pre-split (--pattern), --vocab-size ids in all: 256 bytes, the learned
    merges, then the special tokens. The fast and reference trainers give identical merges.
    """
    from llmlab.tokenizer import CharTokenizer, WordTokenizer, train_bpe
    from llmlab.tokenizer.patterns import resolve_pattern

    docs = list(_documents(args.input, args.text_field, args.max_chars))
    if not docs:
        raise InputError("the input holds no documents", hint="check --input and --text-field")
    chars = sum(len(d) for d in docs)
    print(f"training {args.kind} tokenizer on {len(docs):,} documents ({chars / 1e6:.2f} M characters)", file=sys.stderr)
    t0 = time.perf_counter()
    if args.kind == "bpe":
        tok = train_bpe(docs, args.vocab_size, resolve_pattern(args.pattern), args.special_tokens,
                        method=args.method, progress=True)
    else:
        cls = CharTokenizer if args.kind == "char" else WordTokenizer
        specials = ["<|endoftext|>"] if args.special_tokens is None else args.special_tokens
        tok = cls.train(docs, args.vocab_size, specials)
    tok.save(args.out)
    print(f"{args.out}: {tok.kind}, vocab size {tok.vocab_size:,}, trained in {time.perf_counter() - t0:.1f} s, "
          f"sha256 {tok.sha256[:16]}")
    return 0


def _read_text(args) -> str:
    if getattr(args, "text", None) is not None:
        return args.text
    if args.file:
        return Path(args.file).read_text(encoding="utf-8")
    return sys.stdin.read()


def _encode(args: argparse.Namespace) -> int:
    from llmlab.tokenizer import DisallowedSpecialError, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    allowed = {"none": set(), "all": "all"}.get(args.allowed_special)
    if allowed is None:
        allowed = {t for t in args.allowed_special.split(",") if t}
    try:
        ids = tok.encode(_read_text(args), allowed_special=allowed)
    except DisallowedSpecialError as e:  # the library's hint names a Python argument
        raise DisallowedSpecialError(
            e.token, hint=f"pass --allowed-special '{e.token}' (or all) to encode it as a special token"
        ) from None
    if args.show:
        for i in ids:
            print(f"{i}\t{tok.token_bytes(i)!r}"[:200])
    else:
        print(" ".join(map(str, ids)))
    print(f"{len(ids)} tokens", file=sys.stderr)
    return 0


def _decode(args: argparse.Namespace) -> int:
    from llmlab.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    raw = " ".join(args.ids) if args.ids else (Path(args.file).read_text() if args.file else sys.stdin.read())
    raw = raw.strip()
    try:
        ids = json.loads(raw) if raw.startswith("[") else [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise InputError("token ids must be integers (space/comma separated, or a JSON list)") from None
    sys.stdout.write(tok.decode(ids))
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from llmlab.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    print(f"type:           {tok.kind}")
    print(f"vocab size:     {tok.vocab_size:,}")
    print(f"sha256:         {tok.sha256}")
    print(f"special tokens: {', '.join(f'{t}={i}' for t, i in tok.special_tokens.items()) or '(none)'}")
    print(f"eos id:         {tok.eos_id}")
    if tok.kind == "bpe":
        print(f"pattern:        {tok.pattern}")
        ranks = tok.mergeable_ranks
        longest = sorted(ranks, key=lambda t: (-len(t), ranks[t]))[: args.top]
        print(f"longest tokens: {', '.join(f'{ranks[t]}:{t!r}' for t in longest)}")
        merges = tok.merges
        print(f"merges:         {len(merges):,}; the last {min(args.top, len(merges))}:")
        for a, b in merges[-args.top:]:
            print(f"  {tok.token_bytes(a)!r} + {tok.token_bytes(b)!r} -> {ranks[tok.token_bytes(a) + tok.token_bytes(b)]}")
    elif hasattr(tok, "units"):
        print(f"first units:    {tok.units[: args.top]}")
    ids = tok.encode_ordinary(args.text)
    pieces = [tok.decode([i]) for i in ids]
    print(f"sample ({len(ids)} tokens for {len(args.text)} characters):")
    print("  " + "|".join(pieces))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Print the tokenizer trade-off table for one text.

    Char, word and byte-level BPE tokenizers at several vocabulary sizes are trained on --train (or the
    first 90% of the text) and measured, with GPT-2 and cl100k_base, on the text (or its last 10%):
    vocabulary size, token count, characters and bytes per token, the share of <unk> tokens, and
    whether decoding gives the text back.
    """
    from llmlab.tokenizer import load_tokenizer
    from llmlab.tokenizer.compare import compare, format_table, standard_tokenizers
    from llmlab.tokenizer.corpus import shakespeare_texts

    if args.text:
        text = Path(args.text).read_text(encoding="utf-8")
        source = args.text
    else:
        text = "\n".join(shakespeare_texts())
        source = "Shakespeare's works (package shakespeare)"
    if args.train:
        train = list(_documents(args.train, "text"))
        held_out = text
    else:
        cut = int(len(text) * 0.9)
        cut = text.find("\n", cut) + 1 or cut
        train, held_out = [text[:cut]], text[cut:]
    try:
        sizes = [int(s) for s in args.bpe_sizes.split(",") if s]
    except ValueError:
        raise ConfigError(f"--bpe-sizes must be comma-separated integers, not {args.bpe_sizes!r}") from None
    pretrained = () if args.no_pretrained else ("gpt2", "cl100k_base")
    toks = standard_tokenizers(train, sizes, args.word_vocab, pretrained)
    toks += [(name, load_tokenizer(name)) for name in args.tokenizer]
    rows = compare(held_out, toks)
    print(f"text: {source}; measured on {len(held_out):,} characters"
          + ("" if args.train else " (the last 10%; tokenizers trained on the first 90%)"))
    print()
    print(format_table(rows))
    return 0


def _shards(args: argparse.Namespace) -> int:
    """Encode documents into token shards: uint16/uint32 ids, <|endoftext|> before each document.

    Inputs: text files (one document each), JSONL (one object per line, field --text-field) and
    Parquet (column --text-field), or directories of them. Encoding runs in --workers processes.
    Writes OUT/meta.json (format, dtype, vocab size, eos id, tokenizer sha256, counts, shard list),
    OUT/shard_NNNNN.bin and a copy of the tokenizer as OUT/tokenizer.json.
    """
    from llmlab.tokenizer import load_tokenizer
    from llmlab.tokenizer.shards import write_shards

    tok = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    meta = write_shards(_documents(args.input, args.text_field), tok, args.out, shard_tokens=args.shard_tokens,
                        workers=args.workers, dtype=args.dtype)
    dt = time.perf_counter() - t0
    print(f"{args.out}: {meta['documents']:,} documents, {meta['tokens']:,} tokens ({meta['dtype']}) in "
          f"{len(meta['shards'])} shard(s), {dt:.1f} s ({meta['tokens'] / max(dt, 1e-9):,.0f} tokens/s)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from llmlab.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    if args.format == "llmlab":
        tok.save(args.out)
    else:
        if tok.kind != "bpe":
            raise ConfigError(f"only byte-level BPE tokenizers export to {args.format}; this one is {tok.kind}")
        if args.format == "hf":
            from llmlab.tokenizer.hf import save_hf

            save_hf(tok, args.out)
        else:
            from llmlab.tokenizer.pretrained import write_tiktoken_ranks

            write_tiktoken_ranks(tok.mergeable_ranks, args.out)
            print("note: a .tiktoken file holds no pattern or special tokens; keep them with it:", file=sys.stderr)
            print(f"  pattern {tok.pattern!r}\n  special tokens {tok.special_tokens}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0
