"""Shared test setup: small thread counts keep the 2-core CI machine responsive; a debug
tokenizer and debug LMs trained once per session for the tests that need trained stages."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from lavit.config import LMRunConfig, TokenizerRunConfig, load_config
from lavit.train.tasks.lm import LMTask
from lavit.train.tasks.tokenizer import TokenizerTask
from lavit.train.trainer import fit

torch.set_num_threads(2)

HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "unique", "nonzero", "bincount"}


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor calls that read a value back to the host (on a GPU, each one waits for
    every queued kernel): ``with HostReads() as reads: ...; reads.calls``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    cfg = load_config(
        CONFIGS / "train" / "tokenizer_debug.yaml",
        TokenizerRunConfig,
        [
            f"train.out_dir={out}",
            "train.progress=false",
            "train.steps=8",
            "vq_start_step=4",
            "eval_images=8",
            "calibration_images=16",
            "train.ckpt_every=100",
        ],
    )
    fit(TokenizerTask(cfg), cfg.train)
    return out / "model"


def make_small_lm(texts: list[str], dtype: torch.dtype = torch.float64, device: str = "cpu"):
    """A 2-layer, 64-wide random UnifiedLM (40 codes, context 128) in eval mode and its
    SequenceBuilder, with a BPE trained on ``texts``: the generation loops' test model."""
    from lavit.config import LMConfig
    from lavit.model import UnifiedLM
    from lavit.sequence import SequenceBuilder
    from lavit.text_tokenizer import train_bpe

    torch.manual_seed(0)
    cfg = LMConfig(
        text_vocab_size=300,
        num_codes=40,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    tok = train_bpe(texts * 5, 300)
    lm = UnifiedLM(cfg).to(device=device, dtype=dtype).eval()
    return lm, SequenceBuilder(tok, lm.layout, 128)


@pytest.fixture(scope="session")
def small_lm():
    """``small_lm(texts, dtype=float64, device="cpu")`` -> (lm, builder); see make_small_lm."""
    return make_small_lm


def make_lm_cfg(out: Path, tokenizer_dir: Path, *overrides: str) -> LMRunConfig:
    return load_config(
        None,
        LMRunConfig,
        [
            f"train.out_dir={out}",
            f"tokenizer_dir={tokenizer_dir}",
            "train.progress=false",
            "train.steps=6",
            "train.batch_size=8",
            "train.log_every=2",
            "train.ckpt_every=100",
            "train.optim.warmup_steps=2",
            "data.shapes.resolution=32",
            "num_scenes=64",
            "eval_scenes=4",
            "lm.hidden_size=64",
            "lm.num_layers=2",
            "lm.num_heads=4",
            "lm.intermediate_size=128",
            "lm.max_position_embeddings=128",
            "lm.text_vocab_size=384",
            "lm.num_codes=64",
            "lm.feature_dim=32",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def lm_cfg():
    """``lm_cfg(out_dir, tokenizer_dir, *overrides)``: the debug LM run config."""
    return make_lm_cfg


@pytest.fixture(scope="session")
def lm_dirs(tmp_path_factory, tokenizer_dir):
    """{"discrete": dir, "continuous": dir}: debug LMs trained a few steps on the debug tokenizer."""
    dirs = {}
    for mode in ("discrete", "continuous"):
        out = tmp_path_factory.mktemp(f"lm_{mode}")
        cfg = make_lm_cfg(out, tokenizer_dir, f"lm.understanding_input={mode}", "train.eval_every=0")
        fit(LMTask(cfg), cfg.train)
        dirs[mode] = out / "model"
    return dirs


@pytest.fixture(scope="session")
def diffusion_dir(tmp_path_factory, tokenizer_dir):
    """A debug diffusion detokenizer trained a few steps on the debug tokenizer's codes."""
    from detokenizer.diffusion import DiffusionRunConfig
    from lavit.train.tasks.diffusion import DiffusionTask

    out = tmp_path_factory.mktemp("diffusion")
    cfg = load_config(
        CONFIGS / "train" / "diffusion_debug.yaml",
        DiffusionRunConfig,
        [f"tokenizer_dir={tokenizer_dir}", f"train.out_dir={out}", "train.progress=false", "train.steps=4"],
    )
    fit(DiffusionTask(cfg), cfg.train)
    return out / "model"


# The debug VQ-VAE's shape (32 px, 3 levels, 64 codes over 4 scales), shared by the tests that train one.
DEBUG_VQVAE = [
    "model.resolution=32",
    "model.block_out_channels=[16,16,16]",
    "model.norm_num_groups=8",
    "model.latent_channels=8",
    "model.codebook_size=64",
    "model.scales=[1,2,4,8]",
]


def train_debug_vqvae(out_dir):
    from detokenizer.var.config import VQVAERunConfig
    from lavit.train.tasks.var_vqvae import VQVAETask
    from lavit.train.trainer import fit

    cfg = load_config(
        None,
        VQVAERunConfig,
        [
            *DEBUG_VQVAE,
            "data.shapes.resolution=32",
            f"train.out_dir={out_dir}",
            "train.progress=false",
            "train.steps=3",
            "train.batch_size=4",
            "train.log_every=1",
            "train.eval_every=0",
            "eval_images=4",
        ],
    )
    return cfg, fit(VQVAETask(cfg), cfg.train)


def debug_var_cfg(out: Path, tokenizer_dir: Path, *overrides: str):
    """The debug VAR run config: a fresh debug VQ-VAE trained into ``out/vq``, the transformer into ``out/var``."""
    from detokenizer.var.config import VARRunConfig

    train_debug_vqvae(out / "vq")
    base = [
        f"vqvae_dir={out / 'vq' / 'model'}",
        f"tokenizer_dir={tokenizer_dir}",
        f"train.out_dir={out / 'var'}",
        "train.progress=false",
        "train.steps=3",
        "train.batch_size=4",
        "train.eval_every=0",
        "data.shapes.resolution=32",
        "num_scenes=16",
        "eval_scenes=4",
        "model.width=32",
        "model.depth=1",
        "model.heads=2",
        "model.cond_dim=32",
    ]
    return load_config(None, VARRunConfig, base + list(overrides))


@pytest.fixture(scope="session")
def var_dir(tmp_path_factory, tokenizer_dir):
    """A debug VAR decoder (VQ-VAE + transformer) trained a few steps on the debug tokenizer's codes."""
    from lavit.train.tasks.var import VARTask

    out = tmp_path_factory.mktemp("var")
    cfg = debug_var_cfg(out, tokenizer_dir)
    fit(VARTask(cfg), cfg.train)
    return out / "var" / "model"


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory, tokenizer_dir, lm_dirs, diffusion_dir, var_dir):
    """A debug pipeline directory with every stage (LM, both decoders) and short decoding."""
    from detokenizer.diffusion import DiffusionSamplingConfig
    from lavit.config import ImageSamplingConfig, TextDecodingConfig
    from lavit.pipeline import LaVITPipeline, PipelineConfig

    cfg = PipelineConfig(
        caption_decoding=TextDecodingConfig(num_beams=2, max_new_tokens=6),
        vqa_decoding=TextDecodingConfig(num_beams=2, max_new_tokens=3),
        image_sampling=ImageSamplingConfig(min_tokens=4, max_tokens=12),
        diffusion_sampling=DiffusionSamplingConfig(steps=2),
    )
    out = tmp_path_factory.mktemp("pipeline") / "model"
    LaVITPipeline.from_parts(
        tokenizer_dir, lm_dirs["discrete"], cfg, diffusion=diffusion_dir, var=var_dir
    ).save_pretrained(out)
    return out


def write_image(path: Path, colour: tuple[int, int, int]) -> Path:
    """An 8x8 image of one colour at ``path`` (format from the suffix: .jpg JPEG, .png PNG),
    its folders created: the fixture image of the reader tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def assert_user_error(rc: int, stderr: str, *names: str) -> str:
    """A user error as the CLI, ``eval/*.py`` and ``lavit train`` report it: exit code 2, no
    traceback, and one ``error:`` line naming each of ``names`` (the file, key or value).
    Returns that line."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert rc == 2 and len(errors) == 1, f"exit {rc}, stderr:\n{stderr}"
    for name in names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"
    return errors[0]


def crashing(task_cls: type) -> type:
    """``task_cls`` whose ``training_step`` dies at step ``crash_at`` (a simulated kill, after
    whatever checkpoints came before): ``crashing(TokenizerTask)(cfg, crash_at=5)``."""

    class Crashing(task_cls):
        def __init__(self, cfg, crash_at: int):
            super().__init__(cfg)
            self.crash_at = crash_at

        def training_step(self, model, batch, step):
            if step == self.crash_at:
                raise KeyboardInterrupt("simulated crash")
            return super().training_step(model, batch, step)

    return Crashing
