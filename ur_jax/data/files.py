"""Small file-system helpers shared by the manual-download builders' error messages."""

from __future__ import annotations

from pathlib import Path


def listing(path: Path, limit: int = 12) -> str:
    """What ``path`` holds, for an error message: sorted names (folders end in ``/``), at
    most ``limit`` of them, ``(empty)``, or why it cannot be listed."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir())
    except OSError as e:
        return f"(cannot list {path}: {e})"
    if not entries:
        return "(empty)"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more
