"""``<out>/cdm/cdm-<part>.jsonl`` (``--write cdm``): one DT4H CDM ``NlpResponse`` per document
(``transforms.formats.cdm``), its mentions as annotations."""

from __future__ import annotations

import json

from transforms.formats.cdm import response
from transforms.outputs.base import File, TextOutput


class Cdm(TextOutput):
    name = "cdm"
    files = (File(folder="cdm", suffix=".jsonl"),)

    def rows(self, doc):
        return {"": doc.extra.get(self.name, ())}

    def render(self, doc, document, mentions, info) -> tuple:
        return (response(document, doc.text, mentions, info),)

    def encode(self, row) -> bytes:
        return json.dumps(row, ensure_ascii=False).encode() + b"\n"


OUTPUT = Cdm()
