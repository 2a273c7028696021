"""``<out>/<task>.tsv``: the MultiClinAI format ``filename label start_span end_span text``,
one per task, and ``<out>/_tsv/<task>/<part>.tsv``, each part's rows of it (``<task>.tsv`` is
their concatenation: a commit adds its parts' rows, under a journal so that a retry does not
add them twice, or rebuilds it when rows were dropped; either way the file is written aside and
moved into place)."""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterable, Mapping, Sequence

from transforms.io.storage import atomic_output
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


def output_tasks(fs, root: str, tasks: Iterable[str], folder: str = FOLDER) -> list[str]:
    """``tasks`` and every task whose rows ``folder`` holds (an earlier task file's too)."""
    return sorted({*tasks, *(posixpath.basename(p) for p in
                             fs.glob(posixpath.join(root, folder, "*")) if fs.isdir(p))})


def _put(fs, path: str, data: bytes) -> None:
    with atomic_output(fs, path) as f:
        f.write(data)


def _copy_into(fs, dst, paths: Iterable[str]) -> None:
    for path in paths:
        with fs.open(path, "rb") as src:
            while chunk := src.read(8 << 20):
                dst.write(chunk)


def _journal(root: str, folder: str, task: str) -> str:
    return posixpath.join(root, folder, f"{task}.journal")


def _append(fs, tsv: str, size: int, parts: Sequence[str]) -> None:
    """Write ``tsv`` again as its first ``size`` bytes then ``parts`` (a retry starts from the
    same ``size``), aside, then moved into place: a reader, or a kill, never meets a row cut
    short (an append in place would show one until it ends)."""
    with atomic_output(fs, tsv) as f, fs.open(tsv, "rb") as head:
        left = size
        while left and (chunk := head.read(min(left, 8 << 20))):
            f.write(chunk)
            left -= len(chunk)
        _copy_into(fs, f, parts)


class Tsv(TextOutput):
    """A MultiClinAI TSV per task: ``<task>.tsv`` (``target``), from each part's rows under
    ``folder``; ``columns`` its header, ``line`` a row's record, ``keeps`` which rows;
    ``always``: written for every task, rows or not."""

    name, folder, target, columns = "tsv", FOLDER, "{task}.tsv", COLUMNS
    always = True  # a task's file is written even when it has no rows

    @property
    def files(self) -> tuple[File, ...]:
        return (File(folder=self.folder + "/{stream}", suffix=".tsv", name="{part}{suffix}"),)

    def keeps(self, row: Mapping[str, Any]) -> bool:
        return True

    def task_files(self, task: str) -> tuple[str, ...]:
        return (self.target.format(task=task),)

    def line(self, row: Mapping[str, Any]) -> str:
        return tsv_line(row)

    def rows(self, doc):
        by_task: dict[str, list] = {}
        for span in doc.spans:
            if self.keeps(span):
                by_task.setdefault(span["task"], []).append(span)
        return by_task

    def encode(self, row) -> bytes:
        return (self.line(row) + "\n").encode("utf-8")

    def complete(self, fs, root, run_id, streams, mine) -> None:
        """Each task's file: this run's rows appended, or rebuilt from all parts' rows."""
        tasks = output_tasks(fs, root, streams, self.folder) if mine is None else streams
        header = ("\t".join(self.columns) + "\n").encode("utf-8")
        for task in tasks:
            target = posixpath.join(root, self.target.format(task=task))
            journal = _journal(root, self.folder, task)
            pending = json.loads(fs.cat(journal)) if fs.exists(journal) else None
            if mine is None or not fs.exists(target) or (pending and pending["run"] != run_id):
                found = sorted(fs.glob(posixpath.join(root, self.folder, task, "*.tsv")))
                if not found and not fs.exists(target) and not self.always:
                    continue
                with atomic_output(fs, target) as f:
                    f.write(header)
                    _copy_into(fs, f, found)
            else:
                if pending is None:
                    pending = {"run": run_id, "size": fs.size(target)}
                    _put(fs, journal, json.dumps(pending).encode())
                _append(fs, target, pending["size"],
                        [p for p in (self.files[0].path(root, self.name, name, task)
                                     for name in sorted(mine)) if fs.exists(p)])

    def completed(self, fs, root, streams) -> None:
        """The journals go once the run is recorded complete (a retry before then rewinds)."""
        for task in output_tasks(fs, root, streams, self.folder):
            if fs.exists(_journal(root, self.folder, task)):
                fs.rm(_journal(root, self.folder, task))


OUTPUT = Tsv()
