"""MkDocs hooks: README.md is the site's first page.

The README is the repository's front page on a forge and the site's home page, written once: it
links into the docs as `docs/user-guide.md`, the pages link back as `../README.md`. Here the README
becomes `index.md` and both kinds of links are rewritten to what they are inside the site, before
MkDocs checks them (`mkdocs build --strict` fails on a link that points nowhere).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_TO_DOCS = re.compile(r"\]\(docs/")
_TO_README = re.compile(r"\]\(\.\./((?:\.\./)*)README\.md")


def on_files(files: Files, config: Any) -> Files:
    readme = Path(config["config_file_path"]).parent / "README.md"
    files.append(File.generated(config, "index.md", content=readme.read_text(encoding="utf-8")))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == "index.md":
        return _TO_DOCS.sub("](", markdown)
    return _TO_README.sub(lambda m: f"]({m.group(1)}index.md", markdown)
