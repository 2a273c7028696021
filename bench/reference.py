"""A faithful, deliberately naive re-implementation of the DT4H reference inference loop.

It follows ``predict_mentions_stl_hf.py`` / ``predict_mentions_mtl_local.py`` of
``nlp4bia-bsc/DT4H_Multilingual_NER``: raw text into the tokenizer, 512-token windows with stride
128 padded to 512, one window per forward pass in fp32, votes per word span, their B/I/O walk and
punctuation trimming. It is the baseline of the benchmark and the oracle that the pipeline's
``--reference_compat`` mode is tested against, so it shares no decoding code with the pipeline.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Callable

import torch

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def hf_logits_fn(model) -> LogitsFn:
    """Logits of a Hugging Face token classifier."""
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def head_logits_fn(encoder, head) -> LogitsFn:
    """Logits of an encoder followed by one linear head (the MTL models)."""
    return lambda ids, mask: head(encoder(input_ids=ids, attention_mask=mask).last_hidden_state)


def _strip(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while s < e and text[e - 1].isspace():
        e -= 1
    while s < e and unicodedata.category(text[s])[0] == "P":
        s += 1
    while s < e and unicodedata.category(text[e - 1])[0] == "P":
        e -= 1
    return s, e


def reference_entities(
    text: str, tokenizer, logits_fn: LogitsFn, id2label: dict[int, str],
    max_length: int = 512, stride: int = 128,
) -> list[dict]:
    """The reference scripts' entities of one text: dicts of label, start, end, text."""
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length,
                    return_offsets_mapping=True, return_overflowing_tokens=True, stride=stride,
                    padding="max_length")
    votes: dict[tuple[int, int], list[str]] = {}
    for w in range(enc["input_ids"].shape[0]):
        with torch.no_grad():
            logits = logits_fn(enc["input_ids"][w : w + 1], enc["attention_mask"][w : w + 1])
        pred = logits.argmax(-1)[0].tolist()
        offsets = enc["offset_mapping"][w].tolist()
        by_word: dict[int, list[int]] = {}
        for i, wid in enumerate(enc.word_ids(batch_index=w)):
            if wid is not None:
                by_word.setdefault(wid, []).append(i)
        for wid in sorted(by_word):
            idx = by_word[wid]
            span = (offsets[idx[0]][0], offsets[idx[-1]][1])
            if span != (0, 0):
                votes.setdefault(span, []).append(id2label.get(pred[idx[0]], "O"))
    words = []
    for span, labels in votes.items():
        ranked = Counter(labels).most_common()
        best = [lab for lab, n in ranked if n == ranked[0][1]]
        if len(best) > 1 and "O" in best:
            best.remove("O")
        words.append((span[0], span[1], best[0]))
    words.sort(key=lambda x: (x[0], x[1]))

    out: list[dict] = []
    ent = start = end = None

    def close() -> None:
        if ent is not None:
            s, e = _strip(text, start, end)
            if s < e:
                out.append({"label": ent, "start": s, "end": e, "text": text[s:e]})

    for s, e, lab in words:
        if lab[:2] == "B-":
            close()
            ent, start, end = lab[2:], s, e
        elif lab[:2] == "I-":
            if ent == lab[2:]:
                end = e
        else:
            close()
            ent = start = end = None
    close()
    return out
