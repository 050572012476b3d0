"""vLLM worker extension: push the trainer's weights into a running engine.

``VLLMEngine`` starts ``vllm.LLM(..., worker_extension_cls="sdar.vllm_worker.WeightSyncExtension")``;
vLLM mixes this class into every worker, and ``llm.collective_rpc("sdar_update_weights", ...)``
runs the method below on each of them (in this process when vLLM runs in-process, in the worker
processes otherwise — this module must then be importable there, which it is as part of ``sdar``).

The heavy lifting is vLLM's own ``Worker.reload_weights``: it loads (name, tensor) pairs in HF
checkpoint naming through the model's ``load_weights`` (fusing q/k/v and gate/up, casting to the
engine dtype, each tensor-parallel worker keeping its shard) and re-runs each layer's
post-load processing, e.g. the CPU backend's packed GEMM weights. What it misses is a *tied*
LM head: ``load_weights`` skips ``lm_head.weight`` (it is the embedding), so the head is never
re-processed and on CPU keeps computing logits from its stale packed copy. We re-process it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``self`` is the worker)."""

    def sdar_update_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load ``weights`` (HF names) into this worker's model; returns how many tensors came."""
        weights = list(weights)
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        _refresh_tied_lm_head(self.model_runner.get_model())
        return len(weights)


def _refresh_tied_lm_head(model: torch.nn.Module) -> None:
    config = getattr(model, "config", None)
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(config, "tie_word_embeddings", False) or lm_head is None or embed is None:
        return
    if getattr(lm_head, "weight", None) is not embed.weight:
        lm_head.tie_weights(embed)
    quant_method = getattr(lm_head, "quant_method", None)
    if quant_method is not None:
        quant_method.process_weights_after_loading(lm_head)
