#!/usr/bin/env bash
# The recorded fine-tuning run of Chapter 9, end to end: make the date task's splits, evaluate the base
# model (SmolLM2-135M-Instruct, 4-bit) on the test split, fine-tune LoRA adapters, evaluate again, and write
# book/results/finetune_<date>.json (date, machine, MLX version, command, split sizes, steps, trainable
# parameters, times, base and fine-tuned exact match, the general question's answer).
#
#   scripts/finetune_run.sh            # the recorded size: sized for ~1-2 minutes on one H200 (MLX CUDA)
#   QUICK=1 scripts/finetune_run.sh    # a tiny end-to-end check on a CPU; writes to a temporary folder
#
# PYTHON (default python3) is the interpreter with mlxllm installed; STEPS, BATCH, TRAIN, TEST override sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export TQDM_DISABLE=${TQDM_DISABLE:-1}

if [ "${QUICK:-0}" = 1 ]; then
    steps=${STEPS:-2} batch=${BATCH:-2} train=${TRAIN:-16} valid=4 test=${TEST:-3} max_new=12 eval_batches=1
    question_tokens=8
    work=$(mktemp -d) results=$work/finetune_quick.json
else
    steps=${STEPS:-300} batch=${BATCH:-16} train=${TRAIN:-2000} valid=100 test=${TEST:-150} max_new=16
    eval_batches=4 question_tokens=48
    work=${WORK:-$(mktemp -d)} results=book/results/finetune_$(date +%F).json
fi

$python -m mlxllm.tasks dates --out "$work/data" --train "$train" --valid "$valid" --test "$test" --seed 0
$python -m mlxllm.cli finetune smollm2-135m-instruct \
    --data "$work/data/train.jsonl" --valid "$work/data/valid.jsonl" --eval "$work/data/test.jsonl" \
    --out "$work/adapters" --results "$results" \
    --lora-rank 8 --lora-alpha 16 --lora-targets all \
    --steps "$steps" --batch-size "$batch" --lr 1e-3 --min-lr 1e-4 --warmup 20 \
    --eval-interval "$steps" --eval-batches "$eval_batches" --seed 0 \
    --max-new-tokens "$max_new" --question-tokens "$question_tokens" --quiet
$python - "$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"base {r['base_accuracy']:.1%} -> fine-tuned {r['finetuned_accuracy']:.1%} on {r['split_sizes']['test']} "
      f"test dates; {r['steps']} steps, {r['trainable_parameters']:,} trainable parameters, "
      f"{r['train_seconds']} s training, {r['wall_seconds']} s in all; {r['machine']}")
EOF
