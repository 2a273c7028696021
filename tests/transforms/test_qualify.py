"""A document's spans -> its mention rows, flagged by the qualifier tasks that ran on it."""

import pytest

from tests.fixtures.works import NEGATION, QUALIFIED, SPECS, annotate, work
from transforms.core.records import Failure


@pytest.mark.parametrize("compat", [False, True])
def test_a_qualifier_flags_the_mentions_of_its_document(compat):
    rows = annotate({**SPECS, "negation": NEGATION}, compat)(
        work(("symptom", "negation"), QUALIFIED))
    flags = {(s["task"], s["label"], s["text"]): (s["negated"], s["negated_score"],
                                                  s["uncertain"], s["uncertain_score"])
             for s in rows.spans}
    assert flags == {
        ("symptom", "SYMPTOM", "dolor abdominal"): (False, None, True, 0.5),
        ("symptom", "SYMPTOM", "fiebre"): (True, 0.5, False, None),
        # the qualifier's own scopes are written under its name, unflagged
        ("negation", "USCO", "dolor"): (None, None, None, None),
        ("negation", "NSCO", "fiebre"): (None, None, None, None)}


def test_mentions_of_a_document_the_qualifier_did_not_run_on_have_null_flags():
    specs = {**SPECS, "negation": NEGATION}
    not_routed = annotate(specs, False)(work(("symptom",), QUALIFIED))
    failed = annotate(specs, False)(work(("symptom", "negation"), QUALIFIED,
                                        [Failure("k", "negation", "inference", "IndexError")]))
    for rows in (not_routed, failed):
        assert [s["task"] for s in rows.spans] == ["symptom", "symptom"]
        assert {(s["negated"], s["uncertain"]) for s in rows.spans} == {(None, None)}
    unqualified = annotate(SPECS, False)(work(("symptom",), QUALIFIED))
    assert {s["negated"] for s in unqualified.spans} == {None}
