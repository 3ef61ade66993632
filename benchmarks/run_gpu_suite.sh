#!/usr/bin/env bash
# Every GPU figure (issues 5 and 11) in one go (run on the GPU machine from the repository root):
#   bash benchmarks/run_gpu_suite.sh [OUT_DIR]
# bf16, batch 32 (and 128): d0/d1/d2 vs the Mask R-CNN baseline vs the backbone+BiFPN floor, at a
# fixed 100 detections per image and in the realistic score-threshold mode, then the
# channels_last / torch.compile / CUDA-graph switches one at a time and together. Every invocation
# times the baseline in the same run (interleaved). Results: OUT_DIR/*.json plus gpu_suite.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG"
B="python benchmarks/bench_inference.py --devices cuda --threads 8 --warmup 3 --repeats 10"
run() {  # run NAME ARGS...: one table, one JSON; a failure does not stop the suite
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$LOG"
  timeout 900 $B "$@" --output "$OUT/$name.json" 2>&1 | grep -v -i warning | tee -a "$LOG"
}
# 1. the headline: bf16, bs 32, fixed 100 detections, all models, floor included
run bf16_bs32_fixed100 --models d0 d0_fast d1 d2 lite0 lite1 lite2 baseline --batch-sizes 32 \
  --precisions bf16 --floor
# 2. fp32 and fp16 beside bf16 in one interleaved round (every EffDetMask precision), and the
#    larger batch
run precisions_bs32_fixed100 --models d0 d0_fast lite0 baseline --batch-sizes 32 \
  --precisions fp32 bf16 fp16 --baseline-precisions fp32 bf16 --floor
run bf16_bs128_fixed100 --models d0 baseline --batch-sizes 128 --precisions bf16 --floor
# 3. realistic mode (score threshold 0.05; with random weights few boxes pass: a lower bound)
run bf16_bs32_realistic --models d0 baseline --batch-sizes 32 --precisions bf16 --detections 0
# 4. switches, one at a time and together (EffDetMask; the baseline as shipped)
CL="MODEL.CHANNELS_LAST True"; CO="MODEL.COMPILE True"; CG="MODEL.CUDA_GRAPHS True"
run bf16_bs32_channels_last --batch-sizes 32 --precisions bf16 --floor --opts $CL
run bf16_bs32_compile --batch-sizes 32 --precisions bf16 --floor --opts $CO
run bf16_bs32_cuda_graphs --batch-sizes 32 --precisions bf16 --floor --opts $CG
run bf16_bs32_all_switches --batch-sizes 32 --precisions bf16 --floor --opts $CL $CO $CG
run bf16_bs128_all_switches --batch-sizes 128 --precisions bf16 --floor --opts $CL $CO $CG
# 5. the same switches for the baseline too (channels_last is its only applicable one)
run bf16_bs32_both_channels_last --batch-sizes 32 --precisions bf16 --opts $CL \
  --baseline-opts $CL
# 6. the CPU precisions on this machine's CPU: PyTorch fp32 / bf16 autocast, onnxruntime fp32 /
#    static int8, all in one round with the fp32 baseline (batch 1, 512², 100 detections)
echo "=== cpu_precisions_bs1" | tee -a "$LOG"
timeout 1200 python benchmarks/bench_inference.py --devices cpu --threads 8 --repeats 7 \
  --models d0 d0_fast lite0 baseline --precisions fp32 bf16 onnx-fp32 onnx-int8 --floor \
  --output "$OUT/cpu_precisions_bs1.json" 2>&1 | grep -v -i warning | tee -a "$LOG"
# 7. stage profile on the GPU is not scripted: torch.profiler over one bf16 bs32 forward
python - <<'PY' 2>&1 | tee -a "$LOG"
import torch, sys
sys.path.insert(0, "benchmarks")
from bench_inference import make_batch
from effdetmask.config import setup_cfg
from effdetmask.modeling import build_model
cfg = setup_cfg("configs/effdet_d0.yaml", ["MODEL.DEVICE", "cuda", "TEST.SCORE_THRESH", "0.0",
                                            "TEST.AMP_DTYPE", "bf16"])
model = build_model(cfg).eval()
batch = [{**x, "image": x["image"].cuda()} for x in make_batch(32, 512, 512)]
with torch.inference_mode():
    for _ in range(3):
        model(batch)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(batch)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
PY
echo "done: $OUT" | tee -a "$LOG"
