# Sourced by run_gpu.sh and run_short.sh from the repository root: the environment of a lent GPU machine.
# Offline hub, no Triton interpreter, the wheels carried in benchmarks/gpu/wheels/ (if any) installed into
# /tmp/site (no index, no deps), the repository on PYTHONPATH; prints the card and the versions.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET
if compgen -G "benchmarks/gpu/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    benchmarks/gpu/wheels/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, triton
print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
