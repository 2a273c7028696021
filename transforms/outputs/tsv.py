"""``<out>/<task>.tsv``: the MultiClinAI format ``filename label start_span end_span text``,
one per task, and ``<out>/_tsv/<task>/<part>.tsv``, each part's rows of it (``<task>.tsv`` is
their concatenation: a commit appends its parts' rows, under a journal so that a retry does not
append twice, or rebuilds it when rows were dropped)."""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterable, Mapping, Sequence

from transforms.io.storage import atomic_output, is_local
from transforms.outputs.base import File, TextOutput

COLUMNS = ("filename", "label", "start_span", "end_span", "text")
HEADER = "\t".join(COLUMNS)
FOLDER = "_tsv"
_NEEDS_QUOTES = frozenset('\t"\n\r')


def tsv_field(value: object) -> str:
    """A TSV field, CSV-quoted when it holds a tab, a quote or a line break (``\\r`` too)."""
    s = str(value)
    if _NEEDS_QUOTES.isdisjoint(s):
        return s
    return '"' + s.replace('"', '""') + '"'


def tsv_line(row: Mapping[str, Any]) -> str:
    """A span row as one MultiClinAI TSV record (without the final newline)."""
    return "\t".join(
        tsv_field(v) for v in (row["doc_id"], row["label"], row["start"], row["end"], row["text"])
    )


def output_tasks(fs, root: str, tasks: Iterable[str]) -> list[str]:
    """``tasks`` and every task whose TSV rows the output holds (an earlier task file's too)."""
    return sorted({*tasks, *(posixpath.basename(p) for p in
                             fs.glob(posixpath.join(root, FOLDER, "*")) if fs.isdir(p))})


def _put(fs, path: str, data: bytes) -> None:
    with atomic_output(fs, path) as f:
        f.write(data)


def _copy_into(fs, dst, paths: Iterable[str]) -> None:
    for path in paths:
        with fs.open(path, "rb") as src:
            while chunk := src.read(8 << 20):
                dst.write(chunk)


def _journal(root: str, task: str) -> str:
    return posixpath.join(root, FOLDER, f"{task}.journal")


def _append(fs, tsv: str, size: int, parts: Sequence[str]) -> None:
    """Append ``parts`` to ``tsv`` after its first ``size`` bytes (a retry rewinds first)."""
    if is_local(fs):
        with open(tsv, "r+b") as f:
            f.truncate(size)
            f.seek(size)
            _copy_into(fs, f, parts)
        return
    head = fs.cat_file(tsv, start=0, end=size)  # object stores cannot append: rewrite
    with atomic_output(fs, tsv) as f:
        f.write(head)
        _copy_into(fs, f, parts)


class Tsv(TextOutput):
    name = "tsv"
    files = (File(folder=FOLDER + "/{stream}", suffix=".tsv", name="{part}{suffix}"),)

    def rows(self, doc):
        by_task: dict[str, list] = {}
        for span in doc.spans:
            by_task.setdefault(span["task"], []).append(span)
        return by_task

    def encode(self, row) -> bytes:
        return (tsv_line(row) + "\n").encode("utf-8")

    def complete(self, fs, root, run_id, streams, mine) -> None:
        """Each ``<task>.tsv``: this run's rows appended, or rebuilt from all parts' rows."""
        tasks = output_tasks(fs, root, streams) if mine is None else streams
        for task in tasks:
            tsv, journal = posixpath.join(root, f"{task}.tsv"), _journal(root, task)
            pending = json.loads(fs.cat(journal)) if fs.exists(journal) else None
            parts = self.files[0]
            if mine is None or not fs.exists(tsv) or (pending and pending["run"] != run_id):
                found = sorted(fs.glob(posixpath.join(root, FOLDER, task, "*.tsv")))
                with atomic_output(fs, tsv) as f:
                    f.write((HEADER + "\n").encode("utf-8"))
                    _copy_into(fs, f, found)
                if pending:
                    fs.rm(journal)
            else:
                if pending is None:
                    pending = {"run": run_id, "size": fs.size(tsv)}
                    _put(fs, journal, json.dumps(pending).encode())
                _append(fs, tsv, pending["size"],
                        [p for p in (parts.path(root, self.name, name, task)
                                     for name in sorted(mine)) if fs.exists(p)])

    def completed(self, fs, root, streams) -> None:
        """The journals go once the run is recorded complete (a retry before then rewinds)."""
        for task in output_tasks(fs, root, streams):
            if fs.exists(_journal(root, task)):
                fs.rm(_journal(root, task))


OUTPUT = Tsv()
