import dataclasses
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
    ("tasks:\n  p:\n    kind: hf\n    model: stl_procedure\n    languages: [es]\n"
     "    qualifies: {NSCO: negated}\n",
     "task 'p': `qualifies:` names \\['NSCO'\\], which the model does not predict "
     "\\(its labels: \\['O', 'B-PROCEDURE', 'I-PROCEDURE'\\]\\)"),
    ("tasks:\n  s:\n    kind: mtl\n    model: mtl_symptom.pt\n    encoder: xlm-roberta-base-tiny\n"
     "    heads: {es: symptom_es_ner}\n    qualifies: {NSCO: negated}\n",
     "task 's': `qualifies:` names \\['NSCO'\\], which the model head 'symptom_es_ner'"),
    ("tasks:\n  p:\n    kind: hf\n    model: stl_procedure\n    languages: [es]\n"
     "    qualifies: {PROCEDURE: denied}\n", "a scope label sets one of \\['negated', "),
    ("tasks:\n  p:\n    kind: hf\n    model: stl_procedure\n    languages: [es]\n"
     "    qualifies: [NSCO]\n", "`qualifies:` must map scope labels to flags"),
    ("tasks:\n  p:\n    kind: hf\n    model: stl_procedure\n    languages: [es]\n"
     "    demonstration: yes please\n", "task 'p': `demonstration:` must be true or false"),
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


def test_yaml_aliases_and_unknown_top_level_keys_are_refused_before_anything_runs(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))  # 10^9 strings once expanded
    body = bomb + "tasks:\n  t:\n    kind: hf\n    model: m\n    languages: *i\n"
    with pytest.raises(TaskFileError, match=r"YAML aliases \(\*name\) are not allowed"):
        load_tasks(write(tmp_path, body))
    typo = "task:\n  x: 1\ntasks:\n  t:\n    kind: hf\n    model: m\n    languages: [es]\n"
    with pytest.raises(TaskFileError, match=r"unknown top-level key\(s\) \['task'\]"):
        load_tasks(write(tmp_path, typo))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def pickled_copy(models, dest):
    """The test model folder with its weights as a pickle that carries code."""
    import torch

    shutil.copytree(models / "stl_procedure", dest)
    for f in dest.glob("*.safetensors"):
        f.unlink()
    torch.save({"classifier.weight": torch.zeros(3, 32), "payload": Evil()},
               dest / "pytorch_model.bin")
    return dest


def test_an_hf_folder_whose_weights_carry_code_is_refused_at_set_up(models, tmp_path):
    folder = pickled_copy(models, tmp_path / "pickled")
    body = f"tasks:\n  p:\n    kind: hf\n    model: {folder}\n    languages: [es]\n"
    with pytest.raises(TaskFileError, match="task 'p': .*pytorch_model.bin.*pickled Python"):
        load_tasks(write(tmp_path, body))


def test_language_codes():
    assert normalize_lang("CZ") == "cs"
    assert normalize_lang("es-ES") == "es"


