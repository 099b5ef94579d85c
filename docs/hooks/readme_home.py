"""MkDocs hook: the site's home page is README.md, so the two cannot drift.

``docs/index.md`` holds only ``MARKER``; this puts the README in its place, with the README's
links into ``docs/`` made relative to the site (``docs/cohorts/index.md`` -> ``cohorts/index.md``).
The README links only into docs/ (anything else it names is a code span), so ``--strict`` checks
every one of its links as it checks the pages'.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MARKER = "<!-- generated: README.md -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs' hook: fill the marker with the README."""
    if MARKER not in markdown:
        return markdown
    readme = Path(config["config_file_path"]).parent / "README.md"
    return markdown.replace(MARKER, home_page(readme.read_text(encoding="utf-8")))


def home_page(readme: str) -> str:
    """The README as a page of the site: its ``](docs/...)`` links relative to docs/."""
    return re.sub(r"\]\(docs/", "](", readme)
