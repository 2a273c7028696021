"""Terminologies as hospitals hold them: a TSV of synonyms, or an OMOP vocabulary from Athena."""

import pytest

from transforms.io.terminology import TerminologyError, digest, read_terms

CONCEPT = ("concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\t"
           "standard_concept\tconcept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
           "21\tFever\tCondition\tSNOMED\tClinical Finding\tS\t386661006\t20020131\t20991231\t\n"
           "22\tHeadache\tCondition\tSNOMED\tClinical Finding\tS\t25064002\t20020131\t20991231\t\n"
           "23\tOld pain\tCondition\tSNOMED\tClinical Finding\t\t1111\t20020131\t20100101\tD\n"
           "24\tCT of head\tProcedure\tSNOMED\tProcedure\tS\t408754009\t20020131\t20991231\t\n"
           '25\tR50.9 "fever"\tCondition\tICD10CM\t4-char billing code\t\tR50.9\t20070101\t'
           "20991231\t\n")
SYNONYM = ("concept_id\tconcept_synonym_name\tlanguage_concept_id\n"
           "21\tFiebre\t4182511\n21\tpyrexia\t4180186\n23\tdolor antiguo\t4182511\n")


@pytest.fixture
def omop(tmp_path):
    (tmp_path / "CONCEPT.csv").write_text(CONCEPT)
    (tmp_path / "CONCEPT_SYNONYM.csv").write_text(SYNONYM)
    return tmp_path


def test_an_omop_vocabulary_filtered_with_its_synonyms_and_concept_ids(omop):
    terms = read_terms(str(omop), filters={"vocabulary_id": ["SNOMED"],
                                           "domain_id": ["Condition"]})
    assert sorted((t.code, t.term, t.system, t.concept_id, t.preferred) for t in terms) == [
        ("25064002", "Headache", "SNOMED", 22, "Headache"),
        ("386661006", "Fever", "SNOMED", 21, "Fever"),
        ("386661006", "Fiebre", "SNOMED", 21, "Fever"),
        ("386661006", "pyrexia", "SNOMED", 21, "Fever")]  # never an invalidated concept
    everything = read_terms(str(omop))
    assert ('R50.9 "fever"', "ICD10CM") in {(t.term, t.system) for t in everything}  # unquoted
    non_standard = read_terms(str(omop), filters={"standard_concept": ["none"]})
    assert {t.code for t in non_standard} == {"R50.9"}
    with pytest.raises(TerminologyError, match="no term that passes its filters"):
        read_terms(str(omop), filters={"domain_id": ["Drug"]})
    with pytest.raises(TerminologyError, match="unknown"):
        read_terms(str(omop), filters={"domain": ["Drug"]})


def test_a_tsv_of_synonyms_with_a_header_and_languages(tmp_path):
    f = tmp_path / "hpo.tsv"
    f.write_text("code\tterm\tlanguage\nHP:0001945\tFever\ten\nHP:0001945\tFiebre\tes\n"
                 "\nHP:0002315\tHeadache\t\n")
    terms = read_terms(str(f), system="HPO")
    assert [(t.code, t.term, t.language, t.preferred, t.system) for t in terms] == [
        ("HP:0001945", "Fever", "en", "Fever", "HPO"),
        ("HP:0001945", "Fiebre", "es", "Fever", "HPO"),
        ("HP:0002315", "Headache", None, "Headache", "HPO")]
    assert read_terms(str(f))[0].system == "hpo"  # its file name, for the CDM's namespace
    f.write_bytes("\ufeffcode\tterm\nC1\tfiebre\n".encode())  # as Excel writes it
    assert [(t.code, t.term) for t in read_terms(str(f))] == [("C1", "fiebre")]
    f.write_text("C1\t---\nC2\t...\n")
    with pytest.raises(TerminologyError, match="no term .*letter or digit"):
        read_terms(str(f))
    f.write_text("C1\tfiebre\n")
    with pytest.raises(TerminologyError, match="`filters:` are for an OMOP"):
        read_terms(str(f), filters={"vocabulary_id": ["SNOMED"]})
    with pytest.raises(TerminologyError, match="a folder without CONCEPT.csv"):
        read_terms(str(tmp_path))
    f.write_text("HP:1\tone\nHP:2 two\n")
    with pytest.raises(TerminologyError, match="line 2"):
        read_terms(str(f))
    with pytest.raises(TerminologyError, match="unreadable"):
        read_terms(str(tmp_path / "missing.tsv"))


def test_a_terms_language_is_a_documents_language_code(tmp_path):
    """Languages as documents carry them (``es-ES`` is ``es``); a name is refused, not kept
    to code nothing."""
    f = tmp_path / "t.tsv"
    f.write_text("C1\tfiebre\tes-ES\nC1\thorečka\tCZ\nC1\tfever\t EN \n")
    assert [t.language for t in read_terms(str(f))] == ["es", "cs", "en"]
    f.write_text("C1\tfiebre\tes\nC1\tfever\tenglish\n")
    with pytest.raises(TerminologyError, match="line 2: language 'english' is not a language"):
        read_terms(str(f))


def test_an_omop_file_without_a_column_it_needs_says_which(tmp_path):
    (tmp_path / "CONCEPT.csv").write_text("concept_id\tconcept_name\tconcept_code\n1\tx\tC\n")
    with pytest.raises(TerminologyError, match=r"CONCEPT.csv lacks the column\(s\) \["):
        read_terms(str(tmp_path))


def test_the_digest_follows_the_content(tmp_path, omop):
    before = digest(str(omop))
    (omop / "CONCEPT_SYNONYM.csv").write_text(SYNONYM + "22\tcefalea\t4182511\n")
    assert digest(str(omop)) != before


def test_a_remote_terminology_rewritten_in_place_is_a_new_one():
    """A bucket's object rewritten under the same name (same size even) gets a new digest:
    no stale index, no shards wrongly left as done."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/terms/t.tsv", b"C1\tfiebre\n")
    before = digest("memory://terms/t.tsv")
    assert digest("memory://terms/t.tsv") == before
    fs.pipe("/terms/t.tsv", b"C2\tfiebre\n")
    assert digest("memory://terms/t.tsv") != before
    fs.pipe("/omop/CONCEPT.csv", CONCEPT.encode())
    assert len(read_terms("memory://omop")) == 4 and digest("memory://omop")
