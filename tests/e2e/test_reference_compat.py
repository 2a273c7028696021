"""``--reference_compat`` gives the same rows as the reference scripts' algorithm."""

import pandas as pd
import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from bench.reference import head_logits_fn, hf_logits_fn, reference_entities
from pipeline.tasks import load_tasks
from tests.conftest import read_text, run_pipeline
from transforms.inference.models import load_mtl

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compat_out(spaccc_sample, smoke_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("compat")
    run_pipeline("--input", str(spaccc_sample), "--output", str(out), "--tasks",
                 str(smoke_tasks), "--language", "es", "--reference_compat")
    return out


def oracle_rows(spec, logits_fn, id2label, docs):
    tok = AutoTokenizer.from_pretrained(spec.tokenizer)
    rows = []
    for path in sorted(docs.glob("*.txt")):
        for ent in reference_entities(read_text(path), tok, logits_fn, id2label):
            rows.append((path.stem, ent["label"], ent["start"], ent["end"], ent["text"]))
    return sorted(rows)


def pipeline_rows(path):
    df = pd.read_csv(path, sep="\t", keep_default_na=False)
    return sorted(df.itertuples(index=False, name=None))


def test_stl_same_rows_as_the_reference(compat_out, smoke_tasks, spaccc_sample):
    spec = load_tasks(str(smoke_tasks))["procedure"]
    model = AutoModelForTokenClassification.from_pretrained(spec.model).eval()
    expected = oracle_rows(spec, hf_logits_fn(model), dict(enumerate(spec.labels[None])),
                           spaccc_sample)
    assert len(expected) > 100
    assert pipeline_rows(compat_out / "procedure.tsv") == expected


def test_mtl_same_rows_as_the_reference(compat_out, smoke_tasks, spaccc_sample):
    spec = load_tasks(str(smoke_tasks))["symptom"]
    (head,) = spec.heads_for("es")
    model = load_mtl(spec.model, spec.encoder, [head], torch.device("cpu"))
    expected = oracle_rows(spec, head_logits_fn(model.encoder, model.heads[head]),
                           dict(enumerate(spec.labels[head])), spaccc_sample)
    assert len(expected) > 100
    assert pipeline_rows(compat_out / "symptom.tsv") == expected

