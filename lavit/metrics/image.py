"""Image metrics: PSNR, FID (through torchmetrics) and CLIP score (with a local CLIP).

FID compares the Gaussian fitted to a feature extractor's outputs on real images with the one
fitted on generated images (Heusel et al. 2017):

    FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))

The standard features are InceptionV3 pool3 (2048-d) with the 2015-12-05 TensorFlow weights
ported to PyTorch; torchmetrics' ``FrechetInceptionDistance`` computes them through
``torch-fidelity``. Nothing here downloads: the Inception weights come from a local file
(``weights_path``), and tests pass a tiny ``feature_extractor`` instead.

torch-fidelity unpickles its weights file with ``weights_only=False``, which runs whatever code
a crafted pickle holds, so it never sees the user's file: that file must be a regular file whose
sha256 starts with the ``6726825d`` of its official name (torch.hub's convention), is loaded here
with ``weights_only=True`` (tensors only, no code), and the tensors reach torch-fidelity through a
copy written by ``torch.save`` into a private temporary folder.

CLIP score is ``100 * max(cos(E_image, E_text), 0)`` averaged over (image, prompt) pairs
(Radford et al. 2021 embeddings, as used for text-to-image evaluation), with ``CLIPModel`` and
``CLIPProcessor`` loaded from a local ``save_pretrained`` folder. torchmetrics' ``CLIPScore``
is not used: in torchmetrics 1.9 it only accepts hub names containing "openai" (or a callable),
and it treats ``get_image_features``' output as a tensor, which transformers 5 no longer returns.

The CLIP folder is loaded with ``trust_remote_code=False`` and ``use_safetensors=True``: a folder
holding only pickle weights (``pytorch_model.bin``) is refused.

Importing this module pulls in only torch: torchmetrics, transformers and torch-fidelity are
imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import os
import pickle
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from torchmetrics.image.fid import FrechetInceptionDistance

# Keys of lavit.evaluation.config.EvalConfig (``metrics:`` section) named in the errors below.
FID_WEIGHTS_KEY = "metrics.fid_weights"
CLIP_DIR_KEY = "metrics.clip_model"

# The TF InceptionV3 (2015-12-05) ported to PyTorch, as a state dict: pytorch-fid publishes it as
# pt_inception-2015-12-05-6726825d.pth and torch-fidelity as weights-inception-2015-12-05-6726825d.pth
# (the same 6726825d hash); torch-fidelity's extractor loads either with torch.load.
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
INCEPTION_FEATURE_DIMS = (64, 192, 768, 2048)
# The official file's sha256 starts with the 8 hex digits in its name (torch.hub's convention).
INCEPTION_SHA256_PREFIX = "6726825d"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def psnr(images: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per-image PSNR (dB) of ``images`` against ``targets``, both (B, 3, H, W) in [0, 1]."""
    mse = ((images.float().cpu() - targets.float().cpu()) ** 2).flatten(1).mean(1)
    return [10 * math.log10(1 / max(float(e), 1e-12)) for e in mse]


class MetricFileError(ValueError):
    """A metric's local file that is not what it must be (FID weights, CLIP folder); the message
    (one line) names it and the fix."""


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


