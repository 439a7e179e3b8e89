#!/usr/bin/env bash
# One prepared run of the benchmarks on a GPU machine (H100 / H200), meant to finish in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; logs and JSON go to $OUT (or a temp folder)
#
# It installs this checkout without touching the network (pip install -e . --no-deps --no-build-isolation; the
# package is also put on PYTHONPATH in case that fails), reports which dependencies the machine lacks, then runs, each
# under its own time cap and only while the overall budget (BUDGET_S, default 420 s) lasts, most important first:
#   1. inference on the GPU: authors' path fp32 vs ours fp32 vs ours bf16 + flash attention, batch 64;
#   2. training step on the GPU: S = 1..16, bf16 autocast, samples/s, peak memory, MFU, checkpointing on/off;
#   2b. the roofline on the GPU (bf16, batch 64, against an 8192^3 bf16 product) and on the host CPU (batch 1);
#   3. inference on the host CPU at batch 1 and 16 (AMX bf16 if the host has it), plain and with packed weights;
#   4. the training step on the GPU through torch.compile (S = 16);
#   5. data loading with 16 workers (CPU side of the machine; synthetic videos when the shared data is absent);
#   6. filterbank on the GPU (batched vs per-clip loop);
#   7. augmentations (authors' per-sample path vs ours on the CPU, our batched path on the GPU).
# A step that fails or runs out of time is reported and the next one still runs; summary.txt collects the ratios.
# Optional: WHEELS=/path/to/wheelhouse installs missing dependencies from local wheel files (pip --no-index).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d /tmp/equiav-gpu-check.XXXXXX)}"
BUDGET_S="${BUDGET_S:-420}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

banner() { printf '\n======== %s (%ss elapsed)\n' "$1" "$(( $(date +%s) - START ))" | tee -a "$OUT/steps.txt"; }

banner "machine"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) logical CPUs," \
        "bf16 features: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(amx|avx512_bf16)' | tr '\n' ' ')"
    "$PYTHON" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "torchvision", "timm", "numpy", "PIL", "safetensors", "huggingface_hub", "soundfile", "av", "tqdm", "torchaudio"):
    try:
        module = importlib.import_module(name)
        print(f"{name:16s} {getattr(module, '__version__', 'ok')}")
    except Exception as error:  # noqa: BLE001 - report every failure, whatever its kind
        print(f"{name:16s} MISSING ({type(error).__name__}: {error})")
import torch
print("cuda available", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$OUT/machine.txt"

banner "install (offline)"
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" timm huggingface_hub safetensors soundfile av tqdm 2>&1 | tail -3
fi
if "$PYTHON" -m pip install -q -e . --no-deps --no-build-isolation >"$OUT/pip.log" 2>&1; then
    echo "pip install -e . --no-deps: ok"
else
    echo "pip install -e . failed (see pip.log); using PYTHONPATH=$PWD instead"; tail -3 "$OUT/pip.log"
fi
if ! "$PYTHON" -c "import equiav" 2>"$OUT/import.log"; then
    echo "FATAL: equiav does not import on this machine:"; tail -5 "$OUT/import.log"; exit 1
fi

# step NAME CAP_SECONDS COMMAND...: run under min(CAP, remaining budget), log to $OUT/NAME.log.
step() {
    local name="$1" cap="$2"; shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) ))
    banner "$name"
    if [ "$left" -lt 20 ]; then
        echo "SKIPPED: budget spent" | tee "$OUT/$name.log"; echo "$name: skipped (budget)" >>"$OUT/status.txt"; return
    fi
    [ "$cap" -gt "$left" ] && cap="$left"
    echo "+ $* (cap ${cap}s)"
    timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    case "$status" in
        0) echo "$name: ok" >>"$OUT/status.txt" ;;
        124 | 130 | 137) echo "$name: TIMED OUT after ${cap}s (partial log kept)" | tee -a "$OUT/status.txt" ;;
        *) echo "$name: FAILED (exit status $status)" | tee -a "$OUT/status.txt" ;;
    esac
}

B=benchmarks
step inference_gpu 90 "$PYTHON" $B/bench_inference.py --device cuda --batch-sizes 64 --repeats 5 --warmup 2 --json "$OUT/inference_gpu.json"
step train_step_gpu 100 "$PYTHON" $B/bench_train_step.py --device cuda --batch-size 32 --views 1 4 8 16 --warmup 3 --repeats 10
step roofline_gpu 60 "$PYTHON" $B/bench_roofline.py --device cuda --repeats 5 --json "$OUT/roofline_gpu.json"
step roofline_cpu 90 "$PYTHON" $B/bench_roofline.py --threads 1 --repeats 3 --json "$OUT/roofline_cpu.json"
step inference_cpu 100 "$PYTHON" $B/bench_inference.py --device cpu --batch-sizes 1 16 --repeats 3 --warmup 1 --json "$OUT/inference_cpu.json"
step train_step_gpu_compile 120 "$PYTHON" $B/bench_train_step.py --device cuda --batch-size 32 --views 16 --warmup 3 --repeats 10 --compile --no-memory
step dataloading 60 "$PYTHON" $B/bench_dataloading.py --workers 16 --items 768 --batch-size 16 --repeats 3 --json "$OUT/dataloading.json"
step fbank_gpu 30 "$PYTHON" $B/bench_fbank.py --device cuda --repeats 5
step augment_gpu 45 "$PYTHON" $B/bench_augment.py --device cuda --examples 5 --repeats 3 --warmup 2

banner "summary"
{
    cat "$OUT/status.txt"
    for log in "$OUT"/*.log; do
        case "$log" in */pip.log | */import.log) continue ;; esac
        echo "-- $(basename "$log" .log)"
        grep -E "ratio|predictors|speed-up|slowest|goal|MFU|samples/s|cosine|max \||flash|clips/s|examples/s|checkpointing|  (on|off):|^ +[0-9]+ +[0-9.]+ " "$log" | grep -v "^settings" | head -40
    done
} | tee "$OUT/summary.txt"
echo "logs and JSON in $OUT; total $(( $(date +%s) - START ))s"
