#!/usr/bin/env bash
# Device check on one CUDA GPU (issue 12), with the machine's own torch and triton, offline:
# installs this project without dependencies, then prints benchmarks/gpu_check.py's tables
# (Triton-vs-reference parity, scan time and memory, training tokens/s and peak memory with and
# without gradient checkpointing, decode tokens/s). Ends within 8 minutes (a hard timeout).
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry    # anywhere: CPU, tiny shapes, Triton's interpreter, no install
#
# Needs torch, triton and the project's own imports (transformers, safetensors, tokenizers) already
# installed; mamba-ssm is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ "${1:-}" != "--dry" ]; then
    # --no-build-isolation: the build backend (setuptools) comes from the machine, not the network
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . ; then
        echo "gpu_check: pip install -e . failed; using the source tree through PYTHONPATH"
    fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "triton", "transformers", "safetensors", "tokenizers", "yaml")
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing (the parity and scan sections may still run)"
fi
cd benchmarks
exec timeout --signal=INT --kill-after=20 470 "$PY" -u gpu_check.py "$@"
