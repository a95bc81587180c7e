"""Generated sections of a markdown results file (docs/results.md).

Scripts that measure something (``training ablation``, ``serving.bench``) replace their own section,
delimited by ``<!-- KEY:start -->`` / ``<!-- KEY:end -->``, and leave the hand-written text around
it alone; a section not there yet is appended under its heading.
"""

from __future__ import annotations

from pathlib import Path

from clda_deploy.checkpoint import atomic_write


def section_markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def write_section(path: str | Path, key: str, heading: str, body: str) -> Path:
    """Put ``body`` between the ``key`` markers of ``path`` (appended under ``## heading`` if absent)."""
    path = Path(path)
    start, end = section_markers(key)
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = f"{text.rstrip()}\n\n## {heading}\n\n{block}\n".lstrip()
    return atomic_write(path, lambda tmp: tmp.write_text(text))
