#!/usr/bin/env bash
# Prune a timm model from the command line: no Python to write.
#
#   examples/prune_timm_cli.sh [OUT_DIR]          (default OUT_DIR: runs/timm-cli)
#
# By default: timm's ResNet-18 with its ImageNet weights (--pretrained: the Hugging Face hub must
# be reachable), a new 10-class head, 30% of the filters of every layer removed, residual stages
# included (--residual coupled), then fine-tuned on CIFAR-10 (downloaded) for 10 epochs and
# evaluated on its test split. Each step is one command as you would type it; the model file
# records the timm spec and the plan, so every later command reads it without Python.
#
# Change it through the environment:
#   MODEL=timm:NAME  RATIO=0.3  NUM_CLASSES=10  INPUT_SHAPE=3,32,32  EPOCHS=10
#   DATA='{name: imagefolder, data_dir: /data/my-images, image_size: 32}'   (the config's data:)
#   PRETRAINED=''    (start from random weights; offline)
#   FILTERPRUNE='python -m filterprune'   (how to call the CLI)
set -euo pipefail

OUT=${1:-runs/timm-cli}
MODEL=${MODEL:-timm:resnet18}
RATIO=${RATIO:-0.3}
NUM_CLASSES=${NUM_CLASSES:-10}
INPUT_SHAPE=${INPUT_SHAPE:-3,32,32}
EPOCHS=${EPOCHS:-10}
DATA=${DATA:-"{name: cifar10, download: true}"}
PRETRAINED=${PRETRAINED-"--pretrained"}
FILTERPRUNE=${FILTERPRUNE:-filterprune}
mkdir -p "$OUT"

# 1. Prune: choose filters by L1 norm and cut them out; writes the model file and its plan.
$FILTERPRUNE prune --model "$MODEL" $PRETRAINED --num-classes "$NUM_CLASSES" \
    --input-shape "$INPUT_SHAPE" --residual coupled --ratio "$RATIO" \
    --out "$OUT/pruned.safetensors" --overwrite

# 2. Per-layer shapes, MACs and parameters of the pruned model.
$FILTERPRUNE summary --checkpoint "$OUT/pruned.safetensors"

# 3. Retrain the pruned model (top-1 on the test split before and after), then evaluate the
#    result. The config names the data and the retraining; its model is the file's.
cat > "$OUT/finetune.yaml" <<EOF
model: {name: "$MODEL"}
data: $DATA
retrain: {epochs: $EPOCHS, batch_size: 128, lr: 0.01, weight_decay: 5.0e-4, schedule: cosine}
EOF
$FILTERPRUNE finetune "$OUT/finetune.yaml" --checkpoint "$OUT/pruned.safetensors" \
    --out "$OUT/finetune" --overwrite
$FILTERPRUNE evaluate "$OUT/finetune.yaml" --checkpoint "$OUT/finetune/finetuned.safetensors"
