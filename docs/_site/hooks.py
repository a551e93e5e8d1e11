"""MkDocs hooks for ``make docs``: the site is the same Markdown GitHub shows.

The README (as the home page), BENCHMARKS.md, RELIABILITY.md and data/README.md live
outside ``docs/``: they are added to the site as generated pages, and every link is
rewritten from where the file sits in the repository to where the page sits in the site.
A link to a repository file that is not a page (``params.yaml``) becomes its name in code.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# repository path -> site path of every page that lives outside docs/
OUTSIDE = {
    "README.md": "index.md",
    "BENCHMARKS.md": "BENCHMARKS.md",
    "RELIABILITY.md": "RELIABILITY.md",
    "data/README.md": "data.md",
}
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def rewrite(markdown: str, repo_path: str, site_path: str) -> str:
    """Links of a page that sits at ``repo_path`` in the repository and ``site_path`` in
    the site, pointed at the site's pages."""

    def fix(m: re.Match) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), path))
        if repo_target in OUTSIDE:
            site_target = OUTSIDE[repo_target]
        elif repo_target.startswith("docs/"):
            site_target = repo_target.removeprefix("docs/")
        else:  # a repository file, not a page
            return f"`{label}`" if not bang else ""
        rel = posixpath.relpath(site_target, posixpath.dirname(site_path) or ".")
        return f"{bang}[{label}]({rel}{'#' + anchor if anchor else ''})"

    parts, last = [], 0
    for block in _FENCE.finditer(markdown):  # never inside code blocks
        parts.append(_LINK.sub(fix, markdown[last : block.start()]))
        parts.append(block.group(0))
        last = block.end()
    parts.append(_LINK.sub(fix, markdown[last:]))
    return "".join(parts)


def on_files(files: Files, config) -> Files:
    for repo_path, site_path in OUTSIDE.items():
        text = (ROOT / repo_path).read_text()
        files.append(File.generated(config, site_path, content=rewrite(text, repo_path, site_path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = page.file.src_uri
    if src in OUTSIDE.values():
        return markdown  # rewritten when generated
    return rewrite(markdown, f"docs/{src}", src)