CATALOGUE = {  # file -> {model: languages}, as the DT4H model cards list them
    "dt4h-stl.yaml": {f"BSC-NLP4BIA/DT4H_XLM-R_stl_multilingual_{e}": "es it ro en nl sv cs"
                      for e in ("disease", "symptom", "procedure")},
    "dt4h-mtl-es-it-ro.yaml": {f"BSC-NLP4BIA/DT4H_XLM-R_mtl_es-it-ro_{e}": "es it ro"
                               for e in ("disease", "symptom", "procedure")},
    "dt4h-mtl-en-nl-sv.yaml": {f"BSC-NLP4BIA/DT4H_XLM-R_mtl_en-nl-sv_{e}": "en nl sv"
                               for e in ("disease", "symptom", "procedure")},
    "dt4h-multilabel.yaml": {"BSC-NLP4BIA/DT4H_XLM-R_mtl_multilingual_multilabel":
                             "es it ro en nl sv cs"},
}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_the_catalogue_task_files_validate_without_the_hub(name, monkeypatch):
    import pipeline.tasks as tasks

    def no_model(location):
        raise AssertionError(f"opened {location}")

    monkeypatch.setattr(tasks, "check_location", no_model)
    specs = load_tasks(str(Path(__file__).parents[2] / "tasks" / name), open_models=False)
    assert {s.model: " ".join(s.languages) for s in specs.values()} == CATALOGUE[name]
    for spec in specs.values():
        entity = spec.model.rsplit("_", 1)[-1]
        for lang in spec.languages:
            if spec.kind == "hf":
                assert spec.heads_for(lang) == (None,)
            elif entity == "multilabel":      # one pass, one head per entity type
                assert spec.heads_for(lang) == ("disease", "symptom", "procedure")
            else:                             # one head per language
                assert spec.heads_for(lang) == (f"{entity}_{lang}_ner",)
        for head in spec.all_heads:
            if head is not None:
                ent = (head if entity == "multilabel" else entity).upper()
                assert spec.labels[head] == (f"B-{ent}", f"I-{ent}", "O")


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, smoke_tasks):
    """An offline hub cache holding one model at two commits: ``main`` and tag ``v2``."""
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "models--BSC-NLP4BIA--tiny-stl"
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for ref, sha in commits.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
        shutil.copytree(smoke_tasks.parent / "stl_procedure", repo / "snapshots" / sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return commits


def test_hub_models_are_pinned_to_a_commit_that_the_fingerprint_records(
        hub_cache, tmp_path, caplog):
    from types import SimpleNamespace

    from pipeline.summary import OPT_IN_OPTIONS, OUTPUT_OPTIONS, job_config
    from pipeline.tasks import pin_revisions
    from transforms.io.shards import config_fingerprint

    def run_config(revision: str) -> tuple[dict, str]:
        body = ("tasks:\n  procedure:\n    kind: hf\n    model: BSC-NLP4BIA/tiny-stl\n"
                f"    languages: [es]\n{revision}")
        specs = pin_revisions(load_tasks(write(tmp_path, body)))
        opts = SimpleNamespace(tasks="t.yaml", detect_language=False,
                               **{k: None for k in OUTPUT_OPTIONS + OPT_IN_OPTIONS})
        config = job_config(opts, specs)
        return config["tasks"]["procedure"]["model"], config_fingerprint(config)

    with caplog.at_level("WARNING", logger="pipeline"):
        unpinned, fp_main = run_config("")
    assert unpinned["revision"] == hub_cache["main"]
    assert [r.message for r in caplog.records] == [
        f"task procedure: BSC-NLP4BIA/tiny-stl is not pinned (no `revision:`): this run uses "
        f"its commit {hub_cache['main']}; add `revision: {hub_cache['main']}` to the task file "
        "to keep later runs on it"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline"):
        tagged, fp_v2 = run_config("    revision: v2\n")
        same, fp_main_pinned = run_config(f"    revision: '{hub_cache['main']}'\n")
    assert caplog.records == []
    assert tagged["revision"] == hub_cache["v2"] and fp_v2 != fp_main   # another revision
    assert fp_main_pinned == fp_main                                      # redoes the shards


def test_an_unknown_revision_is_a_set_up_error(hub_cache, tmp_path):
    from pipeline.tasks import pin_revisions

    body = ("tasks:\n  procedure:\n    kind: hf\n    model: BSC-NLP4BIA/tiny-stl\n"
            "    languages: [es]\n    revision: v9\n")
    spec = load_tasks(write(tmp_path, body), open_models=False)
    with pytest.raises(TaskFileError, match="cannot resolve revision 'v9' of 'BSC-NLP4BIA/"):
        pin_revisions(spec)


def test_the_task_file_check_command(capsys, tmp_path):
    from pipeline.tasks import main

    main([str(Path(__file__).parents[2] / "tasks" / "dt4h-multilabel.yaml")])
    assert capsys.readouterr().out.endswith(
        "dt4h: mtl BSC-NLP4BIA/DT4H_XLM-R_mtl_multilingual_multilabel; languages es it ro en nl "
        "sv cs; heads disease, symptom, procedure\n")
    bad = write(tmp_path, "tasks:\n  x:\n    kind: mtl\n    model: a/b\n    heads: {es: [1]}\n")
    with pytest.raises(SystemExit, match="pipeline.tasks: task 'x': `heads: es:` must name"):
        main([bad])


def test_a_checkpoint_named_inside_a_hub_repo_is_pinned_to_the_repo_commit(hub_cache):
    from pipeline.tasks import hub_commit

    assert hub_commit("hf://BSC-NLP4BIA/tiny-stl/model.pt", None) == hub_cache["main"]
    assert hub_commit("BSC-NLP4BIA/tiny-stl", "v2") == hub_cache["v2"]


LINKER = "linkers:\n  codes:\n    labels: [SYMPTOM]\n    terminology: terms.tsv\n"


@pytest.mark.parametrize("linkers, message", [
    ("linkers:\n  codes:\n    labels: [SYMPTOM]\n", "`terminology:` is missing"),
    ("linkers:\n  codes:\n    labels: SYMPTOM\n    terminology: terms.tsv\n", "must list"),
    ("linkers:\n  codes:\n    labels: [DISEASE]\n    terminology: terms.tsv\n",
     r"no task's model has label\(s\) \['DISEASE'\]"),
    (LINKER + "    vocabulary: SNOMED\n", r"unknown key\(s\) \['vocabulary'\]"),
    (LINKER + "    top: 0\n", "`top:` must be"),
    (LINKER + "  again:\n    labels: [SYMPTOM]\n    terminology: terms.tsv\n",
     "label SYMPTOM is coded by linker 'codes' already"),
    ("linkers:\n  codes:\n    labels: [SYMPTOM]\n    terminology: nowhere.tsv\n",
     "linker 'codes': terminology .*nowhere.tsv' is unreadable"),
    (LINKER + "    model: missing-encoder/\n", "missing-encoder"),
    (LINKER + "    model: xlm-roberta-base-tiny\n", "bi-encoder .*has no weights"),
    (LINKER + "    ngrams: 'false'\n", "`ngrams:` must be true or false"),
    (LINKER + "    model: stl_procedure\n    min_score: 0.5\n", "their ranks are fused, which no "
     "threshold applies to: set `ngrams: false`"),
    (LINKER + "    ngrams: false\n", "`ngrams: false` needs a `model:`"),
    (LINKER + "    filters: {vocabulary_id: [SNOMED]}\n", "`filters:` are for an OMOP"),
    (LINKER + "    filters: {standard_concept: }\n", "`filters:` must map"),
    ("linkers:\n  codes:\n    labels: [SYMPTOM, SYMPTOM]\n    terminology: terms.tsv\n",
     "names a label twice"),
])
def test_bad_linkers_fail_before_anything_runs(models, linkers, message):
    from pipeline.tasks import load_linkers

    (models / "terms.tsv").write_text("C1\tfiebre\n")
    path = str(models / "tasks.yaml")
    with open(path, "a") as f:
        f.write(linkers)
    with pytest.raises(TaskFileError, match=message):
        load_linkers(path, load_tasks(path))


def test_a_linker_is_listed_and_its_paths_resolve_next_to_the_task_file(models, capsys):
    from pipeline.tasks import load_linkers, main

    (models / "terms.tsv").write_text("C1\tfiebre\n")
    with open(models / "tasks.yaml", "a") as f:
        f.write(LINKER + "    model: {es: stl_procedure, default: stl_procedure}\n    top: 3\n")
    path = str(models / "tasks.yaml")
    (linker,) = load_linkers(path, load_tasks(path)).values()
    assert linker.terminology == str(models / "terms.tsv") and linker.top == 3
    assert linker.model("es") == linker.model("it") == str(models / "stl_procedure")
    assert linker.thresholds() == {"fused": None}  # a model beside the n-grams everywhere
    assert dataclasses.replace(linker, models={"es": "m"}).thresholds() == {
        "ngram": 0.9, "fused": None}  # the other languages: n-grams alone
    assert dataclasses.replace(linker, ngrams=False, min_score=0.7).thresholds() == {
        "dense": 0.7}
    main([path])
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{path}: linker codes: codes SYMPTOM with {models / 'terms.tsv'}; "
        f"es={models / 'stl_procedure'}, *={models / 'stl_procedure'}")


def test_a_task_files_local_models_are_hashed_ahead_of_the_job(tmp_path, monkeypatch):
    from pipeline.summary import model_version
    from pipeline.tasks import digest_models_ahead
    from transforms.io import storage

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "models" / "procedure"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights" * 1000)
    (model / "config.json").write_text("{}")
    tasks = tmp_path / "tasks.yaml"  # the model named relative to the task file's folder
    tasks.write_text("tasks:\n  procedure:\n    kind: hf\n    model: models/procedure\n"
                     "    languages: [es]\n")
    digest_models_ahead(str(tasks)).join()
    reads, real = [], Path.open
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: (
        reads.append(self.name) if mode == "rb" else None) or real(self, mode, *a, **k))
    version = model_version(str(model))  # as the job asks for it: nothing read again
    assert reads == [] and version["bytes"] == 7000 + 2
    storage.file_digest(tasks)
    assert reads == ["tasks.yaml"]  # (a file not hashed ahead is read)
    digest_models_ahead(str(tmp_path / "missing.yaml")).join()  # load_tasks says what is wrong


