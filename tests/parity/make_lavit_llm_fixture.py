"""Make the parity fixture of LaVIT's LLM input path (tests/test_lavit_llm_convert.py reads it).

    python tests/parity/make_lavit_llm_fixture.py --lavit-repo /path/to/LaVIT \\
        --out tests/parity/lavit_llm.safetensors

``--lavit-repo`` is a checkout of github.com/jy0205/LaVIT; its code is imported from there and
none of it is copied here. The visual tokenizer is the small one of lavit_tokenizer.safetensors
(made by make_lavit_tokenizer_fixture.py, whose functions build it; its weights are read from
that fixture, not stored again) with what understanding adds, as LaVIT's
``build_dynamic_tokenizer(for_understanding=True)`` loads it from
``language_model/visual_weight.bin``: a second ``causal_encoder`` and ``vit_proj``. LaVIT fixes
``vit_proj``'s output at 4096 (Llama-7B's width); the small model replaces it after construction
by an ``nn.Linear`` into the small LLM's width.

The LLM is a ``LlamaForCausalLM`` of width 16 and 2 layers with LaVIT's vocabulary layout
(text 0-31999, ``<img>`` 32000, ``</img>`` 32001, code c at 32002 + c; 64 codes) and untied
embeddings. To keep the fixture small, only the rows of the ids the fixture uses are non-zero in
the input and output embeddings: 0-2 (unk, bos, eos), 12 "word" ids the prompts are made of, the
two specials and the codes; every other row is zero, so its logit is exactly 0 on both sides.
The file stores those rows and their ids; the test scatters them back into the full matrices.
The output rows of ids LaVIT's image generation leaves allowed beside the codes (0-2 and
``<img>``) are scaled by 0.1, as a trained model gives them little mass, so that the reference's
greedy choices are codes (the script checks it).

Two runs of LaVIT's own code:

- understanding: ``LaVITforUnderstanding.compute_dynamic_visual_embeds`` (``<img>``,
  ``vit_proj`` of the second merger's kept outputs, ``</img>``, EOS left padding) and
  ``pad_input_embeds`` (the prompt after the image, no BOS) for 2 images and 2 prompts of
  different lengths; image 0 keeps every patch, image 1 LaVIT's Gumbel draw (recorded). Then
  ``generate`` as ``predict_answers`` calls it (suppress 32000 onward, min 2 new tokens), greedy,
  4 new tokens, with the raw logits of every step.
- generation: ``LaVITforGeneration.generate_image_tokenids`` on 2 token prompts (text; codes +
  text, as ``multimodal_synthesis`` builds them) at guidance 4, greedy, ``max_length`` and
  ``min_length`` 6 (</img> never allowed; this transformers version returns 7 tokens), with the
  processed scores of every step. This transformers version starts a
  generation from ``inputs_embeds`` with no ids, where the version LaVIT ran started from
  ``[bos_token_id]`` = ``[32000]`` and so took ``<img>`` alone as the unconditional context of its
  guidance (``UnbatchedClassifierFreeGuidanceLogitsProcessor``); the script passes that context
  explicitly as ``uncond_input_ids``.

One safetensors file:

    vw.<name>            visual_weight.bin's tensors (causal_encoder.*, vit_proj.*)
    llm.<name>           the Llama's tensors; the two embedding matrices hold only the rows in
    llm.rows             (R,) int64: the ids of those rows
    und.keep             (2, 16) the keep masks the understanding merger used (0/1 float)
    und.prompt_ids       (2, 5) the prompts' ids, left-padded with EOS (2)
    und.prompt_mask      (2, 5)
    und.features         (K, 16) vit_proj of the kept merger outputs, images in order
    und.logits           (4, 2, R) the raw logits of each step at the rows' ids
    und.tokens           (2, 4) the greedy tokens
    gen.prompt_ids       (2, 9) the token prompts, left-padded with EOS (2)
    gen.prompt_mask      (2, 9)
    gen.scores           (7, 2, 64) the processed scores at the code ids
    gen.tokens           (2, 7) the greedy tokens (all codes)

with JSON metadata: the Llama config, the word ids and the prompts as words.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
import make_lavit_tokenizer_fixture as tok_fixture  # noqa: E402

SEED = 0
TEXT, CODES, HIDDEN = 32000, tok_fixture.CODES, 16
IMG_START, IMG_END, CODE_START = TEXT, TEXT + 1, TEXT + 2
VOCAB = CODE_START + CODES
EOS = 2
WORDS = [f"w{i}" for i in range(12)]
UND_PROMPTS = ["w0 w1 w2 w3 w4", "w5 w6 w7"]
GEN_PROMPTS = [["w8 w9 w10 w11 w0"], [torch.tensor([5, 17, 40, 63]), "w1 w2 w3"]]
UND_STEPS, GEN_STEPS, GUIDANCE = 4, 6, 4.0
LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=EOS,
)
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


def import_reference(repo: Path):
    """LaVIT's understanding and generation modules, without running ``models/__init__``."""
    root = repo / "LaVIT"
    if not (root / "models" / "lavit_for_understanding.py").is_file():
        raise SystemExit(f"{repo} is not a LaVIT checkout: no LaVIT/models/lavit_for_understanding.py")
    sys.path.insert(0, str(root))
    package = types.ModuleType("models")
    package.__path__ = [str(root / "models")]
    sys.modules["models"] = package
    from models import lavit_for_generation, lavit_for_understanding, modeling_visual_encoder, modeling_visual_tokenzier

    return lavit_for_understanding, lavit_for_generation, modeling_visual_tokenzier, modeling_visual_encoder