def fid_metric(
    weights_path: str | Path | None = None,
    feature_extractor: nn.Module | None = None,
    feature_dim: int = 2048,
) -> FrechetInceptionDistance:
    """Build a torchmetrics ``FrechetInceptionDistance`` that never downloads.

    Exactly one of ``weights_path`` (standard InceptionV3 features) or ``feature_extractor``
    (any other features) must be given. Either way the metric is built with ``normalize=True``,
    so it takes float images in [0, 1]: torchmetrics turns them into uint8 (``(x * 255).byte()``)
    for Inception, and passes them unchanged to a custom extractor.

    Args:
        weights_path: local copy of the FID Inception state dict (``pt_inception-2015-12-05-6726825d.pth``
            from pytorch-fid, or torch-fidelity's identical ``weights-inception-2015-12-05-6726825d.pth``).
            Needs ``pip install torch-fidelity``, whose InceptionV3 torchmetrics runs.
        feature_extractor: a module mapping float images ``(N, 3, H, W)`` in [0, 1] to features
            ``(N, D)``. Put in eval mode here. If it has no ``num_features`` attribute,
            torchmetrics probes ``D`` once with a random ``(1, 3, 299, 299)`` image.
        feature_dim: Inception layer to use (64, 192, 768 or 2048; 2048 is the standard FID).
            Ignored with ``feature_extractor``.

    Returns:
        A fresh metric: ``update(imgs, real=...)``, ``compute()``, ``reset()``; see :func:`compute_fid`.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature_extractor is not None:
        if weights_path is not None:
            raise ValueError("fid_metric: give either weights_path (Inception features) or feature_extractor, not both")
        return FrechetInceptionDistance(feature=feature_extractor.eval(), normalize=True)

    if weights_path is None:
        raise ValueError(
            "FID needs the InceptionV3 FID weights as a local file, and nothing is downloaded here. "
            f"Download {INCEPTION_WEIGHTS_FILE} once yourself (from {INCEPTION_WEIGHTS_URLS[0]}, or torch-fidelity's "
            f"identical copy at {INCEPTION_WEIGHTS_URLS[1]}), put it on this machine and set "
            f"{FID_WEIGHTS_KEY}=/path/to/{INCEPTION_WEIGHTS_FILE}."
        )
    path = Path(weights_path)
    if not path.exists():
        raise FileNotFoundError(
            f"FID Inception weights not found: {path}. Set {FID_WEIGHTS_KEY} to a local copy of {INCEPTION_WEIGHTS_FILE} "
            f"(downloaded from {INCEPTION_WEIGHTS_URLS[0]})."
        )
    if feature_dim not in INCEPTION_FEATURE_DIMS:
        raise ValueError(f"fid_metric: feature_dim must be one of {INCEPTION_FEATURE_DIMS}, got {feature_dim}")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ModuleNotFoundError(
            "FID with Inception features needs the 'torch-fidelity' package (torchmetrics runs its InceptionV3): "
            "pip install torch-fidelity"
        )
    state = load_inception_state_dict(_fid_weights_bytes(path), path)
    # torch-fidelity reads its weights with torch.load(weights_only=False): it gets a copy holding
    # nothing but the tensors just loaded, in a folder only this user can write.
    with tempfile.TemporaryDirectory(prefix="lavit-fid-") as tmp:
        safe = Path(tmp) / INCEPTION_WEIGHTS_FILE
        torch.save(state, safe)
        try:
            return FrechetInceptionDistance(
                feature=feature_dim, normalize=True, feature_extractor_weights_path=str(safe)
            )
        except (RuntimeError, pickle.UnpicklingError) as e:
            raise MetricFileError(
                f"{path} is not the FID InceptionV3 state dict ({INCEPTION_WEIGHTS_FILE}): {_first_line(e)}"
            ) from None


def check_fid_weights(weights_path: str | Path) -> Path:
    """Check that ``weights_path`` is the FID Inception weights file, without unpickling it.

    Raises:
        FileNotFoundError: no such file.
        MetricFileError: not a regular file, or its sha256 does not start with ``6726825d``.
    """
    path = Path(weights_path)
    _fid_weights_bytes(path)
    return path


def _fid_weights_bytes(path: Path) -> bytes:
    """The file's bytes, read once, so the bytes checked are the bytes loaded."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"FID Inception weights not found: {path}. Set {FID_WEIGHTS_KEY} to a local copy of {INCEPTION_WEIGHTS_FILE} "
            f"(downloaded from {INCEPTION_WEIGHTS_URLS[0]})."
        ) from None
    except OSError as e:
        raise MetricFileError(f"{FID_WEIGHTS_KEY}={path}: cannot read it ({e}); make it readable") from None
    if not stat.S_ISREG(mode):
        raise MetricFileError(
            f"{FID_WEIGHTS_KEY}={path} is not a regular file (a folder, FIFO or device); "
            f"give the {INCEPTION_WEIGHTS_FILE} file"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise MetricFileError(
            f"{path} is not the FID InceptionV3 state dict ({INCEPTION_WEIGHTS_FILE}): its sha256 starts with "
            f"{digest[:8]}, not {INCEPTION_SHA256_PREFIX}; set {FID_WEIGHTS_KEY} to an unmodified download "
            f"from {INCEPTION_WEIGHTS_URLS[0]}"
        )
    return data


def load_inception_state_dict(data: bytes, path: str | Path) -> dict[str, Tensor]:
    """Unpickle a state dict with ``weights_only=True``: tensors and plain containers only, so a
    pickle that would run code is refused before any of it runs.

    Args:
        data: the file's bytes.
        path: the file, for the messages.

    Raises:
        MetricFileError: not a plain ``{name: tensor}`` pickle.
    """
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for code, RuntimeError for a non-torch file
        raise MetricFileError(
            f"{path}: refused, not a plain tensor state dict (torch.load with weights_only=True: "
            f"{_first_line(e)}); set {FID_WEIGHTS_KEY} to an unmodified {INCEPTION_WEIGHTS_FILE}"
        ) from None
    if not (isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values())):
        raise MetricFileError(
            f"{path} holds a {type(state).__name__}, not a {{name: tensor}} state dict; "
            f"set {FID_WEIGHTS_KEY} to an unmodified {INCEPTION_WEIGHTS_FILE}"
        )
    return state


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).strip().splitlines()[:1]) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def compute_fid(real: Iterable[Tensor], fake: Iterable[Tensor], metric: FrechetInceptionDistance) -> float:
    """FID between two streams of image batches.

    The metric is reset first, so one metric object can serve several evaluations. Features
    are accumulated batch by batch (sums and outer products in float64), so the image sets never
    need to fit in memory at once.

    Args:
        real: batches ``(B, 3, H, W)`` of float images in [0, 1] (values outside are clamped).
        fake: batches of the same form; sizes may differ from ``real``.
        metric: from :func:`fid_metric` (built with ``normalize=True``); its device is used.

    Returns:
        The Fréchet distance (0 for identical feature distributions).
    """
    if not metric.normalize:
        raise ValueError("compute_fid feeds float images in [0, 1]: build the metric with fid_metric (normalize=True)")
    metric.reset()
    for is_real, batches in ((True, real), (False, fake)):
        for imgs_B3HW in batches:
            metric.update(_as_unit_float(imgs_B3HW, "compute_fid").to(metric.device), real=is_real)
    n_real, n_fake = int(metric.real_features_num_samples), int(metric.fake_features_num_samples)
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID needs at least 2 real and 2 fake images, got {n_real} real and {n_fake} fake")
    return float(metric.compute())


