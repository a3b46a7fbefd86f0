#!/usr/bin/env bash
# The GPU check in one call on a lent CUDA machine (see README, "Performance"):
#
#   here, once:   bash benchmarks/gpu_wheels.sh          # wheels the GPU image lacks -> .whl/ (ignored by git)
#   device call:  bash benchmarks/gpu_check.sh           # with .whl carried; JSON -> $OUT/gpu_check.json
#
# Extra arguments go to `python -m benchmarks.gpu_check` (e.g. --with-defaults, --steps 20, --dry-run).
# Packed sweeps (docs/packed-sweeps.md), 4 jobs sequential against packed, bf16 and nf4 on the 1B-shaped model:
#   bash benchmarks/gpu_check.sh --packed-sweep --models llama-1b-random
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .whl/site ]; then  # slimmed packages copied as folders (bitsandbytes with only the CUDA 13 libraries)
  export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

$PY - <<'EOF'
import importlib
for name in ("torch", "transformers", "trl", "peft", "datasets", "pyarrow", "accelerate", "hydra", "omegaconf",
             "bitsandbytes"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

PYTHONUNBUFFERED=1 $PY -m benchmarks.gpu_check "$@"