def word_ids(g: torch.Generator) -> dict[str, int]:
    ids = torch.randperm(TEXT - 3, generator=g)[: len(WORDS)] + 3
    return dict(zip(WORDS, sorted(ids.tolist()), strict=True))


def small_llm(rows: torch.Tensor, g: torch.Generator) -> LlamaForCausalLM:
    """The small Llama: random weights of order one; embedding rows outside ``rows`` zero."""
    torch.manual_seed(SEED)
    llm = LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()
    with torch.no_grad():
        for name, p in llm.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name in EMBEDDINGS:
            w = llm.get_parameter(name)
            keep = torch.zeros(VOCAB, dtype=torch.bool)
            keep[rows] = True
            w[~keep] = 0
        llm.lm_head.weight[[0, 1, 2, IMG_START]] *= 0.1
    return llm


def small_tokenizer(vt, ve, g: torch.Generator) -> nn.Module:
    """The tokenizer fixture's model with LaVIT's understanding weights loaded over it
    (second merger, vit_proj into the small LLM's width)."""
    ref = tok_fixture.small_reference(vt, ve)
    saved = load_file(str(Path(__file__).parent / "lavit_tokenizer.safetensors"))
    state = {f"encoder.{k[4:]}": v for k, v in saved.items() if k.startswith("eva.")}
    state.update({k[4:]: v for k, v in saved.items() if k.startswith("tok.")})
    ref.vit_proj = nn.Linear(tok_fixture.WIDTH, HIDDEN)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == {"vit_proj.weight", "vit_proj.bias"}, (missing, unexpected)
    # visual_weight.bin: a second merger and vit_proj, randomised like the tokenizer's weights.
    understanding = tok_fixture.small_reference(vt, ve)
    understanding.vit_proj = nn.Linear(tok_fixture.WIDTH, HIDDEN)
    tok_fixture.randomize(understanding, g)
    visual_weight = {
        k: v for k, v in understanding.state_dict().items() if k.startswith(("causal_encoder.", "vit_proj."))
    }
    ref.load_state_dict(visual_weight, strict=False)  # as build_dynamic_tokenizer(for_understanding=True)
    ref.visual_weight = visual_weight
    return ref.eval()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), EOS, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def run_understanding(und_module, llm, tokenizer, images, words) -> dict[str, torch.Tensor]:
    seen = {}

    def before_merger(_module, args):
        keep = args[1]
        keep[0] = 1.0  # in place: encode_features selects with this tensor afterwards
        seen["keep"] = keep.clone()

    def after_proj(_module, _args, out):
        seen["projected"] = out.clone()

    hooks = [
        tokenizer.causal_encoder.register_forward_pre_hook(before_merger),
        tokenizer.vit_proj.register_forward_hook(after_proj),
    ]
    und = object.__new__(und_module.LaVITforUnderstanding)
    nn.Module.__init__(und)
    und.llama_model, und.visual_tokenizer = llm, tokenizer
    und.llama_tokenizer = types.SimpleNamespace(eos_token_id=EOS)
    x = (images - torch.tensor(tok_fixture.MEAN).view(1, 3, 1, 1)) / torch.tensor(tok_fixture.STD).view(1, 3, 1, 1)
    torch.manual_seed(SEED)  # the Gumbel draw
    image_embeds, image_attns = und.compute_dynamic_visual_embeds(x)
    for h in hooks:
        h.remove()
    ids, mask = left_padded([[words[w] for w in p.split()] for p in UND_PROMPTS])
    prompt_embeds = llm.get_input_embeddings()(ids)
    inputs_embeds, attention_mask = und.pad_input_embeds(image_embeds, image_attns, prompt_embeds, mask)
    out = llm.generate(  # predict_answers' call, greedy
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=UND_STEPS,
        min_new_tokens=2,
        suppress_tokens=list(range(IMG_START, VOCAB)),
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=EOS,
        output_logits=True,
        return_dict_in_generate=True,
    )
    keep = seen["keep"].bool()
    return {
        "und.keep": seen["keep"],
        "und.prompt_ids": ids,
        "und.prompt_mask": mask,
        "und.features": seen["projected"][keep],
        "und.logits": torch.stack(out.logits),
        "und.tokens": out.sequences,
    }


