import shutil
from pathlib import Path

import pytest

from pipeline.tasks import TaskFileError, load_tasks, normalize_lang


def write(tmp_path: Path, body: str) -> str:
    p = tmp_path / "tasks.yaml"
    p.write_text(body)
    return str(p)


@pytest.fixture()
def models(smoke_tasks, tmp_path) -> Path:
    d = tmp_path / "m"
    shutil.copytree(smoke_tasks.parent, d)
    return d


def test_smoke_task_file(smoke_tasks):
    specs = load_tasks(str(smoke_tasks))
    proc, sym = specs["procedure"], specs["symptom"]
    assert proc.kind == "hf" and proc.labels[None] == ("O", "B-PROCEDURE", "I-PROCEDURE")
    assert sym.kind == "mtl" and sym.languages == ("es", "it", "ro")
    assert sym.heads_for("it") == ("symptom_it_ner",)
    assert proc.heads_for("cs") == (None,) and proc.tokenizer_key.startswith("sha1:")
    assert proc.max_positions == 512
    assert sym.labels["symptom_ro_ner"] == ("B-SYMPTOM", "I-SYMPTOM", "O")


def test_relative_paths_resolve_next_to_the_task_file(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    specs = load_tasks(str(models / "tasks.yaml"))
    assert Path(specs["symptom"].model).is_file()


@pytest.mark.parametrize("body,message", [
    ("tasks:\n  p:\n    kind: spacy\n    model: stl_procedure\n    languages: [es]\n",
     "task 'p': unknown kind 'spacy'"),
    ("tasks:\n  p:\n    kind: hf\n    languages: [es]\n", "task 'p': `model:` is missing"),
    ("tasks:\n  p:\n    kind: hf\n    model: nowhere/dir\n    languages: [es]\n",
     "task 'p': cannot load the model config of 'nowhere/dir'"),
    ("tasks:\n  s:\n    kind: mtl\n    model: mtl_symptom.pt\n"
     "    encoder: xlm-roberta-base-tiny\n    heads: {es: symptom_en_ner}\n",
     "task 's': checkpoint .* has no head \\['symptom_en_ner'\\]"),
    ("tasks:\n  s:\n    kind: mtl\n    model: mtl_symptom.pt\n    encoder: xlm-roberta-base-tiny\n"
     "    heads: {es: symptom_es_ner}\n    labels: [SYMPTOM, O, X]\n", "task 's': labels .* not BIO"),
    ("tasks:\n  s:\n    kind: mtl\n    model: mtl_symptom.pt\n    encoder: xlm-roberta-base-tiny\n"
     "    heads: {es: symptom_es_ner}\n    labels: [B-S, I-S, B-T, I-T, O]\n",
     "task 's': head 'symptom_es_ner' has 3 outputs"),
    ("tasks:\n  s:\n    kind: mtl\n    model: missing.pt\n    heads: {es: symptom_es_ner}\n",
     "task 's': 'missing.pt' does not exist"),
    ("tasks:\n  s:\n    kind: mtl\n    model: mtl_symptom.pt\n    encoder: xlm-roberta-base-tiny\n"
     "    heads: {es: symptom_es_ner}\n    languages: [es, it]\n", "languages \\['it'\\] have no"),
    ("tasks: []\n", "non-empty mapping"),
    ("tasks:\n  bad/name:\n    kind: hf\n", "file names"),
])
def test_bad_task_files_fail_with_the_task_and_the_fix(models, body, message):
    with pytest.raises(TaskFileError, match=message):
        load_tasks(write(models, body))


def test_non_bio_hf_config_is_refused(models):
    cfg = models / "stl_procedure" / "config.json"
    cfg.write_text(cfg.read_text().replace('"B-PROCEDURE"', '"PROCEDURE"'))
    with pytest.raises(TaskFileError, match="task 'procedure': .*not BIO"):
        load_tasks(str(models / "tasks.yaml"))


def test_unreadable_task_file(tmp_path):
    with pytest.raises(TaskFileError, match="not found"):
        load_tasks(str(tmp_path / "none.yaml"))
    with pytest.raises(TaskFileError, match="unreadable"):
        load_tasks(write(tmp_path, "tasks: [unclosed"))


def test_language_codes():
    assert normalize_lang("CZ") == "cs"
    assert normalize_lang("es-ES") == "es"
