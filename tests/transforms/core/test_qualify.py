"""The scope rule: a mention starting or ending inside a qualifier's scope is flagged."""

import pytest

from transforms.core.qualify import Flag, flag_columns, in_scopes, scopes_by_flag
from transforms.core.spans import Span

SCOPE = Span("NSCO", 10, 20, 0.9)


@pytest.mark.parametrize("mention, flagged", [
    ((12, 18), True),   # inside
    ((10, 20), True),   # exactly the scope
    ((5, 12), True),    # straddles the scope's start: ends inside
    ((15, 25), True),   # straddles the scope's end: starts inside
    ((10, 11), True),   # starts at the scope's start
    ((19, 20), True),   # ends at the scope's end
    ((5, 25), False),   # contains the scope: neither starts nor ends inside
    ((5, 10), False),   # touches the scope's start
    ((20, 25), False),  # touches the scope's end
    ((0, 4), False),    # before it
    ((30, 40), False),  # after it
])
def test_the_scope_rule(mention, flagged):
    assert in_scopes([mention], [SCOPE]) == [Flag(True, 0.9) if flagged else Flag(False, None)]


def test_of_two_scopes_holding_a_mention_the_best_score_is_kept():
    scopes = [Span("NSCO", 0, 12, 0.6), Span("NSCO", 8, 30, 0.8), Span("NSCO", 40, 50, 0.99)]
    assert in_scopes([(10, 14), (2, 4), (35, 38), (45, 60)], scopes) == [
        Flag(True, pytest.approx(0.8)), Flag(True, pytest.approx(0.6)), Flag(False, None),
        Flag(True, pytest.approx(0.99))]


def test_no_scope_means_not_flagged_and_no_mention_means_nothing():
    assert in_scopes([(1, 2)], []) == [Flag(False, None)]
    assert in_scopes([], [SCOPE]) == []


def test_scopes_are_the_spans_of_the_labels_the_qualifier_maps():
    spans = [Span("NEG", 0, 2, 0.9), Span("NSCO", 3, 9, 0.8), Span("USCO", 12, 20, 0.7)]
    assert scopes_by_flag(spans, {"NSCO": "negated", "USCO": "uncertain"}) == {
        "negated": [spans[1]], "uncertain": [spans[2]]}
    assert scopes_by_flag(spans[:1], {"NSCO": "negated"}) == {"negated": []}


def test_a_flag_no_qualifier_ran_for_is_null_not_false():
    rows = flag_columns([(12, 18), (30, 40)], {"negated": [SCOPE]})
    assert rows == [
        {"negated": True, "negated_score": 0.9, "uncertain": None, "uncertain_score": None},
        {"negated": False, "negated_score": None, "uncertain": None, "uncertain_score": None}]
    assert flag_columns([(12, 18)], {}) == [
        {"negated": None, "negated_score": None, "uncertain": None, "uncertain_score": None}]
