import gzip
import json

import pytest

from tests.conftest import E3C
from transforms.inference.language import LOOKALIKES, LanguageDetector, lang_from_name


@pytest.fixture(scope="module")
def detector():
    return LanguageDetector(LOOKALIKES)


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
