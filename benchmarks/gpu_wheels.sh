#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) what the lent GPU machine's image lacks, into .whl/ for `carry`:
# pure-Python wheels for Python 3.12, and bitsandbytes as a folder slimmed to its CPU and CUDA 13 libraries
# (the full wheel, with every CUDA version's library, would not fit the 64 MiB the device call carries).
# The image already has torch (CUDA 13), accelerate, tokenizers, safetensors, huggingface-hub, pyarrow, pandas.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl/site  # .whl/ is in .gitignore: carried, never committed

$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==5.2.0 transformers==5.24.0 peft==0.21.2 hydra-core==1.3.2 omegaconf==2.3.0 \
  dill==0.4.1 multiprocess==0.70.19
# antlr4-python3-runtime (hydra's parser) is published as a source archive only: build its pure-Python wheel
$PY -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3

$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d /tmp/bnb-wheel bitsandbytes==0.50.2
$PY - <<'EOF'
import glob, zipfile
wheel = sorted(glob.glob("/tmp/bnb-wheel/bitsandbytes-0.50.2-*.whl"))[0]
keep = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(".so") and not name.endswith(keep):
            continue
        z.extract(name, ".whl/site")
EOF
du -sh .whl
ls .whl
