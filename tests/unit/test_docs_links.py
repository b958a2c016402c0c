"""Every relative link in README.md and docs/*.md leads somewhere.

A link to a file must name one that exists in the repository; a link with a
#fragment must name a heading (by GitHub's slug rule) or an explicit anchor
of the file it points to. Links with a scheme (https:, mailto:) are not
followed: the check must pass offline.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
# [text](target) and ![alt](target); the target ends at whitespace or ")".
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, without
    punctuation but hyphens and underscores, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        seen = counts.get(base, 0)
        counts[base] = seen + 1
        found.add(base if seen == 0 else f"{base}-{seen}")
    return found


def broken_links(path: Path, repo: Path = REPO) -> list[str]:
    """One line per link of `path` that leads nowhere."""
    path, repo = path.resolve(), repo.resolve()
    problems = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            if _SCHEME.match(target):
                continue
            where = f"{path.relative_to(repo)}:{number}: {target}"
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.is_relative_to(repo):
                problems.append(f"{where}: outside the repository")
            elif not dest.exists():
                problems.append(f"{where}: no such file")
            elif fragment:
                if dest.suffix != ".md" or dest.is_dir():
                    problems.append(f"{where}: an anchor into a file that is not Markdown")
                elif fragment not in anchors(dest):
                    problems.append(f"{where}: no heading or anchor #{fragment} in {dest.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Title\n\n## 2. Where it is: `here`\n\n<a id=\"kept\"></a>\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/other.md#2-where-it-is-here) [ok](docs/other.md#kept) [ok](#top)\n"
        "# Top\n"
        "[gone](docs/missing.md) [bad anchor](docs/other.md#nowhere) [web](https://example.org/x)\n"
        "`[code](not/a/link.md)`\n"
        "```\n[fenced](not/a/link.md)\n```\n"
        "[escape](../../etc/passwd)\n"
    )
    problems = broken_links(doc, tmp_path)
    assert [p.split(": ")[-1] for p in problems] == [
        "no such file", "no heading or anchor #nowhere in other.md", "outside the repository"]


def test_slug_follows_github() -> None:
    assert slug("6. Security model: the walls") == "6-security-model-the-walls"
    assert slug("cgroups: Delegate=") == "cgroups-delegate"
    assert slug("Order of the host's set-up") == "order-of-the-hosts-set-up"
    assert slug("The `pool` key") == "the-pool-key"