@pytest.mark.parametrize("second", ["symptom_codes", "Symptom"])
def test_two_tasks_whose_files_share_a_name_are_refused_in_one_line(tmp_path, second):
    from pipeline.tasks import main

    task = "    kind: hf\n    model: m\n    languages: [es]\n"
    path = write(tmp_path, f"tasks:\n  symptom:\n{task}  {second}:\n{task}")
    with pytest.raises(SystemExit) as stop:
        main([path])
    said = str(stop.value)
    assert "\n" not in said and f"tasks 'symptom' and '{second}' would both write " in said
    assert "rename one" in said


def test_a_bi_encoder_whose_weights_carry_code_is_refused_at_set_up(models, tmp_path):
    from pipeline.tasks import load_linkers

    folder = pickled_copy(models, tmp_path / "pickled-encoder")
    (models / "terms.tsv").write_text("C1\tfiebre\n")
    path = str(models / "tasks.yaml")
    with open(path, "a") as f:
        f.write(LINKER + f"    model: {folder}\n")
    with pytest.raises(TaskFileError, match="linker 'codes': .*pytorch_model.bin.*pickled"):
        load_linkers(path, load_tasks(path))


@pytest.mark.parametrize("body, said", [
    ("    kind: hf\n    modle: m\n    languages: [es]\n",
     "task 'symptom': unknown key(s) 'modle' (did you mean 'model'?); a task of kind hf has"),
    ("    kind: mtl\n    model: m.pt\n    heads: {es: symptom_es_ner}\n    encoders: e\n",
     "unknown key(s) 'encoders' (did you mean 'encoder'?)"),
    ("    kind: hf\n    model: ./models/nothere\n    languages: [es]\n",
     "'./models/nothere' does not exist (a relative path is looked for in the task file's "
     "folder '{folder}', then in the working directory"),
])
def test_a_task_file_mistake_is_named_by_the_job_in_one_line_before_it_loads(tmp_path, body,
                                                                           said):
    import subprocess
    import sys

    from tests.conftest import REPO

    path = write(tmp_path, f"tasks:\n  symptom:\n{body}")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.run", "--input",
                          str(tmp_path), "--output", str(tmp_path / "out"), "--tasks", path],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("pipeline.run: ")
    assert said.format(folder=tmp_path) in last
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"apache_beam", "torch", "transformers"}  # said before they load
