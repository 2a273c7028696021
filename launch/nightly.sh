#!/usr/bin/env bash
# Launch the nightly annotation jobs from the Flex Template, catching up missed nights:
#
#   launch/nightly.sh                        # yesterday and the 6 days before, those not done
#   launch/nightly.sh 2026-11-21 --force     # redo one day
#   launch/nightly.sh --dry_run              # print the launch requests, send nothing
#
# It submits and exits: a date whose export is missing, whose run is done, or whose job still
# runs is not launched; see `launch/nightly.sh --help` and launch/scheduler.md.
# Settings come from the environment (or the options of the same names): PROJECT, REGION
# [europe-west4], BUCKET (gs://... root: exports/DATE/, annotations/DATE/, templates/, config/),
# IMAGE (the container of launch/Dockerfile), TEMPLATE [$BUCKET/templates/clinical-ner.json],
# TASKS [$BUCKET/config/tasks.yaml], GPU [nvidia-l4] ('' for CPU workers), MAX_WORKERS [8],
# SERVICE_ACCOUNT (the workers' service account).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m pipeline.nightly "$@"
