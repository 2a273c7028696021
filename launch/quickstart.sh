#!/usr/bin/env bash
# The quick start in one command, from anywhere, with the project's ../shared folder beside the
# repository (the tokenizer, the corpora, the demonstration model; a symbolic link will do):
#
#   bash launch/quickstart.sh          # .venv, install, the 100 held-out SPACCC cases, annotate,
#                                      # out/report.html with its evaluation
#   bash launch/quickstart.sh test     # the same .venv, the test extras, the fast tests
#
# Settings from the environment: PYTHON [python3] (3.10 to 3.14) makes .venv; TORCH_INDEX_URL,
# an index to take torch from (stock PyPI's Linux wheel is the CUDA build: on a CPU machine
# there, https://download.pytorch.org/whl/cpu is the small one). Each step is skipped when
# already done: running it again only annotates what is new.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared  # where tasks/probe-es.yaml and the tests look for it
VENV=.venv

say() { printf '\n== %s\n' "$*"; }

[ -d "$SHARED/models/probe-es" ] || {
    echo "quickstart: no $SHARED/models/probe-es beside the repository ($(pwd)): put the" \
         "project's shared folder there (or a symbolic link to it)" >&2; exit 1; }
if [ ! -x "$VENV/bin/pip" ]; then
    say "creating $VENV with ${PYTHON:-python3}"
    "${PYTHON:-python3}" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 14), \
        f"Python 3.10 to 3.14 is needed (apache-beam 2.77), this is {sys.version.split()[0]}"'
    rm -rf "$VENV"  # a half-made one (a venv module without pip) is made again
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# -I: the installed project, not ./pipeline of the working directory
if ! "$VENV/bin/python" -I -c 'import importlib.metadata as m, torch, apache_beam
m.version("clinical-ner-pipeline")' 2>/dev/null; then
    say "installing torch 2.13.0 and this project into $VENV (minutes, once)"
    "$VENV/bin/pip" install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    "$VENV/bin/pip" install -q -e .
fi

if [ "${1:-}" = "test" ]; then
    say "installing the test extras"
    "$VENV/bin/pip" install -q -e '.[test]'
    say "the fast tests (python -m pytest -q; --e2e adds the end-to-end ones)"
    exec "$VENV/bin/python" -m pytest -q
fi

say "copying the 100 SPACCC cases the probe model never saw into data/heldout"
mkdir -p data/heldout
while IFS= read -r id; do  # kept once copied (-p: their times, so a rerun finds them done)
    [ -z "$id" ] || [ -e "data/heldout/$id.txt" ] \
        || cp -p "$SHARED/corpora/spaccc-es/txt/$id.txt" data/heldout/
done < "$SHARED/models/probe-es/heldout.txt"

say "annotating them with the probe (a demonstration model) into out/"
"$VENV/bin/python" -m pipeline.run --input data/heldout --output out \
    --tasks tasks/probe-es.yaml --language es

say "the report, with the evaluation against the gold"
"$VENV/bin/python" -m pipeline.report out \
    --gold "$SHARED/corpora/spaccc-es/gold_symptom.tsv" \
    --gold "$SHARED/corpora/spaccc-es/gold_procedure.tsv"
echo "open it in a browser; next: README.md, 'Run it on your notes'"
