"""Negation and uncertainty: a qualifier task's scopes flag the mentions of its document.

Pure functions, no Beam. A qualifier task (``qualifies: {NSCO: negated, USCO: uncertain}`` in
the task file) is a token classifier like any other; its spans of a scope label become the
scopes of a flag. A mention is flagged when it starts or ends inside a scope, the rule of the
DT4H annotation service: ``scope.start <= start < scope.end`` or ``scope.start < end <=
scope.end``; its score is the best such scope's. A mention that only contains a scope, or
touches one at an edge, is not flagged.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from transforms.core.spans import Span

FLAGS = ("negated", "uncertain")


class Flag(NamedTuple):
    """A mention's flag: whether a scope holds it, and that scope's score (None if none)."""

    value: bool
    score: float | None


def in_scopes(mentions: Sequence[tuple[int, int]], scopes: Sequence[Span]) -> list[Flag]:
    """For each mention ``(start, end)``, whether it starts or ends inside one of ``scopes``,
    with the best score of those scopes."""
    if not mentions:
        return []
    if not scopes:
        return [Flag(False, None)] * len(mentions)
    m = np.asarray(mentions, dtype=np.int64).reshape(-1, 2)
    s_start = np.array([s.start for s in scopes])[None, :]
    s_end = np.array([s.end for s in scopes])[None, :]
    start, end = m[:, :1], m[:, 1:]
    hit = ((s_start <= start) & (start < s_end)) | ((s_start < end) & (end <= s_end))
    scores = np.where(hit, np.array([s.score for s in scopes])[None, :], -np.inf).max(axis=1)
    return [Flag(True, float(sc)) if h else Flag(False, None)
            for h, sc in zip(hit.any(axis=1), scores)]


def scopes_by_flag(spans: Iterable[Span], qualifies: Mapping[str, str]
                   ) -> dict[str, list[Span]]:
    """A qualifier task's spans of its scope labels, by the flag each label sets (every flag
    of ``qualifies`` present, with no scope when the task found none)."""
    found: dict[str, list[Span]] = {flag: [] for flag in qualifies.values()}
    for span in spans:
        flag = qualifies.get(span.label)
        if flag is not None:
            found[flag].append(span)
    return found


def flag_columns(mentions: Sequence[tuple[int, int]], scopes: Mapping[str, Sequence[Span]]
                 ) -> list[dict[str, bool | float | None]]:
    """Each mention's flag columns (``negated``, ``negated_score``, ...): a flag whose
    qualifier ran on the document is True or False (score or None); one that did not run
    (not in ``scopes``) is None, as is its score."""
    columns: list[dict[str, bool | float | None]] = [
        {c: None for flag in FLAGS for c in (flag, f"{flag}_score")} for _ in mentions]
    for flag, found in scopes.items():
        for row, result in zip(columns, in_scopes(mentions, found)):
            row[flag], row[f"{flag}_score"] = result.value, result.score
    return columns