@torch.no_grad()
def run_generation(gen_module, llm, words) -> dict[str, torch.Tensor]:
    prompts = []
    for parts in GEN_PROMPTS:
        ids = []
        for part in parts:
            ids += (part + CODE_START).tolist() if isinstance(part, torch.Tensor) else [words[w] for w in part.split()]
        prompts.append(torch.tensor(ids))
    gen = object.__new__(gen_module.LaVITforGeneration)
    nn.Module.__init__(gen)
    gen.llama_model = llm
    gen.llama_tokenizer = types.SimpleNamespace(padding_side="left", pad_token_id=EOS)
    gen.maybe_autocast = contextlib.nullcontext
    plain = llm.generate
    llm.generate = lambda **kw: plain(**kw, output_scores=True, return_dict_in_generate=True)
    try:
        out = gen.generate_image_tokenids(
            prompts,
            use_nucleus_sampling=False,
            top_k=50,
            num_beams=1,
            max_length=GEN_STEPS,
            min_length=GEN_STEPS,
            guidance_scale=GUIDANCE,
            uncond_input_ids=torch.full((len(prompts), 1), IMG_START),
            is_token_prompt=True,
        )
    finally:
        del llm.generate
    ids, mask = left_padded([p.tolist() for p in prompts])
    return {
        "gen.prompt_ids": ids,
        "gen.prompt_mask": mask,
        "gen.scores": torch.stack(out.scores)[..., CODE_START:],
        "gen.tokens": out.sequences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lavit-repo", type=Path, required=True, help="a checkout of github.com/jy0205/LaVIT")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "lavit_llm.safetensors")
    args = parser.parse_args()
    und_module, gen_module, vt, ve = import_reference(args.lavit_repo)
    g = torch.Generator().manual_seed(SEED + 7)
    words = word_ids(g)
    rows = torch.tensor([0, 1, 2, *words.values(), *range(IMG_START, VOCAB)])
    llm = small_llm(rows, g)
    tokenizer = small_tokenizer(vt, ve, g)
    images = load_file(str(Path(__file__).parent / "lavit_tokenizer.safetensors"))["input.images"][:2]
    tensors = run_understanding(und_module, llm, tokenizer, images, words)
    tensors.update(run_generation(gen_module, llm, words))
    codes = tensors["gen.tokens"]
    assert bool(((codes >= CODE_START) & (codes < VOCAB)).all()), f"greedy picked non-codes: {codes}"
    kept = tensors["und.keep"].sum(dim=1).tolist()
    assert kept[0] == 16 and 0 < kept[1] < 16, kept
    tensors["und.logits"] = tensors["und.logits"][..., rows]
    for name, v in llm.state_dict().items():
        tensors[f"llm.{name}"] = v[rows] if name in EMBEDDINGS else v
    tensors["llm.rows"] = rows
    tensors.update({f"vw.{k}": v for k, v in tokenizer.visual_weight.items()})
    meta = {
        "llama": json.dumps(LLAMA),
        "words": json.dumps(words),
        "und_prompts": json.dumps(UND_PROMPTS),
        "gen_prompts": json.dumps([[p.tolist() if isinstance(p, torch.Tensor) else p for p in q] for q in GEN_PROMPTS]),
        "guidance": str(GUIDANCE),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes; kept per image {kept}; greedy codes {codes.tolist()})")


if __name__ == "__main__":
    main()
