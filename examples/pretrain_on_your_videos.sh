#!/usr/bin/env bash
# Pretrain EquiAV on a folder of your own videos: videos -> tar shards -> torchrun pretraining -> a loadable model.
#
#   bash examples/pretrain_on_your_videos.sh my_videos/ [more pretraining options ...]
#
# Every size is an environment variable, so the same script runs a real job on a GPU machine and a seconds-long
# smoke test on a laptop, e.g.
#   MODEL=equiav-tiny MAX_STEPS=2 BATCH_SIZE=2 NPROC=1 bash examples/pretrain_on_your_videos.sh my_videos/ --device cpu
# Options after the folder go to `python -m equiav.training.pretrain` (see its --help), e.g. --mae-init FILE to start
# both towers from MAE weights as the paper does, or --precision bf16 on GPUs. Running the script again resumes
# the training from its last checkpoint and reuses the shards.
set -euo pipefail

VIDEOS=${1:?usage: $0 VIDEO_FOLDER [pretraining options ...]}
shift
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/pretrain-videos}          # shards in $OUT/shards, the run (checkpoints, logs, final/) in $OUT/run
MODEL=${MODEL:-equiav-base}               # preset: equiav-base (the paper, GPUs), equiav-tiny (CPU experiments)
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l | awk '{print ($1 > 0) ? $1 : 1}')}  # processes: one per GPU
BATCH_SIZE=${BATCH_SIZE:-32}              # clips per process and step
MAX_STEPS=${MAX_STEPS:-}                  # empty: train for the default number of epochs
FRAMES=${FRAMES:-10}                      # frames stored per clip; training picks one at random
SHARD_SIZE=${SHARD_SIZE:-1000}            # clips per tar shard
PREPARE_WORKERS=${PREPARE_WORKERS:-4}     # processes decoding videos into shards
NUM_WORKERS=${NUM_WORKERS:-4}             # data-loader workers per training process

# 1. Decode each video once into tar shards: the filterbank of its soundtrack and $FRAMES frames, with the audio
#    settings of $MODEL. Skipped when the shards are complete (their index shards.json exists).
if [[ ! -f "$OUT/shards/shards.json" ]]; then
    "$PYTHON" -m equiav.training.prepare shards --source videos --input "$VIDEOS" --output "$OUT/shards" \
        --model "$MODEL" --frames "$FRAMES" --shard-size "$SHARD_SIZE" --workers "$PREPARE_WORKERS"
fi

# 2. Pretrain on every local GPU (or CPU processes); --resume auto (the default) continues an interrupted run.
steps=()
if [[ -n "$MAX_STEPS" ]]; then
    steps=(--max-steps "$MAX_STEPS")
fi
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m equiav.training.pretrain \
    --model "$MODEL" --data.kind shards --data.path "$OUT/shards" --data.frame-count "$FRAMES" \
    --batch-size "$BATCH_SIZE" --num-workers "$NUM_WORKERS" --output-dir "$OUT/run" "${steps[@]}" "$@"

# 3. The final model loads like any other; embed the first video of the folder with it.
FINAL="$OUT/run/final" VIDEOS="$VIDEOS" "$PYTHON" - <<'PY'
import os
from pathlib import Path

import equiav
from equiav.corpus import VIDEO_SUFFIXES

model = equiav.EquiAVModel.from_pretrained(os.environ["FINAL"])
first = next(p for p in sorted(Path(os.environ["VIDEOS"]).rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES)
video = model.embed_video(str(first))
print(f"loaded {os.environ['FINAL']}: {first.name} -> audio {tuple(video.audio.shape)}, image {tuple(video.image.shape)}")
PY
