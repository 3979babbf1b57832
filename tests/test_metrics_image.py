"""Image metrics (lavit.metrics.image): FID with a tiny feature extractor checked against a direct
scipy Fréchet distance, the no-download errors, and CLIP score with a tiny random local CLIP
checked against cosines computed by hand."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from lavit.metrics import image as image_metrics
from lavit.metrics.image import (
    FID_WEIGHTS_KEY,
    INCEPTION_WEIGHTS_FILE,
    ClipScorer,
    MetricFileError,
    check_fid_weights,
    clip_score,
    compute_fid,
    fid_metric,
)

# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


class TinyFeatures(nn.Module):
    """Fixed random conv + tanh, then spatial mean and std: (N, 3, H, W) -> (N, 16)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(8, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.is_floating_point()  # normalize=True: the custom extractor sees float images
        h = torch.tanh(self.conv(x))  # (N, 8, H-2, W-2)
        return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)  # (N, 16)


def _images(n: int, seed: int) -> torch.Tensor:
    # smooth-ish random images so features vary between images: per-image colour + noise
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)
    return (0.6 * base + 0.4 * torch.rand(n, 3, 12, 12, generator=g)).clamp(0, 1)


def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.split(size))


def test_fid_matches_scipy_and_orders_sets():
    extractor = TinyFeatures()
    metric = fid_metric(feature_extractor=extractor)
    real, other = _images(64, 1), _images(48, 2)
    brighter = (other + 0.3).clamp(0, 1)

    same = compute_fid(_batches(real, 16), _batches(real, 10), metric)
    near = compute_fid(_batches(real, 16), _batches(other, 16), metric)  # metric reused: compute_fid resets it
    far = compute_fid(_batches(real, 16), _batches(brighter, 16), metric)

    with torch.no_grad():
        f_real, f_other, f_bright = (extractor(x).double().numpy() for x in (real, other, brighter))
    assert abs(same) < 1e-3 * _scipy_fid(f_real, f_bright)
    assert near == pytest.approx(_scipy_fid(f_real, f_other), rel=1e-3)
    assert far == pytest.approx(_scipy_fid(f_real, f_bright), rel=1e-3)
    assert far > near > abs(same)


def test_fid_input_checks():
    metric = fid_metric(feature_extractor=TinyFeatures())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        compute_fid([torch.rand(4, 1, 8, 8)], [torch.rand(4, 3, 8, 8)], metric)
    with pytest.raises(ValueError, match="float images"):
        compute_fid([torch.zeros(4, 3, 8, 8, dtype=torch.uint8)], [torch.rand(4, 3, 8, 8)], metric)
    with pytest.raises(ValueError, match="at least 2 real and 2 fake"):
        compute_fid([torch.rand(4, 3, 8, 8)], [torch.rand(1, 3, 8, 8)], metric)


def test_fid_without_weights_explains_the_local_file():
    with pytest.raises(ValueError) as e:
        fid_metric()
    assert INCEPTION_WEIGHTS_FILE in str(e.value) and FID_WEIGHTS_KEY in str(e.value)
    assert "github.com/toshas/torch-fidelity" in str(e.value)


def test_fid_weights_path_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        fid_metric(weights_path=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not both"):
        fid_metric(weights_path=tmp_path / "w.pth", feature_extractor=TinyFeatures())
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="feature_dim"):
        fid_metric(weights_path=weights, feature_dim=100)
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ModuleNotFoundError, match="pip install torch-fidelity"):
            fid_metric(weights_path=weights)
    else:
        with pytest.raises(ValueError, match="not the FID InceptionV3 state dict"):
            fid_metric(weights_path=weights)


