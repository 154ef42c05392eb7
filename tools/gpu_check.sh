#!/usr/bin/env bash
# The GPU check of issue 16, prepared to run in under 8 minutes on one lent GPU (never run here:
# no GPU was lent to the task that wrote it). Usage, from the repository root:
#
#     bash tools/gpu_check.sh [OUT_DIR]        # default output/gpu_check
#
# Paper widths (ConvNeXt-B/320 with random weights, 200 queries, 9 decoder layers, 12,544 points,
# 6 deformable encoder layers) on the synthetic shapes data resized to 8 labeled + 8 unlabeled
# crops of 640^2, bf16 autocast:
#   1. tools/benchmark.py --task train, deformable checkpointing on and off (speed, peak memory);
#   2. --task teacher and --task infer;
#   3. --task train --count-syncs (the counter, plus torch.cuda.set_sync_debug_mode warnings);
#   4. SAM vit_b automatic masks with random weights (thresholds 0 keep every mask): images/s.
# Every step has its own time limit and log; OUT_DIR/gpu_check.json collects the results and
# OUT_DIR/gpu_check.md is the table (targets: >= 1 it/s and < 24 GB peak at 8+8; SAM >= 2 img/s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-output/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
CONFIG=configs/shapes/tiny_dearli.yaml
PAPER=(MODEL.OPEN_CLIP.MODEL_NAME convnext_base_w_320 MODEL.SEM_SEG_HEAD.CONVS_DIM 256
       MODEL.SEM_SEG_HEAD.MASK_DIM 256 MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS 6
       MODEL.SEM_SEG_HEAD.DEFORMABLE_N_HEADS 8 MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD 1024
       MODEL.MASK_FORMER.DEC_LAYERS 10 MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 200 MODEL.MASK_FORMER.HIDDEN_DIM 256
       MODEL.MASK_FORMER.NHEADS 8 MODEL.MASK_FORMER.DIM_FEEDFORWARD 2048 MODEL.MASK_FORMER.TRAIN_NUM_POINTS 12544
       MODEL.CLIP_HEAD.EMBED_DIM 640 MODEL.MASK_FORMER.SIZE_DIVISIBILITY 32
       INPUT.MIN_SIZE_TRAIN "(640,)" INPUT.MAX_SIZE_TRAIN 2560 INPUT.CROP.SIZE "[640,640]"
       INPUT.MIN_SIZE_TEST 640 INPUT.MAX_SIZE_TEST 2560 INPUT.SIZE_DIVISIBILITY 32
       SOLVER.IMS_PER_BATCH 8 DATALOADER.NUM_WORKERS 6
       SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION bf16 MODEL.OPEN_CLIP.CHANNELS_LAST True)

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
}

: >"$OUT/steps.txt"
bench() {  # bench NAME LIMIT TASK ITERS WARMUP [extra benchmark args] -- [extra opts]
    local name=$1 limit=$2 task=$3 iters=$4 warmup=$5
    shift 5
    local extra=() opts=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do extra+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    opts=("$@")
    step "$name" "$limit" "$PY" tools/benchmark.py --config-file "$CONFIG" --task "$task" --iters "$iters" \
        --warmup "$warmup" --device cuda --json "$OUT/$name.json" "${extra[@]}" --opts "${PAPER[@]}" "${opts[@]}"
}

bench train_checkpoint_on 100 train 6 3 -- MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT True
bench train_checkpoint_off 90 train 6 3 -- MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT False
bench teacher 60 teacher 6 2 -- MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT True
bench infer 50 infer 10 3 -- MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT True
bench count_syncs 70 train 1 2 --count-syncs -- MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT True
step sam_vit_b 60 "$PY" tools/generate_sam_pseudolabels.py --dataset dearli_shapes_train_unlabeled \
    --model-type vit_b --random-weights --pred-iou-thresh 0 --stability-score-thresh 0 \
    --benchmark --benchmark-images 8 --device cuda --no-progress

"$PY" - "$OUT" <<'EOF'
import json, pathlib, re, sys

out = pathlib.Path(sys.argv[1])
results, rows = {}, []
for name in ("train_checkpoint_on", "train_checkpoint_off", "teacher", "infer", "count_syncs"):
    path = out / f"{name}.json"
    if not path.is_file():
        rows.append(f"| {name} | failed (see {name}.log) | | | |")
        continue
    result = results[name] = json.loads(path.read_text())
    its = 1.0 / result["median_s_per_iter"]
    extra = ""
    if "sync_count" in result:
        counts = result["sync_count"]
        extra = f"{counts['syncs_per_iter']:.0f} syncs, {counts['ops_per_iter']:.0f} ops per iteration"
        if "cuda_sync_warnings_per_iter" in counts:
            extra += f", {counts['cuda_sync_warnings_per_iter']:.0f} CUDA sync warnings"
    rows.append(f"| {name} | {its:.2f} it/s | {result['images_per_s']:.1f} | {result['peak_memory_mb'] / 1024:.1f} GiB "
                f"| {result['device_name']} {extra} |")
sam_lines = [line for line in (out / "sam_vit_b.log").read_text().splitlines() if line.startswith("{")] \
    if (out / "sam_vit_b.log").is_file() else []
if sam_lines:
    results["sam_vit_b"] = json.loads(sam_lines[-1])
    sam = results["sam_vit_b"]
    rows.append(f"| sam_vit_b | | {sam['images_per_second']:.2f} | | {sam.get('masks_per_image', 0):.0f} masks/image |")
else:
    rows.append("| sam_vit_b | failed (see sam_vit_b.log) | | | |")
results["steps"] = (out / "steps.txt").read_text().splitlines()
(out / "gpu_check.json").write_text(json.dumps(results, indent=1))
table = "| step | iterations/s | images/s | peak memory | notes |\n|---|---|---|---|---|\n" + "\n".join(rows)
(out / "gpu_check.md").write_text(table + "\n")
print(table)
EOF
