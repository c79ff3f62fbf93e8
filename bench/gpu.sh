#!/bin/sh
# The GPU rows of the bench, for a session lent an H100/H200 (the `device` tool; its image has CUDA PyTorch):
#   run with command "sh bench/gpu.sh" and copy $OUT/*.md into bench/.
# 1. the shipped code model and its autoregressive twin (7.4 M parameters), bf16;
# 2. speed only: untrained networks of about 100 M parameters (d_model 768, 12 layers) on the same vocabulary,
#    with model FLOP utilisation against the GPU's measured bf16 matrix-product rate.
set -e
OUT=${OUT:-bench}
python3 -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1
run() { PYTHONUNBUFFERED=1 python3 -m unidiff.cli bench --device cuda --precision bf16 --prompt '' --no-judge \
        --no-features --batches 1 8 64 --setting ar:T1 --setting diffusion:confidence:0.25:T0.8 \
        --setting diffusion:confidence:0.5:T0.8:blocks32:cache --setting diffusion:confidence:0.25:T0.8:blocks32:cache \
        "$@"; }
run --lengths 256 1024 --samples 64 --out "$OUT/code-gpu.md"
run --lengths 256 1024 --scale d_model=768,n_layers=12,n_heads=12 --out "$OUT/code-100m-gpu.md"
