"""DynamicVisualTokenizer: image -> variable-length sequence of discrete codes (LaVIT, ICLR 2024).

    encoder (timm ViT, frozen)      (B, 3, H, W) -> (B, N, Ce)   last block, before the final norm
    proj_in                          -> (B, N, W)
    selector                         -> keep mask (B, N)
    merger (ours or LaVIT's)         -> (B, N, W), kept rows compacted to (B, L, W) + mask (B, L)
    to_code, quantizer (EMA VQ)      -> codes (B, L) in [0, K)   cosine, or LaVIT's L2 on raw codes
    feature decoder (training only)  -> (B, N, Ce) rebuilt standardised encoder features (cosine loss)
    read-out (optional, frozen)      the encoder's pretraining heads on rebuilt vs original features (KL)

Public interface (docs/design.md §4):

    codes = tok.encode(images)              # list of B LongTensors, len N_i <= N
    feats = tok.encode_features(images)     # list of B (N_i, W) continuous merger outputs
    emb, mask = tok.code_embeddings(codes)  # (B, L, W) codebook vectors, (B, L) bool
    out = tok(images, quantize=True)        # training: out.loss, out.logs

Two phases (LaVIT): train selector + merger with ``quantize=False`` (the decoder reads the
l2-normalised low-dimensional projection, the continuous twin of the cosine codebook), then with
``quantize=True`` (k-means initialises the codebook on the first quantized batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from vector_quantize_pytorch import VectorQuantize

from lavit.checkpoint import load_weights
from lavit.config import ConfigError, TokenizerConfig
from tokenizer.decoder import FeatureDecoder
from tokenizer.encoder import PatchReadout, VisionEncoder
from tokenizer.merger import LaVITMerger, TokenMerger
from tokenizer.selector import TokenSelector, infer_keep, sample_keep


@dataclass
class TokenizerOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor]  # detached scalars
    codes: torch.Tensor | None  # (B, L) with -1 at padding, when quantized
    keep: torch.Tensor  # (B, N) bool


def compact(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move kept rows to the front, raster order preserved: (B, N, C), (B, N) bool ->
    ((B, L, C), (B, L) bool) with L = the largest kept count in the batch."""
    lengths = keep.sum(dim=1)
    length = int(lengths.max())
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :length]  # kept first
    out = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    mask = torch.arange(length, device=x.device)[None, :] < lengths[:, None]
    return out, mask


class DynamicVisualTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        self.encoder = VisionEncoder(enc)
        width, n = cfg.width, enc.num_patches
        self.proj_in = nn.Linear(self.encoder.dim, width) if self.encoder.dim != width else nn.Identity()
        # Optional learned position per patch, added before selection so a kept code can carry
        # where its patch was (a frozen random encoder's features hardly do).
        self.patch_pos = nn.Parameter(torch.zeros(1, n, width)) if cfg.position_embedding else None
        self.selector = TokenSelector(width)
        self.merger = self._build_merger(cfg)
        # LaVIT reads images for understanding through a second merger trained with the LLM.
        self.understanding_merger = self._build_merger(cfg) if cfg.understanding_merger else None
        q = cfg.quantizer
        # The projections around the codebook are ours: VectorQuantize's masked commitment loss
        # (1.32) compares against the unprojected, unnormalised input when codebook_dim != dim.
        if cfg.code_projection == "lavit":
            # LaVIT's encode_task_layer; its code embeddings are the raw codebook vectors.
            self.to_code = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, q.codebook_dim))
            self.from_code = nn.Identity()
        else:
            self.to_code = nn.Linear(width, q.codebook_dim)
            self.from_code = nn.Linear(q.codebook_dim, width)
        self.quantizer = VectorQuantize(
            dim=q.codebook_dim,
            codebook_size=q.codebook_size,
            use_cosine_sim=q.lookup == "cosine",
            kmeans_init=q.kmeans_init,
            kmeans_iters=q.kmeans_iters,
            decay=q.decay,
            threshold_ema_dead_code=q.threshold_ema_dead_code,
            commitment_weight=q.commitment_weight,
        )
        # Per-channel statistics of the encoder's features (see calibrate): the reconstruction
        # target is standardised, otherwise a shared mean direction makes cosine ~0.9 for free.
        self.register_buffer("feat_mean", torch.zeros(self.encoder.dim))
        self.register_buffer("feat_std", torch.ones(self.encoder.dim))
        # Inference keeps a patch when its keep-logit margin exceeds this (see calibrate_keep).
        self.register_buffer("keep_threshold", torch.zeros(()))
        pixel_dim = 3 * enc.patch_size**2 if cfg.pixel_loss_weight > 0 else 0
        self.decoder: FeatureDecoder | None = None  # decoder_depth 0: an encode-only tokenizer
        if cfg.decoder_depth > 0:
            self.decoder = FeatureDecoder(
                width,
                n,
                self.encoder.dim,
                cfg.decoder_depth,
                cfg.heads,
                cfg.mlp_ratio,
                pixel_dim,
                cfg.attention_backend,
            )
        self.readout = self._build_readout(cfg) if cfg.semantic_loss_weight > 0 else None

    @staticmethod
    def _build_merger(cfg: TokenizerConfig) -> nn.Module:
        if cfg.merger == "lavit":
            return LaVITMerger(cfg.width, cfg.merger_depth, cfg.heads, cfg.mlp_ratio)
        return TokenMerger(cfg.width, cfg.merger_depth, cfg.heads, cfg.mlp_ratio, cfg.attention_backend)

    def _build_readout(self, cfg: TokenizerConfig) -> PatchReadout:
        readout = PatchReadout(self.encoder.dim, cfg.readout_classes)
        if cfg.readout_weights:
            if not Path(cfg.readout_weights).is_file():
                raise ConfigError(
                    f"readout_weights={cfg.readout_weights!r}: no such file. `lavit train encoder` writes it "
                    "beside vit.safetensors as readout.safetensors; or set semantic_loss_weight=0"
                )
            load_weights(readout, cfg.readout_weights)
        return readout.requires_grad_(False)

    @property
    def codebook_size(self) -> int:
        return self.cfg.quantizer.codebook_size

    @property
    def code_dim(self) -> int:
        """Width of :meth:`code_embeddings`: the merger width, or codebook_dim with LaVIT's projection."""
        return self.cfg.quantizer.codebook_dim if self.cfg.code_projection == "lavit" else self.cfg.width

    def _require_decoder(self) -> FeatureDecoder:
        if self.decoder is None:
            raise ValueError(
                "this tokenizer has no feature decoder (decoder_depth=0, e.g. a converted LaVIT "
                "tokenizer): it encodes only; train one with decoder_depth > 0"
            )
        return self.decoder

    # ----------------------------------------------------------------------------------------
    # Shared steps
    # ----------------------------------------------------------------------------------------

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a clear error for input the tokenizer cannot take."""
        size = self.cfg.encoder.image_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a (B, 3, {size}, {size}) float tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(
                f"images must be a non-empty (B, 3, {size}, {size}) batch, got shape {tuple(images.shape)}"
            )
        if images.shape[1] != 3:
            raise ValueError(
                f"images must have 3 (RGB) channels, got {images.shape[1]}; convert with "
                "lavit.data.image_io.to_rgb before lavit.data.transforms.to_tensor"
            )
        if tuple(images.shape[2:]) != (size, size):
            raise ValueError(
                f"images must be {size}x{size} for this tokenizer, got {tuple(images.shape[2:])}; "
                "resize with lavit.data.transforms.to_tensor(image, size)"
            )
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite pixels")

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Set the target statistics from a batch of images (frozen encoder: once, before
        training). Deterministic given the images, so every DDP rank computes the same."""
        self.check_images(images)
        feats = self.encoder(images).flatten(0, 1).float()  # (B*N, Ce)
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp_min(1e-6))

    @torch.no_grad()
    def calibrate_keep(self, images: torch.Tensor) -> float:
        """Set the inference keep threshold so that, over these (training) images, the expected
        kept fraction equals ``selector.target_keep``; returns the threshold.

        Gumbel-softmax training holds the *sampled* fraction at the target, which LaVIT's
        selector reaches with p(keep) near 0.5 for most patches, so the plain rule p > 0.5 can
        keep almost everything (measured: 97.7% on the tiny preset). Thresholding the margin at
        its (1 - target) quantile keeps the most confident patches, deterministically, and the
        count still varies from image to image.
        """
        self.check_images(images)
        margin = self._margin(self.selector(self._project(self.encoder(images))))
        q = torch.quantile(margin.flatten().float(), 1.0 - self.cfg.selector.target_keep)
        self.keep_threshold.fill_(float(q))
        return float(q)

    @staticmethod
    def _margin(logits: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) [keep, drop] logits -> (B, N) keep - drop (= logit of p(keep))."""
        return (logits[..., 0] - logits[..., 1]).float()

    def _infer_keep(
        self, logits: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        margin = self._margin(logits)  # (B, N)
        # "sample": keep ~ Bernoulli(p(keep)), the distribution of LaVIT's two-class hard
        # Gumbel-softmax (unlike LaVIT, an image keeps at least one patch).
        sample = sample or self.cfg.selector.inference == "sample"
        if self.cfg.selector.inference == "topk" and not sample:
            k = max(1, round(self.cfg.selector.target_keep * margin.shape[1]))
            keep = torch.zeros_like(margin, dtype=torch.bool)
            return keep.scatter(1, margin.topk(k, dim=1).indices, True)
        return infer_keep(margin - self.keep_threshold, generator, sample)

    def standardise(self, feats: torch.Tensor) -> torch.Tensor:
        """Encoder features -> the reconstruction target space."""
        return (feats.float() - self.feat_mean) / self.feat_std

    def _project(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(feats)
        return h if self.patch_pos is None else h + self.patch_pos.to(h.dtype)

    def _merged(self, images: torch.Tensor, keep_fn, merger: nn.Module | None = None):
        """Encoder -> selector -> ``merger`` (default: the codes' merger). Returns (target feats
        (B,N,Ce), keep (B,N) float, merged (B,L,W), mask (B,L))."""
        target = self.encoder(images)
        h = self._project(target)
        logits = self.selector(h)
        keep = keep_fn(logits)
        merged = (merger or self.merger)(h, keep)
        merged, mask = compact(merged, keep.detach() > 0.5)
        return target, keep, merged, mask

    def _quantize(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, W) -> (quantized (B, L, W), indices (B, L), commitment loss); codebook in fp32."""
        z = F.normalize(self.to_code(x).float(), dim=-1)  # (B, L, d) on the unit sphere
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, indices, loss = self.quantizer(z, mask=mask)
        return self.from_code(q.to(x.dtype)), indices, loss

    def _continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Phase-one bottleneck: the unit vector the cosine codebook will later quantize."""
        return self.from_code(F.normalize(self.to_code(x), dim=-1))

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, *, quantize: bool) -> TokenizerOutput:
        """Training step: reconstruction + keep-ratio (+ VQ, + pixel) losses and logs."""
        self.check_images(images)
        decoder = self._require_decoder()
        sel = self.cfg.selector
        keep_fn = (
            (lambda lg: sample_keep(lg, sel.tau, sel.gumbel_noise))
            if self.training
            else (lambda lg: self._infer_keep(lg).to(lg.dtype))
        )
        seen: dict[str, torch.Tensor] = {}

        def keep_and_remember(logits: torch.Tensor) -> torch.Tensor:
            seen["logits"] = logits
            return keep_fn(logits)

        target, keep, merged, mask = self._merged(images, keep_and_remember)
        logs: dict[str, torch.Tensor] = {}
        codes = None
        if quantize:
            z, indices, vq_loss = self._quantize(merged, mask)
            codes = indices.masked_fill(~mask, -1)
            logs.update(code_stats(indices[mask], self.codebook_size))
            vq_loss = vq_loss.sum()
        else:
            z, vq_loss = self._continuous(merged), merged.new_zeros(())
        pred, pixels = decoder(z.to(merged.dtype), mask)
        cos = F.cosine_similarity(pred.float(), self.standardise(target).detach(), dim=-1).mean()
        keep_frac = keep.mean(dim=1)  # (B,) straight-through
        keep_loss = ((keep_frac - sel.target_keep) ** 2).mean()
        loss = (1 - cos) + sel.keep_loss_weight * keep_loss + vq_loss
        if sel.saliency_weight > 0:
            sal_loss = self.selector_saliency_loss(seen["logits"], images)
            loss = loss + sel.saliency_weight * sal_loss
            logs["selector_saliency_loss"] = sal_loss.detach()
        if self.readout is not None:
            sem_loss, agree = self.semantic_loss(pred, target)
            loss = loss + self.cfg.semantic_loss_weight * sem_loss
            logs.update(semantic_kl=sem_loss.detach(), semantic_agree=agree)
        if pixels is not None:
            pix_loss = self.pixel_loss(pixels.float(), images)
            loss = loss + self.cfg.pixel_loss_weight * pix_loss
            logs["pixel_mse"] = pix_loss.detach()
        logs.update(
            recon_cos=cos.detach(),
            keep_frac=keep_frac.mean().detach(),
            keep_loss=keep_loss.detach(),
            vq_loss=vq_loss.detach(),
        )
        return TokenizerOutput(loss=loss, logs=logs, codes=codes, keep=keep.detach() > 0.5)

    def semantic_loss(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL from the frozen read-out's labels of the encoder features ``target`` (B, N, Ce) to
        its labels of the rebuilt, standardised ``pred``, summed over classes, averaged over
        patches and heads; and (detached) the share of patch labels whose argmax agrees."""
        with torch.no_grad():
            wanted = [lg.float().log_softmax(-1) for lg in self.readout(target.float())]
        got = [lg.float().log_softmax(-1) for lg in self.readout(pred.float() * self.feat_std + self.feat_mean)]
        kl = torch.stack(
            [F.kl_div(g, w, log_target=True, reduction="none").sum(-1).mean() for g, w in zip(got, wanted, strict=True)]
        ).mean()
        agree = torch.stack([(g.argmax(-1) == w.argmax(-1)).float().mean() for g, w in zip(got, wanted, strict=True)])
        return kl, agree.mean().detach()

    def patch_saliency(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N): each patch's mean :func:`pixel_saliency`."""
        return patchify(pixel_saliency(images), self.cfg.encoder.patch_size).mean(dim=-1)

    def selector_saliency_loss(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the [keep, drop] logits against keeping the most salient
        round(target_keep * N) patches of each image."""
        sal = self.patch_saliency(images)
        k = max(1, round(self.cfg.selector.target_keep * sal.shape[1]))
        keep = torch.zeros_like(sal, dtype=torch.long).scatter(1, sal.topk(k, dim=1).indices, 1)
        return F.cross_entropy(logits.float().flatten(0, 1), (1 - keep).flatten())  # class 0 = keep

    def pixel_loss(self, pixels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """MSE of the pixel head's (B, N, 3 p^2) patches, weighted by saliency when configured."""
        target = patchify(images, self.cfg.encoder.patch_size)
        if self.cfg.pixel_saliency <= 0:
            return F.mse_loss(pixels, target)
        sal = pixel_saliency(images).expand_as(images)  # the same weight for each channel of a pixel
        weight = 1 + self.cfg.pixel_saliency * patchify(sal, self.cfg.encoder.patch_size)
        return (weight * (pixels - target) ** 2).sum() / weight.sum()

    # ----------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> B LongTensors of codes (variable length, raster order).

        Deterministic unless ``sample`` or ``selector.inference="sample"`` (then the keep mask is
        drawn, as LaVIT does).
        """
        self.check_images(images)
        _, _, merged, mask = self._merged(images, lambda lg: self._infer_keep(lg, generator, sample).to(lg.dtype))
        return self._codes(merged, mask)

    @torch.no_grad()
    def encode_with_keep(self, images: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`encode` with the keep mask given: (B, 3, H, W), (B, N) bool -> B code tensors.

        For comparisons with a reference that drew its own mask (LaVIT samples one per call)."""
        self.check_images(images)
        _, _, merged, mask = self._merged(images, self._given_keep(keep))
        return self._codes(merged, mask)

    @torch.no_grad()
    def encode_features_with_keep(self, images: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`encode_features` with the keep mask given: (B, N) bool -> B (N_i, W) tensors."""
        self.check_images(images)
        _, _, merged, mask = self._merged(images, self._given_keep(keep), self.understanding_merger)
        return [row[m] for row, m in zip(merged, mask, strict=True)]

    def _given_keep(self, keep: torch.Tensor):
        n = self.cfg.encoder.num_patches
        if keep.dtype != torch.bool or keep.ndim != 2 or keep.shape[1] != n:
            raise ValueError(f"keep must be a (B, {n}) bool mask, got {keep.dtype} {tuple(keep.shape)}")
        if not keep.any(dim=1).all():
            raise ValueError("keep must keep at least one patch of every image")

        def keep_fn(logits: torch.Tensor) -> torch.Tensor:
            if keep.shape[0] != logits.shape[0]:
                raise ValueError(f"keep has {keep.shape[0]} rows for {logits.shape[0]} images")
            return keep.to(device=logits.device, dtype=logits.dtype)

        return keep_fn

    def _codes(self, merged: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        _, indices, _ = self._quantize_eval(merged, mask)
        return [row[m] for row, m in zip(indices, mask, strict=True)]

    @torch.no_grad()
    def encode_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> B tensors (N_i, W): the continuous merger outputs of the kept patches
        (LaVIT's input to the LLM for understanding), from the understanding merger if the
        tokenizer has one (``understanding_merger``). A sampled keep mask is drawn anew."""
        self.check_images(images)
        _, _, merged, mask = self._merged(
            images, lambda lg: self._infer_keep(lg).to(lg.dtype), self.understanding_merger
        )
        return [row[m] for row, m in zip(merged, mask, strict=True)]

    def _quantize_eval(self, x, mask):
        # VectorQuantize runs its k-means init on the first forward even in eval mode; inference
        # must never change the codebook, so an uninitialised one is an error.
        if not bool(self.quantizer._codebook.initted):
            raise RuntimeError(
                "this tokenizer's codebook was never initialised (k-means runs on the first quantized "
                "training batch): train past vq_start_step, load a trained tokenizer, or build it "
                "with quantizer.kmeans_init=false"
            )
        was = self.quantizer.training
        self.quantizer.eval()  # never update the codebook while encoding
        try:
            return self._quantize(x, mask)
        finally:
            self.quantizer.train(was)

    def pad_codes(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """B variable-length code tensors -> ((B, L) left-aligned, 0-padded, (B, L) bool mask).

        One read from the device per call (the range check), however many sequences: a check per
        sequence stalled a GPU training step on 2B round trips to the host."""
        if len(codes) == 0:
            raise ValueError("need at least one code sequence")
        for i, c in enumerate(codes):
            if c.ndim != 1 or c.numel() == 0:
                raise ValueError(f"code sequence {i} must be a non-empty 1-D LongTensor, got shape {tuple(c.shape)}")
        device = self.quantizer.codebook.device
        codes = [c.to(device) for c in codes]
        lo, hi = torch.stack(torch.aminmax(torch.cat(codes))).tolist()
        if lo < 0 or hi >= self.codebook_size:
            i = next(i for i, c in enumerate(codes) if c.min() < 0 or c.max() >= self.codebook_size)
            raise ValueError(
                f"code sequence {i} has codes outside [0, {self.codebook_size}): "
                f"min {int(codes[i].min())}, max {int(codes[i].max())}"
            )
        padded = pad_sequence(codes, batch_first=True).long()
        mask = pad_sequence([torch.ones_like(c, dtype=torch.bool) for c in codes], batch_first=True)
        return padded, mask

    def check_reader(self, width: int, reader: str, stage: str) -> None:
        """Raise unless a detokenizer reading ``width``-wide code embeddings fits this tokenizer."""
        if width != self.code_dim:
            raise ValueError(
                f"the {reader} reads {width}-wide code embeddings but this tokenizer's are {self.code_dim}: "
                f"they were not trained together; load the {reader} trained on this tokenizer's codes "
                f"(lavit train {stage} with its tokenizer_dir)"
            )

    def code_embeddings(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebook vectors for the detokenizers: B code tensors -> ((B, L, W), (B, L) bool)."""
        padded, mask = self.pad_codes(codes)
        emb = self.from_code(self.quantizer.get_output_from_indices(padded))  # (B, L, W)
        return emb * mask.unsqueeze(-1), mask

    @torch.no_grad()
    def decode_pixels(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """The pixel head's image from codes alone: B code tensors -> (B, 3, S, S) in [0, 1]
        (tokenizers trained with ``pixel_loss_weight > 0`` only)."""
        emb, mask = self.code_embeddings(codes)
        _, pixels = self._require_decoder()(emb, mask)
        if pixels is None:
            raise ValueError("this tokenizer has no pixel head (it was trained with pixel_loss_weight=0)")
        enc = self.cfg.encoder
        return unpatchify(pixels.float(), enc.patch_size, enc.image_size).clamp(0, 1)

    @torch.no_grad()
    def decode_features(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Rebuild the (standardised) encoder features from codes: B code tensors -> (B, N, Ce)."""
        emb, mask = self.code_embeddings(codes)
        return self._require_decoder()(emb, mask)[0]


def code_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Usage (fraction of codes hit) and perplexity of a flat tensor of code indices."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * p.clamp_min(1e-12).log()).sum())
    return {"code_usage": (counts > 0).float().mean(), "perplexity": perplexity}


def pixel_saliency(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W): |pixel - the image's median colour|, max over RGB. On a
    mostly-background image the median is the background, so this marks the objects."""
    background = images.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
    return (images - background).abs().amax(dim=1, keepdim=True)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, 3 * patch * patch) in raster order of patches."""
    b, c, h, w = images.shape
    x = images.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(patches: torch.Tensor, patch: int, side: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images: (B, N, 3 * patch * patch) -> (B, 3, side, side)."""
    b, g = patches.shape[0], side // patch
    x = patches.reshape(b, g, g, 3, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, side, side)
