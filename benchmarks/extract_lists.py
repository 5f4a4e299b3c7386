"""List items and navigation on real documentation pages: the documentation recipe's extraction
against trafilatura (FineWeb's settings) and resiliparse's main-content heuristic.

    .venv/bin/python benchmarks/extract_lists.py          # needs the Debian packages below

Pages: Debian's `python3-doc` (Sphinx) and `postgresql-doc-15` (DocBook), read from disk
(`apt-get install python3-doc postgresql-doc-15`). For each page the reference is the text of every
<li>/<dt> of 12+ characters in the page's main part (Sphinx's role=main, DocBook's body less its
navigation bars); an item counts as kept when its first 40 characters appear in the extracted text.
A page "has navigation" when the text carries the site's navigation strings (Sphinx: "Quick search",
"Show Source", ...; DocBook: "Prev Up", "Home Next").
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from lxml import html as lxml_html

from llmlab.data.clean.extract import Extract, resiliparse_text, trafilatura_text

SITES = {
    "python3-doc": (Path("/usr/share/doc/python3-doc/html"), "library/*.html", "using/cmdline.html",
                    ["Quick search", "Show Source", "Report a Bug", "Previous topic", "This Page"]),
    "postgresql-doc-15": (Path("/usr/share/doc/postgresql-doc-15/html"), "*.html", "libpq-envars.html",
                          ["Submit correction", "Prev Up", "Home Next"]),
}


def norm(text: str) -> str:
    return " ".join(text.replace("\xa0", " ").split())


def main_items(page: str) -> list[str]:
    tree = lxml_html.fromstring(page.encode("utf-8"))
    main = (tree.xpath("//div[@role='main']") or tree.xpath("//body"))[0]
    for bar in main.xpath(".//div[@class='navheader']|.//div[@class='navfooter']"):
        bar.getparent().remove(bar)
    texts = (norm(e.text_content()) for e in main.xpath(".//li|.//dt"))
    return [t[:40] for t in texts if len(t) >= 12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=120, help="pages sampled per site (plus its list-heavy page)")
    args = parser.parse_args()
    documentation = Extract(extractor="resiliparse", main_content=False, skip_elements=["doc"])
    extractors = {
        "llmlab documentation recipe (resiliparse, whole page less boilerplate)": documentation.extract,
        "resiliparse main_content (the old recipe)": lambda h: resiliparse_text(h, main_content=True),
        "trafilatura favor_precision (FineWeb)": lambda h: trafilatura_text(h, favor_precision=True),
    }
    for site, (root, pattern, list_page, markers) in SITES.items():
        if not root.is_dir():
            print(f"{site}: not installed ({root}); apt-get install {site}", file=sys.stderr)
            continue
        paths = sorted(root.glob(pattern))
        random.Random(0).shuffle(paths)
        paths = paths[: args.pages] + [root / list_page]
        pages = [(p, p.read_text(encoding="utf-8", errors="replace")) for p in paths]
        items = {p: main_items(h) for p, h in pages}
        total = sum(len(v) for v in items.values())
        print(f"\n{site}: {len(pages)} pages, {total} list items; list-heavy page {list_page} ({len(items[root / list_page])} items)")
        for name, extract in extractors.items():
            kept = with_nav = 0
            start = time.perf_counter()
            for p, h in pages:
                text = norm(extract(h))
                found = sum(i in text for i in items[p])
                kept += found
                with_nav += any(m in text for m in markers)
                if p.name == list_page.split("/")[-1]:
                    on_list_page = found
            seconds = time.perf_counter() - start
            print(f"  {name:72s} items kept {kept / total:.3f}, on the list page {on_list_page}/{len(items[root / list_page])}, "
                  f"pages with navigation {with_nav}/{len(pages)}, {len(pages) / seconds:.0f} pages/s")


if __name__ == "__main__":
    main()
