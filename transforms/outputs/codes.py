"""``<out>/<task>_codes.tsv``: the mentions a linker covers, in the entity-linking shared
tasks' format (the MultiClinAI columns plus ``code``; ``NO_CODE`` where none was found), from
each part's rows under ``<out>/_codes/<task>/``. No linker: no file."""

from __future__ import annotations

from transforms.outputs.tsv import COLUMNS, Tsv, tsv_field, tsv_line

NO_CODE = "NO_CODE"


class Codes(Tsv):
    name, folder, target, columns = "codes", "_codes", "{task}_codes.tsv", (*COLUMNS, "code")
    always = False

    def keeps(self, row) -> bool:
        return row.get("link_candidates") is not None

    def line(self, row) -> str:
        return f"{tsv_line(row)}\t{tsv_field(row.get('code') or NO_CODE)}"


OUTPUT = Codes()