def _as_unit_float(imgs_B3HW: Tensor, who: str) -> Tensor:
    """Check a (B, 3, H, W) float image batch and clamp it to [0, 1]."""
    if imgs_B3HW.ndim != 4 or imgs_B3HW.shape[1] != 3:
        raise ValueError(f"{who}: expected images of shape (B, 3, H, W), got {tuple(imgs_B3HW.shape)}")
    if not imgs_B3HW.is_floating_point():
        raise ValueError(f"{who}: expected float images in [0, 1], got dtype {imgs_B3HW.dtype}")
    return imgs_B3HW.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------


def _pooled(out: Any) -> Tensor:
    """The projected embedding from ``get_{image,text}_features``.

    transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` is the
    projected embedding; transformers 4 returned the tensor itself.
    """
    return out if isinstance(out, Tensor) else out.pooler_output


def _clip_image_inputs(images: Tensor | Sequence[PILImage]) -> list[Any]:
    """Images as the CLIP processor takes them: uint8 ``(3, H, W)`` tensors or RGB PIL images.

    Float tensors become uint8 like a saved image, so the processor's default rescale (1/255)
    applies to both kinds of input alike.
    """
    if isinstance(images, Tensor):
        images_u8 = (_as_unit_float(images, "ClipScorer") * 255).round().to(torch.uint8).cpu()
        return list(images_u8)
    if not all(hasattr(im, "convert") for im in images):
        raise TypeError("ClipScorer: images must be a (B, 3, H, W) float tensor in [0, 1] or a list of PIL images")
    return [im.convert("RGB") for im in images]


