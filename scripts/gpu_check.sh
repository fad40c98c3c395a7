#!/usr/bin/env bash
# The one short check to run on a GPU machine (no network needed: every model is built from a config).
#
#   scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: ${OUT:-gpu-check}
#
# Writes OUT_DIR/{nvidia-smi.txt, doctor.json, doctor.txt, tests.txt, memory-estimates.txt} and prints
# the doctor's tables. Needs a Python with the CUDA torch and this package's dependencies (PYTHON,
# default .venv/bin/python, else python3); vLLM and DeepSpeed are used when installed. Not yet
# timed on a GPU (no GPU was lent so far); on a 2-core CPU machine it took 65 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-check}}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

(nvidia-smi || echo "nvidia-smi not found") > "$OUT_DIR/nvidia-smi.txt" 2>&1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
    | tee "$OUT_DIR/torch.txt"

# 1. the doctor: versions, GPUs, bf16 scoring vs fp32, vLLM sampling, two DPO steps on every GPU, memory between
timeout 600 "$PYTHON" -m harness.cli doctor --json > "$OUT_DIR/doctor.json" 2> "$OUT_DIR/doctor.stderr.txt"
doctor_rc=$?
"$PYTHON" -c "
import json, sys
from rich.console import Console
from harness.commands.doctor_cmd import render_report
console = Console(width=200, record=True)
for table in render_report(json.load(open(sys.argv[1]))):
    console.print(table)
open(sys.argv[2], 'w').write(console.export_text())
" "$OUT_DIR/doctor.json" "$OUT_DIR/doctor.txt" || tail -40 "$OUT_DIR/doctor.stderr.txt"

# 2. the CPU tests of the GPU paths, here with CUDA present (the same tests CI runs on CPU)
timeout 600 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu_readiness.py tests/test_doctor.py \
    -k "doctor or gpu or bf16 or stop_token or checkpointing or empty_cache or release" > "$OUT_DIR/tests.txt" 2>&1
tests_rc=$?
tail -5 "$OUT_DIR/tests.txt"

# 3. the memory estimates docs/scaling.md quotes, for comparison with what the GPU reports
"$PYTHON" -m harness.cli doctor --memory-estimates > "$OUT_DIR/memory-estimates.txt" 2>&1

echo "doctor exit $doctor_rc, tests exit $tests_rc; files in $OUT_DIR"
exit $(( doctor_rc != 0 || tests_rc != 0 ))
