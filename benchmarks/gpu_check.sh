#!/usr/bin/env bash
# The causal-LM recipe on one GPU, offline, in under 8 minutes: bf16, one process per trial
# (search.isolation=subprocess), a small budget, the reference arms. Prints the device, training tokens/s,
# peak GPU memory and the report's headline.
#
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA GPU (set up as the README says)
#   bash benchmarks/gpu_check.sh --quick    # anywhere, CPU included: a few rows and steps, same code paths
#
# RUN_DIR=... keeps the run folder (default: a temporary one, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--quick]" >&2; exit 2 ;;
esac
run_dir="${RUN_DIR:-$(mktemp -d)/gpu_check}"

python - "$quick" <<'EOF'
import sys

import torch

quick = sys.argv[1] == "1"
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
elif quick:
    print(f"device: CPU (--quick), torch {torch.__version__}")
else:
    sys.exit("gpu_check: no CUDA device; run it with --quick to check the script on a CPU")
EOF

overrides=("search.isolation=subprocess" "seeds=2")
if [ "$quick" = 1 ]; then
  # The same recipe and code paths at toy size, one reference arm; precision stays auto (bf16 only where
  # the CPU has it).
  overrides+=(
    "compare.references=[torchtune]"
    "data.max_train_samples=8"
    "data.validation_size=8"
    "data.test_size=4"
    "data.max_length=112"
    "search.budget={trials: 2}"
    "training.num_train_epochs=1"
    "baseline={training.num_train_epochs: 1}"
  )
else
  overrides+=(
    "training.mixed_precision=bf16"
    "search.budget={full_run_equivalents: 4}"
    "compare.references=[axolotl, llama_factory, torchtune]"
  )
fi

started=$(date +%s)
tunelab run recipes/configs/sst2_words_smollm2_lora.yaml "${overrides[@]}" --run-dir "$run_dir"
echo "wall: $(( $(date +%s) - started )) s for tunelab run"

python - "$run_dir" <<'EOF'
import json
import sys
from pathlib import Path

run_dir = Path(sys.argv[1])
results = json.loads((run_dir / "results.json").read_text())
for arm in ("tuned", "untuned", *results.get("references", {})):
    runs = [json.loads((run_dir / arm / f"seed_{r['seed']}" / "run_result.json").read_text())
            for r in results["runs"][arm] if (run_dir / arm / f"seed_{r['seed']}" / "run_result.json").is_file()]
    if not runs:
        if arm == "tuned" and results["search"].get("winner_role") == "untuned":
            print("tuned: the search kept the untuned configuration (its runs are the untuned arm's)")
        continue
    tokens = sum(r["tokens_seen"] for r in runs) / sum(r["train_seconds"] for r in runs)
    peak = max(r["peak_memory_bytes"] for r in runs) / 2**30
    print(f"{arm}: {tokens:.0f} training tokens/s, peak memory {peak:.2f} GiB (GPU allocated, or process RSS on CPU)")
report = (run_dir / "report.md").read_text().split("\n\n")[1]
print(report)
print(f"run folder: {run_dir}")
EOF
