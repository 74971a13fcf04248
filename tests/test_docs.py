"""The front door: a short README whose every link resolves, whose rendered block is the Results
page's, and a documentation site that builds in strict mode."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:  # Python-Markdown's toc slug (what mkdocs anchors are)
    s = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", s).strip("-")


def _anchors(md: Path) -> set[str]:
    text, out, code = md.read_text(), set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
        elif not code and (m := re.match(r"^#{1,6} (.*)", line)):
            out.add(_slug(m.group(1)))
    return out


def broken_links(md: Path) -> list[str]:
    bad = []
    for target in LINK.findall(md.read_text()):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor}")
    return bad


def test_the_readme_is_short_and_every_link_resolves():
    """Mutations caught: a link to a moved page (RELIABILITY.md), a wrong anchor, a README grown back."""
    readme = ROOT / "README.md"
    assert len(readme.read_text()) < 12_000
    assert broken_links(readme) == []
    for page in (ROOT / "docs").glob("*.md"):
        assert broken_links(page) == [], page.name


def test_the_link_checker_sees_a_broken_link_and_a_wrong_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n[ok](a.md#title) [gone](b.md) [bad](a.md#nope)\n")
    assert broken_links(tmp_path / "a.md") == ["b.md: no such file", "a.md#nope: no heading #nope"]


def test_the_readme_headline_block_is_the_results_page_block():
    blocks = lambda t: dict(re.findall(r"<!-- report:(\w+) -->\n(.*?)<!-- /report:\1 -->", t, re.S))  # noqa: E731
    readme = blocks((ROOT / "README.md").read_text())
    results = blocks((ROOT / "docs" / "results.md").read_text())
    assert readme and all(readme[k] == results[k] for k in readme)


def test_the_site_builds_in_strict_mode(tmp_path):
    """A broken link or a page missing from the site fails (mkdocs --strict)."""
    r = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "site" / "results" / "index.html").exists()
