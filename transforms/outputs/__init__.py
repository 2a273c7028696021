"""The outputs, one module per kind: what a document adds to it, the files a part holds of
it, and how its rows are dropped (``base.Output``). ``REGISTRY`` is the one list of them; the
commit protocol (``commit``) and the part writer (``parts``) know no kind by name.

Adding an output: a module here whose ``OUTPUT`` is an ``Output``, and its name in
``REGISTRY``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from transforms.outputs.base import Output

# every output, in the order a part writes them; True: written only when ``--write`` names it
REGISTRY = {"spans": False, "documents": False, "errors": False, "tsv": False,
            "codes": False, "cdm": True, "note_nlp": True}
OPT_IN = tuple(name for name, opt_in in REGISTRY.items() if opt_in)


def output(name: str) -> Output:
    """The output ``name`` (its module's ``OUTPUT``)."""
    return importlib.import_module(f"transforms.outputs.{name}").OUTPUT


def enabled(opt_in: Iterable[str] = ()) -> tuple[Output, ...]:
    """The outputs a run writes: every default one and the opt-in ones it names."""
    chosen = set(opt_in)
    return tuple(output(n) for n, o in REGISTRY.items() if not o or n in chosen)


def clashing_files(tasks: Iterable[str]) -> tuple[str, str, str] | None:
    """Two tasks whose files at the output's top have one name (``symptom_codes.tsv`` of task
    ``symptom``'s codes and of a task ``symptom_codes``; case apart, as on macOS and Windows
    disks): ``(file, task, other task)``, or None."""
    seen: dict[str, str] = {}
    for task in tasks:
        for out in every():
            for name in out.task_files(task):
                other = seen.setdefault(name.casefold(), task)
                if other != task:
                    return name, other, task
    return None


def every() -> tuple[Output, ...]:
    """Every output (a commit or a recovery handles what any earlier run wrote)."""
    return tuple(output(n) for n in REGISTRY)
