"""Test-session environment: offline hubs, Triton through its interpreter when no GPU is present.

These variables must be set before torch/triton/transformers are imported, so they live here at the top.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
if not os.path.exists("/dev/nvidia0") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="requires a CUDA device")
    for item in items:
        if "requires_cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


# ------------------------------------------------------------------------------------------------------------
# SDAR_TEST_DEVICE=cuda (set by benchmarks/gpu/run_gpu.sh on a GPU machine): the kernel tests build their inputs
# and fp64 references on the CPU; every call into the Triton launchers moves its tensor arguments to the GPU and
# its results back, so the whole kernel suite (every shape, dtype, trap and gradient check) runs the compiled
# CUDA kernels against the same CPU references. Calls whose tensors already live on the GPU pass through.
def _on_device(fn, device):
    import functools

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    def back(x, home):
        if isinstance(x, torch.Tensor):
            return x.to(home)
        if isinstance(x, (list, tuple)):
            return type(x)(back(v, home) for v in x)
        return x

    def first_device(values):
        for v in values:
            if isinstance(v, torch.Tensor):
                return v.device
            if isinstance(v, (list, tuple)):
                found = first_device(v)
                if found is not None:
                    return found
        return None

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        home = first_device(list(args) + list(kwargs.values()))
        out = fn(*move(list(args)), **{k: move(v) for k, v in kwargs.items()})
        return out if home is None else back(out, home)

    wrapped.__wrapped_for_device__ = device
    return wrapped


def _install_device_shim(device: str) -> None:
    from sdar_kernels import divergence_triton
    from sdar_kernels.ops import triton_divergence, triton_logprobs

    for module, names in ((triton_logprobs, ("row_stats", "grad")),
                          (triton_divergence, ("divergence_stats", "divergence_jsd_terms", "divergence_backward")),
                          (divergence_triton, ("divergence_stats", "divergence_jsd_terms", "divergence_backward"))):
        for name in names:
            fn = getattr(module, name)
            if not hasattr(fn, "__wrapped_for_device__"):
                setattr(module, name, _on_device(fn, device))


_TEST_DEVICE = os.environ.get("SDAR_TEST_DEVICE", "")
if _TEST_DEVICE:
    if _TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"SDAR_TEST_DEVICE={_TEST_DEVICE!r}: no CUDA device is available")
    _install_device_shim(_TEST_DEVICE)