class Touch:
    """A pickle payload: unpickling it without weights_only creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _crafted(path: Path, marker: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(1), "payload": Touch(marker)}, path)
    return path


def _sha8(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def test_fid_weights_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, monkeypatch):
    weights = _crafted(tmp_path / INCEPTION_WEIGHTS_FILE, tmp_path / "MARKER")
    torch.load(_crafted(tmp_path / "control.pth", tmp_path / "CONTROL"), weights_only=False)
    assert (tmp_path / "CONTROL").exists()  # the payload is live: a plain torch.load runs it
    # The sha256 prefix is checked first, without unpickling anything ...
    with pytest.raises(MetricFileError, match=r"sha256 starts with .*not 6726825d") as e:
        fid_metric(weights_path=weights)
    assert str(weights) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MetricFileError, match="sha256"):
        check_fid_weights(weights)
    # ... and a pickle whose hash matched would still be loaded with weights_only=True only.
    monkeypatch.setattr(image_metrics, "INCEPTION_SHA256_PREFIX", _sha8(weights))
    with pytest.raises(MetricFileError, match="refused, not a plain tensor state dict") as e:
        fid_metric(weights_path=weights)
    assert str(weights) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "MARKER").exists()


def test_fid_weights_reach_torch_fidelity_as_tensors_only(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    monkeypatch.setattr(image_metrics, "INCEPTION_SHA256_PREFIX", _sha8(weights))
    # The tensors pass the weights_only load; torch-fidelity's strict load_state_dict then refuses them.
    with pytest.raises(MetricFileError, match="not the FID InceptionV3 state dict") as e:
        fid_metric(weights_path=weights)
    assert str(weights) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MetricFileError, match="regular file"):
        fid_metric(weights_path=tmp_path)


def test_import_is_light():
    # Load the module file on its own (not through lavit.metrics/__init__, which other metrics share).
    path = Path(__file__).resolve().parent.parent / "lavit" / "metrics" / "image.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('image_metrics', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "heavy = [m for m in ('torchmetrics', 'transformers', 'torch_fidelity') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random 2-layer CLIP (hidden 32, 32x32 images, 8x8 patches) with a letter-level tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:  # every letter, mid-word and word-final: any lowercase word encodes
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, **small
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


PROMPTS = ["a red cat", "blue square", "green circle on the left", "dog", "a very long prompt " * 4]


def test_clip_score_matches_hand_computation(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    images = torch.rand(len(PROMPTS), 3, 40, 36, generator=torch.Generator().manual_seed(0))
    scorer = ClipScorer(tiny_clip_dir, batch_size=2)  # 5 pairs in batches of 2, 2, 1
    per_pair = scorer.update(images[:3], PROMPTS[:3])
    scorer.update(images[3:], PROMPTS[3:])
    value = scorer.compute()

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    inputs = processor(
        text=PROMPTS,
        images=list((images * 255).round().to(torch.uint8)),
        padding=True,
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        txt = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    cos = (img / img.norm(dim=-1, keepdim=True) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1)
    expected = 100 * cos.clamp(min=0)

    assert per_pair.shape == (3,)
    torch.testing.assert_close(per_pair, expected[:3], rtol=1e-4, atol=1e-4)
    assert value == pytest.approx(float(expected.mean()), abs=1e-4)
    assert 0.0 <= value <= 100.0
    # the one-shot helper, with a different batching, gives the same mean
    assert clip_score(images, PROMPTS, tiny_clip_dir, batch_size=64) == pytest.approx(value, abs=1e-4)
    # PIL images (what the eval tasks hold) score like the same pixels as a tensor
    pil = [Image.fromarray(x) for x in (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    torch.testing.assert_close(scorer.score(pil, PROMPTS), expected, rtol=1e-3, atol=1e-3)

    scorer.reset()
    with pytest.raises(ValueError, match="no pairs scored"):
        scorer.compute()
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer.update(images[:2], PROMPTS[:1])
    with pytest.raises(TypeError, match="list of PIL images"):
        scorer.update(["not an image"], PROMPTS[:1])


def test_clip_loads_safetensors_only(tiny_clip_dir, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(tiny_clip_dir, both)
    _crafted(both / "pytorch_model.bin", tmp_path / "MARKER")
    ClipScorer(both)  # the safetensors weights load; the pickle beside them is never opened
    only = tmp_path / "only"
    shutil.copytree(both, only)
    (only / "model.safetensors").unlink()
    with pytest.raises(MetricFileError, match=r"only as pickle \(pytorch_model.bin\)"):
        ClipScorer(only)
    assert not (tmp_path / "MARKER").exists()


def test_clip_missing_or_wrong_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP model folder not found"):
        ClipScorer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a saved CLIP model"):
        ClipScorer(tmp_path)  # exists but empty
