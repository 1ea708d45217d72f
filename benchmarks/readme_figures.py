"""The figures quoted in README.md and benchmarks/README.md, against the benchmarks' results files.

Convention (checked by ``tests/test_figures.py``):

- A measured figure is a link to the results file that holds it, with its key as the link's title:
  ``[4.9 s](benchmarks/results/classroom_default_30.json "first_metric_worst_s")`` (from benchmarks/README.md:
  ``results/...``). The number shown must equal the stored value rounded to the decimals shown (a value
  stored as a fraction, such as an accuracy, may be shown as a percentage).
- A figure that no command reprints (an older tree, a one-off experiment, a cluster) carries its date and
  commit in the same paragraph, list item or table caption: ``(measured 2026-11-29, commit 3e7d732)``.
- Inside figure sections (all of benchmarks/README.md; in README.md between ``<!-- figures -->`` and
  ``<!-- /figures -->``) every number with a unit of time, speed, size or ratio is one or the other. Goals
  (``≤ 1 s``, ``≥ 8×``) are not figures.

    python benchmarks/readme_figures.py           # list every figure that disagrees, is missing or undated
    python benchmarks/readme_figures.py --fix     # rewrite the linked figures from the results files
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
WHOLE = {ROOT / "benchmarks" / "README.md"}  # files that are figure sections from top to bottom

LINK = re.compile(r'\[(?P<text>[^\]\[]*?)\]\((?P<path>[^)\s]*?results/(?P<name>[\w-]+)\.json) "(?P<key>[^"]+)"\)')
NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?")
FIGURE = re.compile(r"(?<![\w.,/≤≥<>±])(?<![≤≥<>] )(?<!every )[-+−]?\d[\d,]*(?:\.\d+)?"
                    r"(?:\s?(?:×|%|(?:ms|µs|s|min|GB|MB|KB|B)\b)|x\b|\s?[a-zA-Z]+/s\b|/s\b)")
DECIMAL = re.compile(r"(?<![\w.,/])\d[\d,]*\.\d+(?![\d%×x])")
STAMP = re.compile(r"measured\s+(\d{4}-\d{2}-\d{2}),\s+commit\s+([0-9a-f]{7,40})\b")
CODE = re.compile(r"`[^`\n]*`")
OPEN, CLOSE = "<!-- figures -->", "<!-- /figures -->"


def shown(text: str) -> tuple[float, int] | None:
    """The first number in a link's text and its decimals (``1,150`` -> (1150.0, 0))."""
    m = NUMBER.search(text)
    if not m:
        return None
    digits = m.group().replace(",", "").replace("−", "-")
    return float(digits), len(digits.split(".")[1]) if "." in digits else 0


UNITS = {("_mb", "GB"): 1 / 1024, ("_s", "ms"): 1000, ("_s", "min"): 1 / 60}  # key suffix, unit shown: factor


def scaled(text: str, key: str, value: float) -> list[float]:
    """The stored value in the unit the text shows: MB as GB, seconds as ms or min, a fraction as a %."""
    unit = re.sub(r"^[^a-zA-Z%]*", "", NUMBER.sub("", text, count=1)).split(" ")[0]
    factor = next((f for (suffix, u), f in UNITS.items() if key.endswith(suffix) and unit == u), 1)
    return [value * factor, value * factor * 100] if "%" in text else [value * factor]


def agrees(text: str, value, key: str = "") -> bool:
    num = shown(text)
    if num is None or isinstance(value, (str, list, dict, bool)) or value is None:
        return False
    x, decimals = num
    return any(abs(round(v, decimals) - x) < 10 ** -decimals / 2 for v in scaled(text, key, value))


def _name(doc: Path) -> str:
    try:
        return doc.relative_to(ROOT).as_posix()
    except ValueError:
        return doc.name


def check_links(doc: Path, results: Path | None = None) -> tuple[int, list[str]]:
    """(number of linked figures, problems) for one markdown file."""
    text, problems, n = doc.read_text(), [], 0
    code = [c.span() for c in CODE.finditer(text)]  # an example in `code` is not a figure
    for m in LINK.finditer(text):
        if any(a <= m.start() < b for a, b in code):
            continue
        n += 1
        line = text.count("\n", 0, m.start()) + 1
        where = f"{_name(doc)}:{line}: [{m['text']}]({m['name']}.json \"{m['key']}\")"
        path = (results / f"{m['name']}.json") if results else (doc.parent / m["path"])
        if not path.is_file():
            problems.append(f"{where}: no results file {path}")
            continue
        figures = json.loads(path.read_text()).get("figures", {})
        if m["key"] not in figures:
            problems.append(f"{where}: {path.name} has no figure {m['key']!r}")
        elif not agrees(m["text"], figures[m["key"]], m["key"]):
            problems.append(f"{where}: the file holds {figures[m['key']]!r}")
    return n, problems


