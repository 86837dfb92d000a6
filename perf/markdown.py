"""Reports own a marked section of a Markdown file, so several can share one document."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the section between ``start`` and ``end`` in ``path``, or append it.

    ``section`` must begin with ``start`` and end with ``end``.
    """
    text = path.read_text() if path.exists() else "# Results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