class ClipScorer:
    """CLIP score with a local CLIP, loaded once and fed batch by batch.

    Score of a pair = ``100 * max(cos(E_image, E_text), 0)``; :meth:`compute` averages over all
    pairs seen since the last :meth:`reset`. (torchmetrics' ``CLIPScore`` clamps the mean instead
    of each pair; the two agree whenever no pair has a negative cosine.)

    Args:
        model_dir: folder written by ``CLIPModel.save_pretrained`` and ``CLIPProcessor.save_pretrained``
            (e.g. a local copy of openai/clip-vit-large-patch14).
        device: where the model runs.
        batch_size: pairs per forward pass inside :meth:`update`.
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        from transformers import CLIPModel, CLIPProcessor

        model_dir = check_clip_dir(model_dir)
        if batch_size < 1:
            raise ValueError(f"ClipScorer: batch_size must be at least 1, got {batch_size}")
        # No code from the folder (trust_remote_code=False), no pickle (use_safetensors=True).
        safe = {"local_files_only": True, "trust_remote_code": False}
        try:
            self.model = CLIPModel.from_pretrained(model_dir, use_safetensors=True, **safe)
            self.processor = CLIPProcessor.from_pretrained(model_dir, **safe)
        except OSError as e:
            raise FileNotFoundError(
                f"{model_dir} is not a saved CLIP model: it needs config.json and the weights (CLIPModel.save_pretrained) "
                f"plus the tokenizer and image-processor files (CLIPProcessor.save_pretrained). ({_first_line(e)})"
            ) from None
        except ValueError as e:  # a malformed config or processor file
            raise MetricFileError(f"{model_dir} is not a loadable CLIP model ({_first_line(e)})") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.max_text_len = int(self.model.config.text_config.max_position_embeddings)  # 77 for OpenAI CLIP
        self.reset()

    def reset(self) -> None:
        """Forget all pairs scored so far."""
        self._sum = 0.0
        self._count = 0

    @torch.inference_mode()
    def score(self, images: Tensor | Sequence[PILImage], prompts: Sequence[str]) -> Tensor:
        """Per-pair CLIP scores, without accumulating them.

        Args:
            images: ``(B, 3, H, W)`` float images in [0, 1], or ``B`` PIL images; any size (the
                processor resizes and centre-crops).
            prompts: ``B`` strings; prompts longer than the text model's context are truncated.

        Returns:
            ``(B,)`` float32 scores in [0, 100], on the CPU.
        """
        inputs = _clip_image_inputs(images)
        prompts = list(prompts)
        if len(prompts) != len(inputs):
            raise ValueError(f"ClipScorer: got {len(inputs)} images but {len(prompts)} prompts")
        scores = []
        for i in range(0, len(prompts), self.batch_size):
            pixels = self.processor.image_processor(images=inputs[i : i + self.batch_size], return_tensors="pt")
            text = self.processor.tokenizer(
                prompts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_text_len,
                return_tensors="pt",
            )
            img_BD = _pooled(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
            txt_BD = _pooled(
                self.model.get_text_features(
                    input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
                )
            )
            cos_B = torch.nn.functional.cosine_similarity(img_BD.float(), txt_BD.float(), dim=-1)
            scores.append(100.0 * cos_B.clamp(min=0.0).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def update(self, images: Tensor | Sequence[PILImage], prompts: Sequence[str]) -> Tensor:
        """Score a batch of (image, prompt) pairs and add them to the running mean.

        Args:
            images: ``(B, 3, H, W)`` float images in [0, 1], or ``B`` PIL images.
            prompts: ``B`` strings, ``prompts[i]`` describing ``images[i]``.

        Returns:
            The ``(B,)`` per-pair scores.
        """
        scores_B = self.score(images, prompts)
        self._sum += float(scores_B.double().sum())
        self._count += scores_B.numel()
        return scores_B

    def compute(self) -> float:
        """Mean CLIP score over all pairs given to :meth:`update` since the last :meth:`reset`."""
        if self._count == 0:
            raise ValueError("ClipScorer.compute: no pairs scored yet; call update(images, prompts) first")
        return self._sum / self._count


def check_clip_dir(model_dir: str | Path) -> Path:
    """Check that ``model_dir`` is a local CLIP folder with safetensors weights, loading nothing.

    Raises:
        FileNotFoundError: no such folder, or no weights in it.
        MetricFileError: the weights are pickle files only (``pytorch_model.bin``), which can run
            code when loaded.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"CLIP model folder not found: {model_dir}. Set {CLIP_DIR_KEY} to a local folder saved with "
            "CLIPModel/CLIPProcessor.save_pretrained (e.g. a copy of openai/clip-vit-large-patch14); "
            "nothing is downloaded."
        )
    names = sorted(p.name for p in model_dir.iterdir())
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise MetricFileError(
                f"{model_dir} holds its weights only as pickle ({', '.join(pickles[:3])}), which can run code when "
                "loaded; re-save them as safetensors (save_pretrained(safe_serialization=True)) where the file is trusted"
            )
        raise FileNotFoundError(
            f"{model_dir} is not a saved CLIP model: it has no model.safetensors (write one with "
            "CLIPModel.save_pretrained, and the processor files with CLIPProcessor.save_pretrained)"
        )
    return model_dir


def clip_score(
    images: Tensor | Sequence[PILImage],
    prompts: Sequence[str],
    model_dir: str | Path,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """Mean CLIP score of ``(images[i], prompts[i])`` pairs with a local CLIP (one-shot :class:`ClipScorer`).

    Args:
        images: ``(B, 3, H, W)`` float images in [0, 1], or ``B`` PIL images.
        prompts: ``B`` strings.
        model_dir: local CLIP folder (see :class:`ClipScorer`).
        batch_size: pairs per forward pass.
        device: where the model runs.

    Returns:
        ``mean(100 * max(cos(E_image, E_text), 0))``.
    """
    scorer = ClipScorer(model_dir, device=device, batch_size=batch_size)
    scorer.update(images, prompts)
    return scorer.compute()
