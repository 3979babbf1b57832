"""The stages after the tokenizer (LM, diffusion, VAR) on real photographs through the data layer:
codes extracted once per source into sharded files and reused, records read back map-style, each
stage a few steps; and ShapesWorld by default gives the losses it gave before the data layer."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.config import DataConfig, SourceConfig, load_config
from lavit.train.codes_cache import codes_dataset
from lavit.train.tasks.lm import CAPTION, SYNTHESIS, T2I, VQA, LMTask
from lavit.train.trainer import fit
from tokenizer import load_tokenizer

CAPTIONS = ("a pagoda among trees", "a yellow flower in close up")
QUESTIONS = (("what building is shown?", ["pagoda", "temple", "pagoda"]), ("what colour is the flower?", ["yellow"]))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """{"jsonl": photos.jsonl (8 crops of scikit-learn's two photos as JPEGs, captions on all,
    a question on every other), "shards": two tar shards of the same 8}."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    lines, members = [], []
    for p, array in enumerate(load_sample_images().images):  # (427, 640, 3) uint8 each
        for c in range(4):
            crop = Image.fromarray(np.ascontiguousarray(array[40 * c : 40 * c + 200, 80 * c : 80 * c + 200]))
            buf = io.BytesIO()
            crop.resize((64, 64)).save(buf, format="JPEG", quality=90)
            name = f"p{p}c{c}"
            (root / f"{name}.jpg").write_bytes(buf.getvalue())
            line = {"image": f"{name}.jpg", "text": [CAPTIONS[p], f"{CAPTIONS[p]}, part {c}"]}
            if c % 2 == 0:
                line |= {"question": QUESTIONS[p][0], "answers": QUESTIONS[p][1]}
            lines.append(line)
            info = {"caption": line["text"][0]} | {k: line[k] for k in ("question", "answers") if k in line}
            members.append((name, buf.getvalue(), json.dumps(info).encode()))
    (root / "photos.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "shards").mkdir()
    for s in range(2):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for name, jpg, info in members[4 * s : 4 * s + 4]:
                for ext, blob in (("jpg", jpg), ("json", info)):
                    entry = tarfile.TarInfo(f"{name}.{ext}")
                    entry.size = len(blob)
                    tar.addfile(entry, io.BytesIO(blob))
    return {"jsonl": root / "photos.jsonl", "shards": root / "shards"}


def jsonl_data(photos, **source) -> DataConfig:
    src = SourceConfig(kind="jsonl", path=str(photos["jsonl"]), **source)
    return DataConfig(train=[src], val=[src])


def test_codes_of_photos_extracted_once_sharded_and_reused(tmp_path, tokenizer_dir, photos):
    tok = load_tokenizer(tokenizer_dir)
    ds = codes_dataset(tok, tokenizer_dir, jsonl_data(photos), "train", tmp_path, shard_items=3)
    index = tmp_path / "train-0" / "index.json"
    assert [s["count"] for s in json.loads(index.read_text())["shards"]] == [3, 3, 2]
    assert len(ds) == 8 and ds[0].captions == list(CAPTIONS[:1]) + [f"{CAPTIONS[0]}, part 0"]
    assert [len(ds[i].qa) for i in range(8)] == [1, 0] * 4 and "scene" not in ds[0].meta
    assert ds.image(1).size == (64, 64) and all(ds.codes(i).numel() >= 1 for i in range(8))
    mtime = index.stat().st_mtime_ns
    again = codes_dataset(tok, tokenizer_dir, jsonl_data(photos), "train", tmp_path, shard_items=3)
    assert index.stat().st_mtime_ns == mtime and torch.equal(again.codes(7), ds.codes(7))
    fewer = codes_dataset(tok, tokenizer_dir, jsonl_data(photos, limit=5), "train", tmp_path)
    assert len(fewer) == 5 and index.stat().st_mtime_ns != mtime  # a changed source re-extracts
    # A stream (tar shards): one epoch, its images stored at the size the stage asks for.
    shards = DataConfig(train=[SourceConfig(kind="webdataset", path=str(photos["shards"]))])
    stream = codes_dataset(tok, tokenizer_dir, shards, "train", tmp_path / "s", image_size=16)
    assert len(stream) == 8 and stream.image(3).size == (16, 16)
    assert sorted(stream[i].image_id for i in range(8)) == sorted(f"p{p}c{c}" for p in range(2) for c in range(4))
    assert sum(len(stream[i].qa) for i in range(8)) == 4


def test_lm_trains_and_evaluates_on_photos(tmp_path, tokenizer_dir, lm_cfg, photos):
    """Caption, VQA and text-to-image items from the photos' fields (no synthesis: no scene, even
    when the mixture asks for it); generic caption and VQA scores, no ShapesWorld judgement."""
    src = f"{{kind: jsonl, path: {photos['jsonl']}}}"
    cfg = lm_cfg(tmp_path, tokenizer_dir, f"data.train=[{src}]", f"data.val=[{src}]", "mixture.synthesis_prob=0.5")
    task = LMTask(cfg)
    task.build_model()
    items = task.train_dataset()
    kinds = [items.draw(j)[3] for j in range(len(items))]
    assert len(items) == 32 and {CAPTION, VQA, T2I} <= set(kinds) and SYNTHESIS not in kinds
    assert all(kinds[j] != VQA or items.draw(j)[1].qa for j in range(len(items)))
    corpus = " ".join(task._corpus(100))
    assert "pagoda" in corpus and "Question: what colour is the flower? Answer: yellow" in corpus
    metrics = fit(task, cfg.train)
    assert {"caption_bleu4", "caption_cider", "vqa_acc", "t2i_code_loss"} <= set(metrics)
    assert "caption_attribute_acc" not in metrics and 0 <= metrics["vqa_acc"] <= 1


def test_detokenizers_train_on_photo_shards(tmp_path, tokenizer_dir, photos):
    """Diffusion and VAR on tar shards (train) and the JSONL (val): PSNR only."""
    from conftest import CONFIGS, debug_var_cfg

    from detokenizer.diffusion import DiffusionRunConfig
    from lavit.train.tasks.diffusion import DiffusionTask
    from lavit.train.tasks.var import VARTask

    data = [
        f"data.train=[{{kind: webdataset, path: {photos['shards']}}}]",
        f"data.val=[{{kind: jsonl, path: {photos['jsonl']}}}]",
    ]
    cfg = load_config(
        CONFIGS / "train" / "diffusion_debug.yaml",
        DiffusionRunConfig,
        [f"tokenizer_dir={tokenizer_dir}", f"train.out_dir={tmp_path / 'diff'}", "train.progress=false", "train.steps=2",
         "train.batch_size=4", "eval_scenes=2", "sampling.steps=2", *data],
    )  # fmt: skip
    metrics = fit(DiffusionTask(cfg), cfg.train)
    assert set(metrics) == {"recon_psnr"} and metrics["recon_psnr"] > 0
    cfg = debug_var_cfg(tmp_path, tokenizer_dir, "train.steps=2", "eval_scenes=2", "train.eval_every=2", *data)
    metrics = fit(VARTask(cfg), cfg.train)
    assert set(metrics) == {"recon_psnr"}
