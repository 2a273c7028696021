#!/usr/bin/env bash
# Launch one night's annotation job on Dataflow.
#
#   launch/nightly.sh 2026-11-21            # that day's export
#   launch/nightly.sh                       # yesterday (UTC)
#   launch/nightly.sh 2026-11-21 --force    # redo the day (further options go to pipeline.run)
#
# Launching a day again resumes it: input files already done (marked under the output's
# _shards/) are skipped, the others are annotated.
#
# Settings come from the environment (defaults in brackets):
#   PROJECT, REGION [europe-west4], BUCKET (gs://... root holding exports, outputs, config),
#   IMAGE (the container built from launch/Dockerfile), TASKS [$BUCKET/config/tasks.yaml],
#   GPU [nvidia-l4] (empty for CPU workers), MAX_WORKERS [8].
# Input:  $BUCKET/exports/DATE/   Output: $BUCKET/annotations/DATE/
set -euo pipefail
if [[ ${1:-} == --* || -z ${1:-} ]]; then
  DATE=$(date -u -d yesterday +%F)   # no date given: options only (e.g. --force)
else
  DATE=$1
  shift
fi
[[ $DATE =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || { echo "usage: $0 [YYYY-MM-DD]" >&2; exit 2; }
: "${PROJECT:?set PROJECT}" "${BUCKET:?set BUCKET}" "${IMAGE:?set IMAGE}"
REGION=${REGION:-europe-west4}
TASKS=${TASKS:-$BUCKET/config/tasks.yaml}
GPU=${GPU-nvidia-l4}
MAX_WORKERS=${MAX_WORKERS:-8}

args=(
  --runner DataflowRunner --project "$PROJECT" --region "$REGION"
  --job_name "clinical-ner-${DATE//-/}"
  --temp_location "$BUCKET/tmp" --staging_location "$BUCKET/staging"
  --sdk_container_image "$IMAGE" --experiments use_runner_v2
  --input "$BUCKET/exports/$DATE/" --output "$BUCKET/annotations/$DATE/" --tasks "$TASKS"
  --max_num_workers "$MAX_WORKERS" --autoscaling_algorithm THROUGHPUT_BASED
)
if [[ -n $GPU ]]; then
  # One GPU per worker, one model copy per GPU shared by the worker's processes, few threads.
  args+=(--machine_type g2-standard-8
         --dataflow_service_options "worker_accelerator=type:$GPU;count:1;install-nvidia-driver"
         --number_of_worker_harness_threads 4 --large_model --batch_tokens 32768
         --disk_size_gb 100)   # a CUDA torch image and the models do not fit the default
else
  args+=(--machine_type n2-highcpu-16 --precision auto)
fi
exec python -m pipeline.run "${args[@]}" "$@"