def regions(doc: Path) -> list[tuple[int, str]]:
    """(first line number, text) of each figure section."""
    text = doc.read_text()
    if doc in WHOLE:
        return [(1, text)]
    out, pos = [], 0
    while (a := text.find(OPEN, pos)) != -1:
        b = text.find(CLOSE, a)
        if b == -1:
            raise ValueError(f"{doc.name}: {OPEN} at line {text.count(chr(10), 0, a) + 1} is never closed")
        out.append((text.count("\n", 0, a) + 1, text[a:b]))
        pos = b
    return out


def blocks(first_line: int, region: str) -> list[tuple[int, str, str]]:
    """(line, block, context) per paragraph, top-level list item or table row; context is where a stamp
    may also sit: for a table row, its table and the paragraph above it; for a list item, the paragraph
    that introduces the list."""
    out, para, start, caption = [], [], first_line, ""
    in_code = False

    def flush():
        nonlocal para, caption
        if para:
            block = "\n".join(para)
            if block.startswith("|"):
                for i, row in enumerate(para):
                    out.append((start + i, row, caption + "\n" + block))
            elif block.startswith("- "):  # a list item: the paragraph that introduces the list may date it
                out.append((start, block, caption))
            else:
                out.append((start, block, ""))
                caption = block
        para = []

    for i, line in enumerate(region.splitlines()):
        if line.startswith("```"):
            in_code = not in_code
            flush()
            continue
        if in_code:
            continue
        if not line.strip() or line.startswith("#") or line.startswith("- ") or (
                line.startswith("|") != (bool(para) and para[0].startswith("|"))):
            flush()
            start = first_line + i
            if line.startswith("#"):
                caption = ""
            if not line.strip() or line.startswith("#"):
                continue
        para.append(line)
    flush()
    return out


def unsourced(doc: Path) -> list[str]:
    """Figures in a figure section that are neither linked to a results file nor dated."""
    problems = []
    for first, region in regions(doc):
        for line, block, context in blocks(first, region):
            bare = CODE.sub("", LINK.sub("", block))  # commands and code are not figures
            found = FIGURE.findall(bare)
            if block.startswith("|") and not set(block) <= set("|-: "):  # table cells: decimals are figures too
                found += [n for cell in bare.strip("|").split("|")[1:] for n in DECIMAL.findall(cell)
                          if not cell.strip().startswith(("≤", "≥", "<", ">"))]
            if found and not (STAMP.search(CODE.sub("", block)) or STAMP.search(CODE.sub("", context))):
                problems.append(f"{_name(doc)}:{line}: no results link or '(measured DATE, commit HASH)' for "
                                f"{', '.join(found)}")
    return problems


def stamps(doc: Path) -> list[tuple[str, str]]:
    return STAMP.findall(CODE.sub("", doc.read_text()))


def fix(doc: Path) -> int:
    """Rewrite each linked figure's number from its results file (same decimals); returns how many changed."""
    text, changed = doc.read_text(), 0

    def repl(m):
        nonlocal changed
        path = doc.parent / m["path"]
        value = json.loads(path.read_text()).get("figures", {}).get(m["key"]) if path.is_file() else None
        num = shown(m["text"])
        if num is None or not isinstance(value, (int, float)) or agrees(m["text"], value, m["key"]):
            return m.group()
        v = scaled(m["text"], m["key"], value)[-1 if "%" in m["text"] and abs(value) <= 1 else 0]
        new = f"{v:,.{num[1]}f}" if "," in NUMBER.search(m["text"]).group() or abs(v) >= 10_000 else f"{v:.{num[1]}f}"
        changed += 1
        return m.group().replace(m["text"], NUMBER.sub(new, m["text"], count=1), 1)

    doc.write_text(LINK.sub(repl, text))
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fix", action="store_true", help="rewrite linked figures from the results files")
    args = ap.parse_args(argv)
    problems = []
    for doc in DOCS:
        if args.fix:
            print(f"{_name(doc)}: {fix(doc)} figures rewritten")
        n, p = check_links(doc)
        problems += p + unsourced(doc)
        print(f"{_name(doc)}: {n} linked figures, {len(stamps(doc))} dated statements")
    print("\n".join(problems) or "every figure has a results file or a date")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
