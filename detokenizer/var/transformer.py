"""VAR's next-scale transformer, conditioned on a *sequence* (docs/design.md §7).

Sequence layout: scale 0 is one start token made from the pooled condition; scale k >= 1 holds
the ``p_k^2`` positions of the cumulative ``f_hat`` after scales < k, area-downsampled to
``p_k`` (:meth:`MultiScaleQuantizer.step`), embedded by a linear map. Each position gets a
learned position embedding and its scale's level embedding. Attention is block-causal (a token
sees its own scale and every earlier one); blocks are AdaLN-modulated by the pooled condition
(zero-initialised gates) and cross-attend to the condition sequence. At inference the
condition and the learned null condition run as one doubled batch, with guidance ramped
linearly over scales, and each scale's keys/values are cached for the next.

With ``layout_queries``, a layout reader (:class:`~lavit.layers.QueryConditioner`) also turns
the condition into a grid of features; each scale's input tokens get that grid area-pooled to
their side, through a zero-initialised projection (so a trained transformer grows one and
starts where it was). Dropped conditions get the reader's learned null grid.

With ``last_head``, a small convolutional head reads the last scale's hidden states, its input
(the cumulative ``f_hat`` of the earlier scales) and its layout tokens as a map, and adds
residual logits there (zero-initialised too); with ``last_head_scales`` > 1 the same head does so
on each of that many last scales. It is part of the conditional model: teacher
forcing applies it to the rows whose condition was kept, sampling to the conditional half of
the batch, so guidance amplifies what it adds, (1 + t) * (cond + head) - t * null.

With ``condition="class"`` it is VAR's class-conditional transformer (Tian et al. 2024): a
label's embedding (``class_emb``, the last row the null class) plus ``pos_start`` is the start
token and modulates every block; the blocks have no cross-attention (:meth:`forward_classes`,
:meth:`sample_classes`). VAR's other choices are options of the same blocks: l2-normalised
attention with a learned temperature, a q and v bias only, GELU(tanh), LayerNorm eps 1e-6, a
shared AdaLN projection. Our AdaLN chunks are ordered (shift1, scale1, gate1, shift2, scale2,
gate2) and the head's (shift, scale); VAR's converter reorders its rows to match.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from detokenizer.var.config import VARConfig, VARSamplingConfig, VQVAEConfig
from detokenizer.var.quantizer import MultiScaleQuantizer
from lavit.generate import Generators, sample_logits
from lavit.layers import MLP, Attention, QueryConditioner, attention, seq_to_grid


@dataclass
class VARSample:
    tokens: list[torch.Tensor]  # per scale (B, p_k, p_k)
    f_hat: torch.Tensor  # (B, Cvae, s, s): what the VQ-VAE decoder reads
    logits: list[torch.Tensor]  # per scale (B, p_k^2, V), after guidance
    f_hats: list[torch.Tensor]  # cumulative f_hat after each scale (previews)


# VAR's cap on the l2-attention temperature: exp(scale_mul_1H11) <= 100.
MAX_LOG_TEMPERATURE = math.log(100.0)


class SelfAttention(nn.Module):
    """Self-attention with an optional KV cache (a dict this layer appends to).

    ``qkv_bias="qv"``: the fused projection has no bias; q and v have their own, k none (VAR).
    ``l2_norm``: q and k are l2-normalised per head and their dot product is scaled by a learned
    per-head temperature exp(scale_mul_1H11), from 4 and capped at 100, instead of
    1/sqrt(head dim) (VAR's attn_l2_norm).
    """

    def __init__(self, dim: int, heads: int, backend: str, qkv_bias: str = "qkv", l2_norm: bool = False) -> None:
        super().__init__()
        self.heads, self.backend = heads, backend
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=qkv_bias == "qkv"), nn.Linear(dim, dim)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias == "qv" else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias == "qv" else None
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log()) if l2_norm else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: dict | None) -> torch.Tensor:
        b, length, c = x.shape
        bias = self.qkv.bias
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, length, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D)
        if self.scale_mul_1H11 is not None:
            # attention() divides q.k by sqrt(D): q carries sqrt(D) so the logits are cos(q, k) * temperature.
            temperature = self.scale_mul_1H11.clamp_max(MAX_LOG_TEMPERATURE).exp()  # (1, H, 1, 1)
            q = F.normalize(q, dim=-1) * (temperature * math.sqrt(c // self.heads))
            k = F.normalize(k, dim=-1)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = attention(q, k, v, mask, self.backend)
        return self.out(y.transpose(1, 2).reshape(b, length, c))


class TanhMLP(MLP):
    """The two-layer MLP with GELU's tanh approximation (VAR's FFN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """AdaLN-modulated self-attention and MLP, with cross-attention to the condition sequence
    between them when conditioned on codes."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        w = cfg.width
        norm = partial(nn.LayerNorm, w, eps=cfg.norm_eps)
        self.norm1 = norm(elementwise_affine=False)
        self.attn = SelfAttention(w, cfg.heads, cfg.attention_backend, cfg.qkv_bias, cfg.attn_l2_norm)
        self.norm2 = self.cross = None
        if cfg.condition == "codes":
            self.norm2 = norm()
            self.cross = Attention(w, cfg.heads, context_dim=cfg.cond_dim, backend=cfg.attention_backend)
        self.norm3 = norm(elementwise_affine=False)
        self.mlp = (TanhMLP if cfg.gelu == "tanh" else MLP)(w, cfg.mlp_ratio)
        self.ada = self.ada_gss = None
        if cfg.shared_adaln:  # this block's offset to the shared projection's six terms
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, w) / math.sqrt(w))
        else:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, ada_in, cond, cond_mask, mask=None, cache=None) -> torch.Tensor:
        """x: (B, L, C); ada_in: the (B, C) condition vector, or with a shared AdaLN the shared
        projection's (B, 1, 6, C) terms; cond, cond_mask: the (B, Lc, cond_dim) sequence and its
        (B, Lc) mask (None with a class condition)."""
        if self.ada is None:
            shift1, scale1, gate1, shift2, scale2, gate2 = (self.ada_gss + ada_in).unbind(2)  # 6 x (B, 1, C)
        else:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(ada_in)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, mask, cache)
        if self.cross is not None:
            x = x + self.cross(self.norm2(x), cond, cond_mask[:, None, None, :])
        return x + gate2 * self.mlp(self.norm3(x) * (1 + scale2) + shift2)


class LastScaleHead(nn.Module):
    """Residual logits for a scale from a local view of it: a 1x1 projection, residual 3x3 conv
    blocks, and a zero-initialised 1x1 output (so a grown head changes nothing). Convolutions
    take any side, so one head serves each of the last scales."""

    def __init__(self, in_channels: int, width: int, vocab: int, blocks: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(blocks)
        )
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, vocab, 1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, p^2, C) features of a square scale in raster order -> (B, p^2, vocab) logits."""
        h = self.proj(seq_to_grid(features))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).flatten(2).transpose(1, 2)


