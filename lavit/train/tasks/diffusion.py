"""Stage 3a: the diffusion detokenizer on codes from a frozen tokenizer (``lavit train diffusion``).

Each item is a training sample's codes (cached once, lavit/train/codes_cache.py, for any source
of ``data.train``) and its image at the detokenizer's resolution. Evaluation reconstructs
``data.val`` items from their codes: PSNR for any source, and on ShapesWorld its parser's
judgement of the scenes. The loss is
the MSE of the UNet's epsilon, v or x0 ("sample") prediction at a uniformly drawn DDPM timestep;
the condition is replaced by the learned null one with
probability ``cond_drop_prob`` (CFG).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detokenizer.diffusion import (
    DiffusionDetokenizer,
    DiffusionRunConfig,
    decode_codes,
    load_detokenizer,
    save_detokenizer,
)
from detokenizer.diffusion.sampling import (
    condition_inputs,
    noise_scheduler,
    patch_inputs,
    training_target,
)
from lavit.checkpoint import CheckpointError, state_mismatch
from lavit.config import ConfigError
from lavit.data.annotations import has_scene, judge_images
from lavit.data.transforms import to_pil, to_tensor
from lavit.generate import seeded_generators
from lavit.metrics.image import psnr
from lavit.train.codes_cache import CodesDataset, CodesMixture, codes_dataset, pack_codes, unpack_codes
from lavit.viz import image_grid
from tokenizer import load_tokenizer


class DiffusionTask:
    name = "diffusion"

    def __init__(self, cfg: DiffusionRunConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        for key, want, have in (
            ("model.code_dim", cfg.model.code_dim, self.tokenizer.code_dim),
            ("model.max_codes", cfg.model.max_codes, self.tokenizer.cfg.encoder.num_patches),
            (
                "model.patch_features",
                cfg.model.patch_features,
                self.tokenizer.encoder.dim if cfg.model.patch_features else 0,
            ),
        ):
            if want != have:
                raise ConfigError(
                    f"{key}={want} but the tokenizer at {cfg.tokenizer_dir} needs {have}; set {key}={have}"
                )
        self.codes = stage_codes(self, "train", cfg.num_scenes, cfg.model.resolution)
        self.noise = noise_scheduler(cfg.model)
        self.block_types: tuple[type[nn.Module], ...] = ()

    def build_model(self) -> nn.Module:
        model = DiffusionDetokenizer(self.cfg.model)
        if self.cfg.init_from:
            init_denoiser(model, self.cfg.init_from)
        return model

    def train_dataset(self) -> Dataset:
        return CodeImages(self.codes, self.cfg.model.resolution)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        return collate_scene_codes(items)

    def training_step(self, model: nn.Module, batch: dict, step: int):
        images = batch["images"]
        device = images.device
        plain: DiffusionDetokenizer = getattr(model, "module", model)
        self.tokenizer.to(device)
        with torch.no_grad():
            codes = batch_codes(batch)
            emb, mask = condition_inputs(self.cfg.model, self.tokenizer, codes)
            patches = patch_inputs(self.cfg.model, self.tokenizer, codes)
            x0 = plain.to_space(images)
        b = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (b,), device=device)
        noisy = self.noise.add_noise(x0, noise, t)
        target = training_target(self.noise, x0, noise, t)
        drop = torch.rand(b, device=device) < self.cfg.cond_drop_prob
        pred = model(noisy, t, emb, mask, drop, patches)
        loss = (pred.float() - target.float()).pow(2).flatten(1).mean(1).mean()
        return loss, {"loss": loss.detach(), "cond_dropped": drop.float().mean()}

    @torch.no_grad()
    def evaluate(self, model: DiffusionDetokenizer, step: int, batch_size: int = 50) -> dict[str, float]:
        """Reconstruct held-out (``data.val``) items from their codes: PSNR, and on ShapesWorld
        the share whose colours and kinds the parser finds again (and whose full scene it
        recovers)."""
        cfg = self.cfg
        if not cfg.data.val:
            return {}
        device = next(model.parameters()).device
        self.tokenizer.to(device)
        res = cfg.model.resolution
        size = (res, res)

        def decode(codes: list[torch.Tensor], start: int) -> torch.Tensor:
            gens = seeded_generators(len(codes), start, device)  # item i is seeded i
            return decode_codes(model, self.tokenizer, codes, cfg.sampling, size=size, generator=gens).cpu()

        metrics, pairs = evaluate_reconstructions(
            stage_codes(self, "val", cfg.eval_scenes, res), res, decode, batch_size
        )
        grid = image_grid([to_pil(x) for pair in pairs for x in pair], columns=4)
        grid.save(self.out / f"recon_step{step}.png")
        return metrics

    def save(self, model: DiffusionDetokenizer, directory: Path) -> None:
        save_detokenizer(model, directory)


def init_denoiser(model: DiffusionDetokenizer, directory: str | Path) -> None:
    """Load a trained detokenizer's weights into ``model``, all but its frozen VAE (``model``
    keeps its own). Both must have the same conditioner and UNet.

    Raises:
        ConfigError: the directory does not load, or its denoiser differs from ``model``'s.
    """
    try:
        source = load_detokenizer(directory).state_dict()
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        raise ConfigError(
            f"init_from={str(directory)!r}: not a loadable diffusion detokenizer ({e}); pass the model/ "
            "folder of a `lavit train diffusion` run (or a pipeline's diffusion/ folder)"
        ) from e
    own = {k: v for k, v in source.items() if not k.startswith("vae.")}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}
    # A codes-only decoder may grow a patch-feature reader, which starts as a no-op (zero output).
    bad = state_mismatch(own, target, grown=("patch_in.",))
    if bad:
        raise ConfigError(
            f"init_from={str(directory)!r}: its denoiser differs from model's ({len(bad)} tensors, e.g. "
            f"{bad[:3]}); give model the same conditioner, unet and spatial_channels as {directory}/config.yaml"
        )
    # Strict: every tensor is the source's denoiser, this model's own VAE or its new patch reader.
    model.load_state_dict({**model.state_dict(), **own}, strict=True)


def stage_codes(task, split: str, limit: int | None, image_size: int) -> CodesDataset | CodesMixture:
    """The cached codes of ``data.<split>`` for a detokenizer stage (``task`` has ``cfg``, ``out``,
    ``tokenizer``): a stream's images are stored at ``image_size``, the stage's target side."""
    cfg = task.cfg
    root = cfg.codes_cache or task.out / "codes"
    return codes_dataset(task.tokenizer, cfg.tokenizer_dir, cfg.data, split, root, limit=limit, image_size=image_size)


@torch.no_grad()
def evaluate_reconstructions(records, resolution: int, decode, batch_size: int = 50):
    """Decode every record of ``records`` with ``decode(codes, start) -> (B, 3, R, R)`` and score
    it against the record's image: ``({"recon_psnr", and on ShapesWorld "recon_scene_kept",
    "recon_scene_recovered"}, the first 8 (original, reconstruction) pairs)``."""
    n = len(records)
    kept = recovered = judged = 0
    scores: list[float] = []
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        out = decode([records.codes(i) for i in idx], start)
        truth = torch.stack([to_tensor(records.image(i), resolution) for i in idx])
        scores += psnr(out, truth)
        metas = [records[i].meta for i in idx]
        if all(has_scene(m) for m in metas):
            k, r = judge_images(metas, out)
            kept, recovered, judged = kept + k, recovered + r, judged + len(metas)
        pairs += list(zip(truth, out, strict=True))[: 8 - len(pairs)]
    metrics = {"recon_psnr": sum(scores) / len(scores)}
    if judged:
        metrics.update(recon_scene_kept=kept / judged, recon_scene_recovered=recovered / judged)
    return metrics, pairs


class CodeImages(Dataset):
    """(codes, image at ``resolution``) of record ``i``."""

    def __init__(self, records: CodesDataset | CodesMixture, resolution: int) -> None:
        self.records, self.resolution = records, resolution

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.records.codes(i), to_tensor(self.records.image(i), self.resolution)


def collate_scene_codes(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """One batch of :class:`CodeImages` items as tensors, whatever the batch size: the
    variable-length code sequences concatenated (:func:`lavit.train.codes_cache.pack_codes`), the
    stacked images; the sequences' lengths travel as a list of ints, so that
    splitting them again (:func:`batch_codes`) reads nothing back from the GPU.

    A DataLoader worker hands the main process each tensor of a batch through its own file
    descriptor, held while the batch waits in the prefetch queue. A list of B code tensors kept
    up to num_workers x prefetch_factor x B of them open: batch 128 with 5 workers went past the
    usual limit of 1,024 ("Too many open files") while the main process evaluated.
    """
    packed = pack_codes([item[0] for item in items])
    batch = {
        "codes": packed["flat"],
        "code_lengths": packed["lengths"].tolist(),
        "images": torch.stack([item[1] for item in items]),
    }
    return batch


def batch_codes(batch: dict) -> list[torch.Tensor]:
    """The per-scene code sequences of a :func:`collate_scene_codes` batch."""
    return unpack_codes(batch["codes"], batch["code_lengths"])
