"""Chunked PyTorch divergences (``impl="chunked"``): token chunks by a byte budget, never [N, V].

Each chunk of n tokens stacks its student and teacher rows into one (2n, H) block, so one GEMM against
W gives both sides' logits (W is streamed once per chunk). Only O(N) per-row results leave the chunk.
A chunk holds its rows' full vocabulary (n × V, bounded by the byte budget), so JSD's two passes (the
normalisers, then the mixture terms) are two sweeps over that in-memory block, not two GEMMs.

Gradients w.r.t. the student logits z_S (per row; p = softmax(z), log-probs in nats):

* reverse KL, D = Σ_j p_S,j (log p_S,j − log p_T,j). With ∂p_S,k/∂z_S,j = p_S,k (δ_jk − p_S,j) and
  ∂D/∂p_S,k = log p_S,k − log p_T,k + 1:
      ∂D/∂z_S,j = Σ_k (log p_S,k − log p_T,k + 1) p_S,k (δ_jk − p_S,j) = p_S,j (log p_S,j − log p_T,j − D)
  (the "+1" cancels because Σ_k p_S,k (δ_jk − p_S,j) = 0).
* forward KL, D = Σ_j p_T,j log p_T,j − Σ_j p_T,j log p_S,j, log p_S,j = z_S,j − lse(z_S):
      ∂D/∂z_S,j = −p_T,j + p_S,j Σ_k p_T,k = p_S,j − p_T,j.
* JSD_β, M = β p_T + (1 − β) p_S, D = β Σ p_T log p_T + (1 − β) Σ p_S log p_S − Σ M log M
  (expanding both KLs against M). Treating p_S as free, ∂D/∂p_S,k = (1 − β)(log p_S,k + 1) −
  (1 − β)(log M_k + 1) = (1 − β)(log p_S,k − log M_k); through the softmax Jacobian:
      ∂D/∂z_S,j = (1 − β) p_S,j (log p_S,j − log M_j − A),   A = Σ_k p_S,k (log p_S,k − log M_k) = KL(p_S ‖ M).

Top-k: the teacher's top-k set K_t is chosen without gradient; the formulas above hold on K_t with the
renormalised distributions, and ∂D/∂z_S,j = 0 for j ∉ K_t.

The chain rule to the inputs: z_S = h_S Wᵀ / τ, so dh_S = (dz/τ) W and dW = (dz/τ)ᵀ h_S (student rows only).

Two modes (see ``DivergenceOptions.mode``):
* "sum": the output is Σ_t c_t D_t with known per-row coefficients c_t, so ∂out/∂z_S = c_t·∂D_t/∂z_S is
  formed chunk by chunk during the forward (the same 4 GEMM-passes as the naive path: logits, dh, dW);
  backward only scales the stored dh/dW by the scalar upstream gradient.
* "rows": the output is the vector c_t D_t and the upstream gradient g_t is arbitrary. dh is still formed
  in the forward per row (∂D_t/∂h_t does not depend on g); dW = Σ_t g_t c_t (…) cannot be, so when the head
  trains, backward recomputes the chunk logits from the saved hidden states (6 GEMM-passes).

Vocab-parallel head (``opts.process_group``; ``distributed.py``): the chunk's logits are this rank's
columns. Per chunk, the two sides' (max, Σexp) are all-reduced into the global normalisers
(``all_reduce_logsumexp``), so the in-place log-probs are global ones on local columns; ``_terms`` then
all-reduces its partial row sums (D, or KL(p_S‖M) and KL(p_T‖M) for JSD) before forming the gradient,
which needs only those row values. Three O(n) all-reduces a chunk, and one of dh (N, H) per pass; dW is
this shard's. Every rank must walk the same chunks, so the chunk size follows the mean shard size
vocab_size / world (a rank with a larger shard exceeds the byte budget by its shard's ratio to the mean),
and every rank must pass the same ``chunk_bytes``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .distributed import all_reduce_logsumexp
from .divergence import DivergenceOptions

#: Bytes held per (token, vocabulary entry) of a chunk: the student and teacher logits (turned into
#: log-probs in place) plus at most four (n, V) fp32 temporaries (exp for the normaliser, log M, p, …).
_BYTES_PER_TOKEN_ENTRY = 24


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij b_ij for (n, K) a, b without an (n, K) product temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _no_reduce(x: torch.Tensor) -> torch.Tensor:
    return x


def _terms(lp_s: torch.Tensor, lp_t: torch.Tensor, kind: str, beta: float, want_grad: bool,
           reduce=_no_reduce):
    """D (n,) and, if asked, G = ∂D/∂z_S (n, K) from the student/teacher log-probs (n, K) of one chunk.

    ``lp_s`` may be overwritten (it is the caller's temporary). ``reduce`` maps the chunk's row sums
    (r, n) over these columns to the row sums over the whole vocabulary (a vocab-parallel all-reduce;
    the identity on a whole head); it is called exactly once, with or without ``want_grad``.
    """
    if kind == "reverse_kl":
        diff = lp_s - lp_t  # log p_S − log p_T
        p_s = lp_s.exp_()
        d = reduce(_rowdot(p_s, diff).unsqueeze(0))[0]
        if not want_grad:
            return d, None
        return d, diff.sub_(d.unsqueeze(1)).mul_(p_s)  # p_S (log p_S − log p_T − D)
    if kind == "forward_kl":
        p_t = lp_t.exp()
        d = reduce(_rowdot(p_t, lp_t - lp_s).unsqueeze(0))[0]
        if not want_grad:
            return d, None
        return d, lp_s.exp_().sub_(p_t)  # p_S − p_T
    # JSD_β (0 < β < 1): log M = logaddexp(log β + log p_T, log(1 − β) + log p_S)
    lp_m = torch.logaddexp(lp_t + math.log(beta), lp_s + math.log1p(-beta))
    b_t = _rowdot(lp_t.exp(), lp_t - lp_m)  # KL(p_T ‖ M)
    r_s = lp_s.sub_(lp_m)  # log p_S − log M (lp_s is now r_s; p_S = exp(r_s + log M))
    p_s = lp_m.add_(r_s).exp_()  # reuse lp_m's storage for p_S
    a_s, b_t = reduce(torch.stack([_rowdot(p_s, r_s), b_t])).unbind(0)  # KL(p_S ‖ M), KL(p_T ‖ M)
    d = beta * b_t + (1.0 - beta) * a_s
    if not want_grad:
        return d, None
    return d, r_s.sub_(a_s.unsqueeze(1)).mul_(p_s).mul_(1.0 - beta)  # (1 − β) p_S (log p_S − log M − A)


def chunk_rows(n_tokens: int, vocab: int, chunk_bytes: int) -> int:
    """Tokens per chunk so that the chunk's fp32 temporaries stay within ``chunk_bytes``."""
    return max(1, min(max(n_tokens, 1), chunk_bytes // (_BYTES_PER_TOKEN_ENTRY * max(vocab, 1))))


def chunked_divergence_pass(hs: torch.Tensor, ht: torch.Tensor, weight: torch.Tensor, opts: DivergenceOptions,
                            row_scale: torch.Tensor | None = None, need_dh: bool = False, need_dw: bool = False):
    """One pass over token chunks.

    hs, ht: (N, H) student / teacher rows; weight: (V, H); row_scale: (N,) fp32 ∂out/∂D_t (needed for grads).
    Returns D (N,) fp32, dh (N, H) fp32 or None, dW (V, H) fp32 or None (student rows only).
    """
    n_tok, _ = hs.shape
    vocab = weight.shape[0]
    group = opts.process_group
    # Vocab-parallel: every rank must walk the same chunks (collectives inside), so size them by the
    # mean shard; the local shard is whole, top_k is refused before this point.
    step_vocab = vocab if group is None else -(-opts.vocab_size // dist.get_world_size(group))
    reduce = _no_reduce if group is None else (lambda x: _all_reduce_(x, group))
    w32 = weight.detach() if weight.dtype == torch.float32 else weight.detach().float()  # fp32 maths
    inv_tau = 1.0 / opts.temperature
    top_k = opts.top_k if opts.top_k is not None and opts.top_k < vocab else None
    want_grad = need_dh or need_dw
    d_out = torch.empty(n_tok, dtype=torch.float32, device=hs.device)
    dh = torch.empty(n_tok, hs.shape[1], dtype=torch.float32, device=hs.device) if need_dh else None
    dw = torch.zeros(vocab, hs.shape[1], dtype=torch.float32, device=hs.device) if need_dw else None
    step = chunk_rows(n_tok, step_vocab, opts.chunk_bytes)
    for a in range(0, n_tok, step):
        b = min(a + step, n_tok)
        n = b - a
        h_s = hs[a:b].detach().float()  # (n, H)
        z = torch.cat([h_s, ht[a:b].detach().float()]) @ w32.t()  # (2n, V): one GEMM for both sides
        if inv_tau != 1.0:
            z.mul_(inv_tau)
        if top_k is not None:
            idx = z[n:].topk(top_k, dim=-1).indices  # (n, k) teacher's top-k set, no gradient
            z = torch.cat([z[:n].gather(1, idx), z[n:].gather(1, idx)])  # (2n, k)
        # log-probs of both sides, in place, one side at a time (one (n, V) temporary), as
        # (z − max) − log Σ e^{z − max}: near-max entries keep full precision (z − lse with a rounded
        # lse loses |lse|·eps, which matters for large or very negative logits).
        m = z.amax(dim=-1, keepdim=True)  # (2n, 1)
        z.sub_(m)
        s = torch.cat([side.exp().sum(dim=-1, keepdim=True) for side in (z[:n], z[n:])])  # (2n, 1)
        if group is None:
            z.sub_(s.log_())
        else:  # global normalisers: log p = (z − m) − ((M − m) + log S)
            m_all, s_all = all_reduce_logsumexp(m, s, group)
            z.sub_(s_all.log_().add_(m_all - m))
        d, g = _terms(z[:n], z[n:], opts.kind, opts.beta, want_grad, reduce)
        d_out[a:b] = d
        if not want_grad:
            continue
        g.mul_((row_scale[a:b] * inv_tau).unsqueeze(1))  # dz = ∂out/∂D_t · ∂D_t/∂z_S / τ  (n, K)
        if top_k is not None:
            g = torch.zeros(n, vocab, dtype=torch.float32, device=hs.device).scatter_(1, idx, g)
        if need_dh:
            torch.mm(g, w32, out=dh[a:b])  # (n, H)
        if need_dw:
            dw.addmm_(g.t(), h_s)  # (V, H) fp32 accumulation, student rows only
    if need_dh and group is not None:
        dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=group)  # Σ over shards of Σ_j dz_j W_j
    return d_out, dh, dw


def _all_reduce_(x: torch.Tensor, group) -> torch.Tensor:
    """In-place all-reduce SUM of a fresh O(n) tensor; returns it."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def _weighted_rows(d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """c_t·D_t with exact zeros on excluded rows (c_t = 0), whatever D_t holds there."""
    return torch.where(c != 0, d * c, torch.zeros_like(d))


class ChunkedDivergenceFunction(torch.autograd.Function):
    """(hs (N,H), ht (N,H), weight (V,H), c (N,) fp32, opts) → Σ c_t D_t ("sum") or c_t D_t (N,) ("rows")."""

    @staticmethod
    def forward(ctx, hs, ht, weight, c, opts: DivergenceOptions):
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        ctx.opts = opts
        ctx.hs_dtype, ctx.w_dtype = hs.dtype, weight.dtype
        if opts.mode == "sum":
            d, dh, dw = chunked_divergence_pass(hs, ht, weight, opts, c, need_dh, need_dw)
            # Our own gradient buffers (not inputs or outputs): kept on ctx and scaled in place in backward,
            # so the (V, H) fp32 dW exists once. A second backward through the same graph is refused.
            ctx.grads = (dh, dw)
            return _weighted_rows(d, c).sum()
        # rows: dh_t/g_t is formed now; dW needs g, so it is recomputed in backward (only if the head trains).
        d, dh, _ = chunked_divergence_pass(hs, ht, weight, opts, c, need_dh and not need_dw, False)
        if need_dw:
            ctx.save_for_backward(hs, ht, weight, c)
        else:
            ctx.save_for_backward(dh)
        ctx.recompute = need_dw
        return _weighted_rows(d, c)

    @staticmethod
    def backward(ctx, grad_out):
        opts = ctx.opts
        if opts.mode == "sum":
            if ctx.grads is None:
                raise RuntimeError("fused_divergence (chunked, reduction mean/sum) supports one backward per "
                                   "forward; call it again instead of retain_graph=True")
            dh, dw = ctx.grads
            ctx.grads = None
            dh = None if dh is None else dh.mul_(grad_out).to(ctx.hs_dtype)
            dw = None if dw is None else dw.mul_(grad_out).to(ctx.w_dtype)
            return dh, None, dw, None, None
        if not ctx.recompute:
            (dh,) = ctx.saved_tensors
            dh = None if dh is None else (dh * grad_out.unsqueeze(1)).to(ctx.hs_dtype)
            return dh, None, None, None, None
        hs, ht, weight, c = ctx.saved_tensors
        scale = torch.where(c != 0, grad_out.float() * c, torch.zeros_like(c))
        _, dh, dw = chunked_divergence_pass(hs, ht, weight, opts, scale, ctx.needs_input_grad[0], True)
        return (None if dh is None else dh.to(ctx.hs_dtype)), None, dw.to(ctx.w_dtype), None, None
