"""Each document's language (record, file name, option, detection, in that order) and the
tasks that support it."""

from transforms.inference.language import Detected
from transforms.core.records import Document
from transforms.route import assign_language, route

TASKS = {"symptom": ("es", "it"), "procedure": ("es", "en", "cs")}


def doc(**kw):
    return Document("k", kw.pop("doc_id", "d"), kw.pop("text", "Fiebre."), "s", **kw)


def detect(text):
    return Detected("it", 0.9)


def test_sources_in_order_with_the_real_detector():
    from transforms.inference.language import LOOKALIKES, LanguageDetector

    detector = LanguageDetector(LOOKALIKES)
    it_text = "Il paziente presenta febbre alta e tosse da tre giorni."
    # The record's field wins over everything, then the MultiClinAI file name, then the option.
    d = assign_language(doc(text=it_text, doc_id="MultiClinNER-ro-1", lang="CZ"), "es",
                        detector.detect)
    assert (d.lang, d.lang_source) == ("cs", "record")
    d = assign_language(doc(text=it_text, doc_id="MultiClinNER-ro-1"), "es", detector.detect)
    assert (d.lang, d.lang_source) == ("ro", "filename")
    d = assign_language(doc(text=it_text), "es", detector.detect)
    assert (d.lang, d.lang_source, d.lang_score) == ("es", "option", None)
    d = assign_language(doc(text=it_text), None, detector.detect)
    assert (d.lang, d.lang_source) == ("it", "detected") and d.lang_score > 0.5
    d = route(assign_language(doc(text="12/03/2020 10:00 -- 4,5"), None, detector.detect), TASKS)
    assert d.status == "skipped" and "und" in d.reason


def test_the_first_source_that_knows_the_language_wins():
    assert assign_language(doc(lang="ES"), "en", detect).lang_source == "record"
    assert assign_language(doc(lang="ES"), "en", detect).lang == "es"
    named = assign_language(doc(doc_id="MultiClinNER-cz-17"), "en", detect)
    assert (named.lang, named.lang_source) == ("cs", "filename")
    assert assign_language(doc(), "en", detect).lang_source == "option"
    found = assign_language(doc(), None, detect)
    assert (found.lang, found.lang_source, found.lang_score) == ("it", "detected", 0.9)
    assert assign_language(doc(text="   "), None, detect).lang is None  # nothing to detect


def test_routing_to_the_tasks_of_the_language():
    assert route(doc(lang="es"), TASKS).tasks == ("symptom", "procedure")
    assert route(doc(lang="cs"), TASKS).tasks == ("procedure",)
    fr = route(doc(lang="fr"), TASKS)
    assert (fr.status, fr.reason, fr.tasks) == ("skipped", "no task supports language 'fr'", ())
    assert route(doc(lang="und"), TASKS).reason == "language undetermined (und)"
    assert route(doc(lang="es", text=" \n"), TASKS).reason == "empty text"
    failed = doc(lang="es", status="failed", reason="read: x")
    assert route(failed, TASKS) is failed


def test_a_record_language_that_is_no_code_is_skipped_without_echoing_it():
    from transforms.route import NOT_A_LANGUAGE

    for value in ("Paciente Juan Pérez, 45 años", "español", "e5", "x"):
        d = route(assign_language(doc(text="Fiebre.", lang=value), "es", None), {"t": ("es",)})
        assert (d.status, d.reason, d.lang) == ("skipped", NOT_A_LANGUAGE, None)
    d = assign_language(doc(text="Fiebre.", lang="es-ES"), None, None)
    assert (d.lang, d.status) == ("es", "")


def test_detection_can_be_asked_for_whatever_the_record_says():
    record = doc(text="Il paziente ha febbre.", doc_id="MultiClinNER-es-1", lang="es")
    assert assign_language(record, "es", detect).lang == "es"
    found = assign_language(record, None, detect, always_detect=True)
    assert (found.lang, found.lang_source, found.lang_score) == ("it", "detected", 0.9)
