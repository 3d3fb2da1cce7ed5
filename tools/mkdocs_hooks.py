"""MkDocs hooks (``hooks:`` in mkdocs.yml).

``docs/contributing.md`` is a stand-in: its content is ``CONTRIBUTING.md`` at the
repository root, read at build time, with links into ``docs/`` made relative to the
site. One file to edit; GitHub shows it at the root, the site under Contributing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "contributing.md":
        return markdown
    text = CONTRIBUTING.read_text()
    return re.sub(r"\]\(docs/", "](", text)
