#!/usr/bin/env bash
# Slurm job array: N workers (one GPU each) share one tunelab search through PostgreSQL.
#   export TUNELAB_STORAGE=postgresql://USER:PASSWORD@DB_HOST:5432/tunelab
#   sbatch --array=0-7 recipes/cluster/slurm_workers.sh recipes/configs/gpu/qwen2_5_0_5b_dolly_lora.yaml
# Then, once every array task has exited (they stop when the search's budget is spent):
#   sbatch --dependency=afterok:<JOBID> --gres=gpu:1 --wrap \
#     "tunelab run <RECIPE> search.storage=$TUNELAB_STORAGE"
# A task killed or preempted mid-trial has that trial retried by another worker after the heartbeat grace
# period; resubmitting array tasks at any time simply adds workers.
#SBATCH --job-name=tunelab-worker
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output=logs/tunelab-worker-%A_%a.out
set -euo pipefail
recipe=${1:?usage: sbatch --array=0-N slurm_workers.sh RECIPE [key=value ...]}
shift
: "${TUNELAB_STORAGE:?set TUNELAB_STORAGE=postgresql://USER:PASSWORD@HOST:5432/DB}"
# Each task keeps its own trial folder; only the database is shared.
exec tunelab worker "$recipe" "$@" --storage "$TUNELAB_STORAGE" \
  --run-dir "runs/worker_${SLURM_ARRAY_JOB_ID:-local}_${SLURM_ARRAY_TASK_ID:-0}"
