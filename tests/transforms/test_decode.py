"""A document's predictions -> its spans per task, every head with its own labels."""

from tests.fixtures.works import SPECS, annotate, preds, work


def test_every_head_is_decoded_with_its_own_labels_and_overlaps_are_kept():
    # proc: O B I O -> "abdominal y"... with its own order (O, B-, I-): ids 1, 2 are B, I
    # sym: B-SYMPTOM I-SYMPTOM O B-SYMPTOM with ids 0, 1, 2, 0
    rows = annotate(SPECS, False)(work(("multi",), {"multi": preds(
        ("proc", "sym"), [0, 1, 2, 0], [0, 1, 2, 0])}))
    got = [(s["label"], s["start"], s["end"]) for s in rows.spans]
    assert got == [("SYMPTOM", 0, 15), ("PROCEDURE", 6, 17), ("SYMPTOM", 18, 24)]
    assert rows.counts["spans/multi/PROCEDURE"] == 1 and rows.counts["spans/multi/SYMPTOM"] == 2


def test_predictions_that_cannot_be_decoded_fail_their_task_only():
    from transforms.core.method import Method
    from transforms.decode import Decoder

    decoded = Decoder(SPECS, Method())(work(("symptom", "multi"), {
        "symptom": preds(("s_es",), [0, 99, 2, 0]),  # a label id the head does not have
        "multi": preds(("proc", "sym"), [0, 1, 2, 0], [0, 1, 2, 0])}))
    assert [(f.task, f.stage, f.error) for f in decoded.failures] == [
        ("symptom", "align", "IndexError")]
    assert set(decoded.spans) == {"multi"}