class NextScaleTransformer(nn.Module):
    def __init__(self, cfg: VARConfig, vq: VQVAEConfig) -> None:
        super().__init__()
        self.cfg, self.scales = cfg, list(vq.scales)
        w, lengths = cfg.width, [p * p for p in vq.scales]
        self.cond_pool = self.null = self.class_emb = self.pos_start = None
        if cfg.condition == "codes":
            self.cond_pool = nn.Linear(cfg.cond_dim, w)
            self.null = nn.Parameter(torch.randn(1, 1, cfg.cond_dim) * 0.02)  # the null condition sequence
        else:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, w)  # row num_classes: the null class
            nn.init.normal_(self.class_emb.weight, std=0.02)
            self.pos_start = nn.Parameter(torch.randn(1, 1, w) * 0.02)  # added to the start token
        self.word_embed = nn.Linear(vq.latent_channels, w)
        self.pos = nn.Parameter(torch.randn(1, sum(lengths), w) * 0.02)
        self.level = nn.Embedding(len(lengths), w)
        levels = torch.cat([torch.full((n,), k) for k, n in enumerate(lengths)])
        self.register_buffer("levels", levels, persistent=False)
        # Block-causal: position i may attend to j iff j's scale <= i's scale.
        self.register_buffer("mask", levels[:, None] >= levels[None, :], persistent=False)
        self.spans = list(itertools.pairwise(itertools.accumulate(lengths, initial=0)))  # [start, end) per scale
        self.shared_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w)) if cfg.shared_adaln else None
        self.blocks = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(w, elementwise_affine=False, eps=cfg.norm_eps)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.head = nn.Linear(w, vq.codebook_size)
        self.layout = self.layout_proj = None
        if cfg.layout_queries:
            self.layout = QueryConditioner(
                cfg.cond_dim,
                cfg.layout_width,
                cfg.layout_depth,
                cfg.layout_heads,
                cfg.layout_queries,
                cfg.layout_width,
                cfg.max_codes,
            )
            self.layout_proj = nn.Linear(cfg.layout_width, w)
            nn.init.zeros_(self.layout_proj.weight)
            nn.init.zeros_(self.layout_proj.bias)
        self.last_head, self.head_from = None, len(self.scales)
        if cfg.last_head:
            if cfg.last_head_scales >= len(self.scales):
                raise ValueError(
                    f"last_head_scales={cfg.last_head_scales}: the head refines a scale from the earlier ones, "
                    f"so at most {len(self.scales) - 1} of these {len(self.scales)} scales; "
                    f"set model.last_head_scales between 1 and {len(self.scales) - 1}"
                )
            self.head_from = len(self.scales) - cfg.last_head_scales  # the first scale it refines
            features = w + vq.latent_channels + (cfg.layout_width if cfg.layout_queries else 0)
            self.last_head = LastScaleHead(features, cfg.last_head, vq.codebook_size, cfg.last_head_blocks)

    # ----------------------------------------------------------------------------------------
    # Condition
    # ----------------------------------------------------------------------------------------

    def require(self, condition: str) -> None:
        """Raise unless this transformer is conditioned on ``condition`` ("codes" or "class")."""
        if self.cfg.condition != condition:
            calls = {"codes": "forward / sample", "class": "forward_classes / sample_classes"}
            raise ValueError(
                f"this VAR transformer is conditioned on {self.cfg.condition} (condition={self.cfg.condition}), "
                f"not on {condition}: call {calls[self.cfg.condition]}"
            )

    def null_condition(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned null condition laid out as a (batch, length) sequence: one real position."""
        cond = torch.zeros(batch, length, self.cfg.cond_dim, device=self.null.device, dtype=self.null.dtype)
        cond[:, :1] = self.null
        mask = torch.zeros(batch, length, dtype=torch.bool, device=self.null.device)
        mask[:, 0] = True
        return cond, mask

    def drop_condition(self, cond, mask, drop: torch.Tensor):
        """Rows where ``drop`` is True get the null condition."""
        null, null_mask = self.null_condition(cond.shape[0], cond.shape[1])
        return torch.where(drop[:, None, None], null.to(cond.dtype), cond), torch.where(drop[:, None], null_mask, mask)

    def pooled(self, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(cond.dtype)
        return self.cond_pool((cond * m).sum(1) / m.sum(1).clamp_min(1))

    def class_vector(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) class labels (``num_classes``: the null class) -> their (B, width) embeddings, the
        condition vector; rows in ``drop`` get the null class."""
        n = self.cfg.num_classes
        if labels.dtype.is_floating_point or labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) <= n:
            got = f"{labels.dtype}" if labels.dtype.is_floating_point else f"{int(labels.min())}..{int(labels.max())}"
            raise ValueError(f"class labels must be integers in [0, {n}] ({n}: the null class), got {got}")
        if drop is not None:
            labels = torch.where(drop, n, labels)
        return self.class_emb(labels)

    def ada_input(self, vector: torch.Tensor) -> torch.Tensor:
        """What every block's AdaLN reads: the (B, width) condition vector, or with a shared AdaLN
        its shared projection's (B, 1, 6, width) terms."""
        if self.shared_ada is None:
            return vector
        return self.shared_ada(vector).view(-1, 1, 6, self.cfg.width)

    def layout_tokens(
        self, cond: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None, null_rows: int = 0
    ) -> torch.Tensor | None:
        """The layout grid read from the condition, area-pooled to every scale's side and laid out
        in sequence order -> (B + null_rows, L, layout_width); rows in ``drop`` and ``null_rows``
        appended rows get the null grid. None without a layout reader."""
        if self.layout is None:
            return None
        grid = self.layout(cond, mask)  # (B, Q, D)
        null = self.layout.null.to(grid.dtype)
        if drop is not None:
            grid = torch.where(drop[:, None, None], null, grid)
        if null_rows:
            grid = torch.cat([grid, null.expand(null_rows, -1, -1)])
        grid = seq_to_grid(grid)
        pooled = [F.interpolate(grid, size=(p, p), mode="area").flatten(2) for p in self.scales]
        return torch.cat(pooled, dim=2).transpose(1, 2)

    def add_layout(self, x: torch.Tensor, layout: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
        """Token embeddings of positions [start, end) plus their projected layout features."""
        return x if layout is None else x + self.layout_proj(layout[:, start:end])

    # ----------------------------------------------------------------------------------------
    # Training (teacher forcing)
    # ----------------------------------------------------------------------------------------

    def embed(
        self, vector: torch.Tensor | None, scale_inputs: torch.Tensor | None, start: int, end: int
    ) -> torch.Tensor:
        """Token embeddings of sequence positions [start, end): the start token from the (B, width)
        condition ``vector`` when start == 0 (plus ``pos_start`` with a class condition), then the
        (B, n, Cvae) next-scale inputs."""
        parts = []
        if start == 0:
            parts.append(vector[:, None] if self.pos_start is None else vector[:, None] + self.pos_start)
        if scale_inputs is not None:
            parts.append(self.word_embed(scale_inputs))
        x = torch.cat(parts, dim=1)
        return x + self.pos[:, start:end] + self.level(self.levels[start:end])[None]

    def logits(self, x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        shift, scale = self.head_ada(vector)[:, None].chunk(2, dim=-1)
        return self.head(self.head_norm(x) * (1 + scale) + shift)

    def last_head_logits(self, x: torch.Tensor, inputs: torch.Tensor, layout: torch.Tensor | None) -> torch.Tensor:
        """A scale's residual logits from its (B, p^2, width) hidden states, its (B, p^2, Cvae)
        inputs and its (B, p^2, layout_width) layout tokens (None without a reader)."""
        parts = [x, inputs.to(x.dtype)] + ([] if layout is None else [layout.to(x.dtype)])
        return self.last_head(torch.cat(parts, dim=-1))

    def forward(
        self,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        indices: list[torch.Tensor],
        quantizer: MultiScaleQuantizer,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: (B, Lc, cond_dim) condition + its (B, Lc) mask and the ground-truth
        per-scale token maps -> (B, L, codebook_size) logits for every position of every scale."""
        self.require("codes")
        layout = self.layout_tokens(cond, cond_mask, drop)
        if drop is not None:
            cond, cond_mask = self.drop_condition(cond, cond_mask, drop)
        inputs = quantizer.teacher_forcing_inputs(indices)  # position j + 1 reads inputs[:, j]
        return self.teacher_forcing(self.pooled(cond, cond_mask), cond, cond_mask, inputs, layout, drop)

    def forward_classes(
        self, labels: torch.Tensor, inputs: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher forcing with a class condition (VAR's ``forward``).

        Args:
            labels: (B,) class labels; ``num_classes`` is the null class.
            inputs: (B, L - 1, Cvae) next-scale inputs, ``quantizer.teacher_forcing_inputs`` of
                the ground-truth token maps (VAR's ``x_BLCv_wo_first_l``).
            drop: (B,) bool, rows given the null class (condition dropout).

        Returns:
            (B, L, codebook_size) logits for every position of every scale.
        """
        self.require("class")
        return self.teacher_forcing(self.class_vector(labels, drop), None, None, inputs, None, drop)

    def teacher_forcing(self, vector, cond, cond_mask, inputs, layout, drop) -> torch.Tensor:
        """The (B, L, V) logits of every scale at once from the (B, width) condition vector, the
        condition sequence and mask (None with a class condition), the (B, L - 1, Cvae) inputs
        and the layout tokens; the last-scale head skips rows in ``drop``."""
        end = self.spans[-1][1]
        x = self.add_layout(self.embed(vector, inputs, 0, end), layout, 0, end)
        ada_in = self.ada_input(vector)
        for block in self.blocks:
            x = block(x, ada_in, cond, cond_mask, self.mask[None, None])
        logits = self.logits(x, vector)
        if self.last_head is None:
            return logits
        parts = [logits[:, : self.spans[self.head_from][0]]]
        for a, e in self.spans[self.head_from :]:
            extra = self.last_head_logits(
                x[:, a:e], inputs[:, a - 1 : e - 1], None if layout is None else layout[:, a:e]
            )
            if drop is not None:  # the head belongs to the conditional model: none on null rows
                extra = extra * ~drop[:, None, None]
            parts.append(logits[:, a:e] + extra)
        return torch.cat(parts, dim=1)

    def blocks_and_head(self, x: torch.Tensor, vector: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        """The blocks and the head on given token states, with a class condition: (B, l, width)
        states and the (B, width) condition vector -> (B, l, V) logits. Without ``caches`` the
        states are the whole sequence (block-causal mask); with them, one scale after the cached
        ones. VARGPT feeds the blocks its LLM's projected hidden states this way."""
        self.require("class")
        ada_in = self.ada_input(vector)
        mask = self.mask[None, None] if caches is None else None
        for i, block in enumerate(self.blocks):
            x = block(x, ada_in, None, None, mask, None if caches is None else caches[i])
        return self.logits(x, vector)

    def loss(self, logits: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
        target = torch.cat([i.flatten(1) for i in indices], dim=1)
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    # ----------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        quantizer: MultiScaleQuantizer,
        cfg: VARSamplingConfig,
        generator: Generators = None,
        forced: list[torch.Tensor] | None = None,
    ) -> VARSample:
        """Scale by scale with a KV cache; [cond; null] as one batch when guidance != 1.

        Args:
            cond, cond_mask: (B, Lc, cond_dim) condition sequence and its (B, Lc) bool mask.
            generator: one generator, or one per image (an image's tokens then do not depend
                on the rest of the batch).
            forced: per-scale token maps to use instead of sampling; a None entry samples that
                scale (tests: teacher forcing must match what inference builds; diagnostics:
                true coarse scales, sampled fine ones).
        """
        self.require("codes")
        b = cond.shape[0]
        guided = cfg.guidance_scale != 1.0
        layout = self.layout_tokens(cond, cond_mask, null_rows=b if guided else 0)
        if guided:
            null, null_mask = self.null_condition(b, cond.shape[1])
            cond, cond_mask = torch.cat([cond, null.to(cond.dtype)]), torch.cat([cond_mask, null_mask])
        return self.sample_scales(
            self.pooled(cond, cond_mask), cond, cond_mask, layout, quantizer, cfg, generator, forced
        )

    @torch.no_grad()
    def sample_classes(
        self,
        labels: torch.Tensor,
        quantizer: MultiScaleQuantizer,
        cfg: VARSamplingConfig,
        generator: Generators = None,
        forced: list[torch.Tensor] | None = None,
    ) -> VARSample:
        """:meth:`sample` with a class condition: (B,) labels, [labels; null class] as one batch
        when guidance != 1 (VAR's ``autoregressive_infer_cfg``)."""
        self.require("class")
        if cfg.guidance_scale != 1.0:
            labels = torch.cat([labels, torch.full_like(labels, self.cfg.num_classes)])
        return self.sample_scales(self.class_vector(labels), None, None, None, quantizer, cfg, generator, forced)

    def sample_scales(self, vector, cond, cond_mask, layout, quantizer, cfg, generator, forced) -> VARSample:
        """The sampling loop from the (B or 2B, width) condition vector, the condition sequence and
        mask (None with a class condition) and the layout tokens; with guidance the second half of
        each is the null condition."""
        guided = cfg.guidance_scale != 1.0
        b = vector.shape[0] // 2 if guided else vector.shape[0]
        ada_in = self.ada_input(vector)
        caches = [{} for _ in self.blocks]
        f_hat = quantizer.codebook.weight.new_zeros(b, quantizer.dim, quantizer.side, quantizer.side)
        x = self.add_layout(self.embed(vector, None, 0, 1), layout, 0, 1)
        tokens, all_logits, f_hats = [], [], []
        num = len(self.scales)
        inputs = None  # the current scale's (B, p^2, Cvae) inputs: the f_hat both halves read
        for k, p in enumerate(self.scales):
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block(x, ada_in, cond, cond_mask, None, cache)
            logits = self.logits(x, vector)  # (B or 2B, p^2, V)
            if self.last_head is not None and k >= self.head_from:  # on the conditional rows only
                start, end = self.spans[k]
                rows = None if layout is None else layout[:b, start:end]
                extra = self.last_head_logits(x[:b], inputs, rows)
                logits = torch.cat([logits[:b] + extra, logits[b:]]) if guided else logits + extra
            logits = logits.float()
            if guided:
                t = cfg.guidance_scale * k / max(num - 1, 1)
                logits = (1 + t) * logits[:b] - t * logits[b:]
            all_logits.append(logits)
            idx = draw_scale(logits, cfg, generator, None if forced is None else forced[k])
            tokens.append(idx.view(b, p, p))
            f_hat, nxt = quantizer.step(f_hat, tokens[-1], k)
            f_hats.append(f_hat)
            if nxt is not None:
                start, end = self.spans[k + 1]
                inputs = nxt
                x = self.embed(None, nxt, start, end)
                x = torch.cat([x, x]) if guided else x  # both halves read the same f_hat
                x = self.add_layout(x, layout, start, end)
        return VARSample(tokens=tokens, f_hat=f_hat, logits=all_logits, f_hats=f_hats)


def draw_scale(logits: torch.Tensor, cfg, generator: Generators, forced: torch.Tensor | None = None) -> torch.Tensor:
    """One scale's (B, p^2) tokens from its (B, p^2, V) logits after guidance: ``forced`` if given,
    else sampled with ``cfg``'s temperature, top-k and top-p (one generator per row if a list, so
    a row's tokens do not depend on the rest of the batch)."""
    b = logits.shape[0]
    if forced is not None:
        return forced.reshape(b, -1).to(logits.device)
    if isinstance(generator, list):
        rows = zip(logits, generator, strict=True)
        return torch.stack([sample_logits(row, cfg.temperature, cfg.top_k, cfg.top_p, g) for row, g in rows])
    return sample_logits(logits.flatten(0, 1), cfg.temperature, cfg.top_k, cfg.top_p, generator).view(b, -1)
