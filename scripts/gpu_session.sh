#!/usr/bin/env bash
# The measurements that need a GPU, in one call (issues 3 and 4): run from the repository root on a CUDA machine.
#
#   scripts/gpu_session.sh [OUT_DIR [STEP...]]   # OUT_DIR default: $OUT if set, else ./gpu_out
#                                                # STEP: tests, similarity, pretrain (default: all three)
#
# The three steps together take about 10 minutes on one H100-class GPU; where one call is limited to 10 minutes,
# run them as two calls (e.g. "tests similarity", then "pretrain").
#
# Writes into OUT_DIR: nvidia_smi.txt, cuda_tests.log (the SSIM/MI/DeepNet tests, which add their CUDA cases when a
# GPU is present), similarity_cuda.json/.log (all-pairs SSIM/MI and ResNet50 per slice on the GPU, with the PET-CT
# estimate on this GPU next to the paper's 421/312/6 h) and pretrain_cuda.json/.log (SwAV, MoCo v2, SparK at the
# paper's settings with AMP: slices/s, data wait, ignite/MONAI overhead vs a bare loop). Each step goes on when an
# earlier one fails; the exit status is the number of failed steps.
#
# Dependencies: the package's own (setup.cfg). On a machine without the package registry, carry them as wheels in
# .whl/ (see docs/benchmarks.md, "Measuring on a GPU"); they are installed from there when .whl/ exists. numba is not
# needed: the GPU paths are torch.
set -uo pipefail
out="${1:-${OUT:-gpu_out}}"
shift $(( $# > 0 ? 1 : 0 ))
steps=" ${*:-tests similarity pretrain} "
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
failed=0
step() {  # step NAME LOGFILE COMMAND...: run, keep the log, count failures
    local name=$1 log=$2
    shift 2
    echo "== $name: $*" | tee "$log"
    "$@" 2>&1 | tee -a "$log" || { echo "== $name FAILED" | tee -a "$log"; failed=$((failed + 1)); }
}
nvidia-smi > "$out/nvidia_smi.txt" 2>&1 || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.__version__, torch.cuda.get_device_name())" \
    || { echo "no CUDA device: nothing to measure here" >&2; exit 1; }
[[ $steps == *" tests "* ]] && step "CUDA tests" "$out/cuda_tests.log" \
    python3 -m pytest -q -p no:cacheprovider tests/reduction/test_ssim.py tests/reduction/test_mi.py tests/reduction/test_deepnet.py
[[ $steps == *" similarity "* ]] && step "similarity on the GPU" "$out/similarity_cuda.log" \
    python3 scripts/bench_similarity_core.py --device cuda --n 64 --json "$out/similarity_cuda.json"
[[ $steps == *" pretrain "* ]] && step "pre-training at the paper's settings" "$out/pretrain_cuda.log" \
    python3 scripts/bench_pretrain.py --paper-settings --device cuda --num-workers 8 --steps 10 --warmup 3 --repeats 2 \
    --output "$out/pretrain_cuda.json"
echo "failed steps: $failed"
exit "$failed"
