import gzip
import json

import pytest

from tests.conftest import E3C
from transforms.language import LOOKALIKES, LanguageDetector, lang_from_name
from transforms.records import Document
from transforms.route import assign_language, route

TASKS = {"procedure": ("es", "it", "ro", "en", "nl", "sv", "cs"), "symptom": ("es", "it", "ro")}


@pytest.fixture(scope="module")
def detector():
    return LanguageDetector(LOOKALIKES)


def doc(text="Paciente con fiebre.", doc_id="d1", lang=None):
    return Document(doc_id, doc_id, text, "src", lang=lang)


def test_sources_in_order(detector):
    it_text = "Il paziente presenta febbre alta e tosse da tre giorni."
    # The record's field wins over everything, then the MultiClinAI file name, then the option.
    d = assign_language(doc(it_text, "MultiClinNER-ro-1", lang="CZ"), "es", detector.detect)
    assert (d.lang, d.lang_source) == ("cs", "record")
    d = assign_language(doc(it_text, "MultiClinNER-ro-1"), "es", detector.detect)
    assert (d.lang, d.lang_source) == ("ro", "filename")
    d = assign_language(doc(it_text), "es", detector.detect)
    assert (d.lang, d.lang_source, d.lang_score) == ("es", "option", None)
    d = assign_language(doc(it_text), None, detector.detect)
    assert (d.lang, d.lang_source) == ("it", "detected") and d.lang_score > 0.5


def test_name_pattern():
    assert lang_from_name("MultiClinNER-it-CardioCCC_12") == "it"
    assert lang_from_name("S0004-06142005000500011-1") is None


@pytest.mark.parametrize("lang", ["es", "en", "it"])
def test_detects_real_clinical_notes(detector, lang):
    with gzip.open(E3C / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(400), f)]
    got = [detector.detect(t).lang for t in texts]
    assert sum(g == lang for g in got) / len(got) >= 0.99


def test_undetermined(detector):
    assert detector.detect("12/03/2020 10:00 -- 4,5").lang == "und"
    assert detector.detect("   \n ").lang == "und"
    d = route(assign_language(doc("12/03/2020 10:00 -- 4,5"), None, detector.detect), TASKS)
    assert d.status == "skipped" and "und" in d.reason


def test_routing():
    assert route(doc(lang="es").with_(lang="es"), TASKS).tasks == ("procedure", "symptom")
    assert route(doc().with_(lang="en"), TASKS).tasks == ("procedure",)
    fr = route(doc().with_(lang="fr"), TASKS)
    assert fr.status == "skipped" and fr.reason == "no task supports language 'fr'"
    assert route(doc(" \n").with_(lang="es"), TASKS).reason == "empty text"
