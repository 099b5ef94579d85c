"""Durations and sizes as people read them, shared by the progress lines, the status command and the report."""

from __future__ import annotations


def duration_text(seconds: float | None) -> str:
    """``"3m07s"``, ``"2h05m"``, ``"1d03h"``; ``"?"`` when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def bytes_text(size: float) -> str:
    """``"512 B"``, ``"3.4 MB"``, ``"1.25 TB"`` (decimal units, as disks are sold)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"
