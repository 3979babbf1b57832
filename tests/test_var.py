"""VAR decoder: the multi-scale residual quantizer and VQ-VAE (docs/design.md §7)."""

import pytest
import torch
import torch.nn.functional as F

from detokenizer.var import MultiScaleQuantizer, MultiScaleVQVAE, VQVAEConfig
from detokenizer.var.quantizer import phi_index
from lavit.config import ConfigError, load_config

SCALES = [1, 2, 3, 4]


def make_quantizer(**kw) -> MultiScaleQuantizer:
    torch.manual_seed(0)
    q = MultiScaleQuantizer(dim=8, codebook_size=32, scales=SCALES, **kw)
    q.codebook.weight.data.normal_()  # spread codes so every scale picks several
    return q


def test_decoding_the_tokens_rebuilds_the_encoders_own_fhat():
    q = make_quantizer().eval()
    f = torch.randn(3, 8, 4, 4)
    f_hat, indices, _, _ = q(f)
    assert [tuple(i.shape) for i in indices] == [(3, p, p) for p in SCALES]
    torch.testing.assert_close(q.indices_to_fhat(indices), f_hat)


def test_znorm_picks_codes_by_cosine_and_adds_the_raw_code():
    q = make_quantizer(znorm=True).eval()
    z = torch.randn(2, 8, 3, 3)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    book = q.codebook.weight
    want = (F.normalize(flat, dim=1) @ F.normalize(book, dim=1).T).argmax(1).view(2, 3, 3)
    assert torch.equal(q.nearest(z), want)
    assert not torch.equal(q.nearest(z * 0.01), make_quantizer().eval().nearest(z * 0.01))  # not L2
    f_hat, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    torch.testing.assert_close(q.indices_to_fhat(indices), f_hat)  # the raw codes build f_hat


def test_phi_convs_are_shared_by_nearest_tick():
    # VAR's 10 scales over 4 phis: ticks linspace(1/12, 11/12, 4); scale k sits at k/9, and
    # in VAR's float64 arithmetic 2/9 and 7/9 fall nearer the upper tick (phi 1 and 3). The
    # shipped 8-scale schedule maps as before.
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 8, 4) for k in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {phi_index(k, 3, 1) for k in range(3)} == {0}


def test_residual_scales_reduce_the_error():
    q = make_quantizer().eval()
    f = torch.randn(4, 8, 4, 4)
    _, indices, _, _ = q(f)
    errors = []
    for k in range(len(SCALES)):
        partial = torch.zeros_like(f)
        for j in range(k + 1):
            partial, _ = q.step(partial, indices[j], j)
        errors.append(float(F.mse_loss(partial.detach(), f)))
    assert errors[-1] < errors[0], errors


def test_teacher_forcing_inputs_are_the_cumulative_fhat_downsampled_to_the_next_scale():
    q = make_quantizer()
    f = torch.randn(2, 8, 4, 4)
    _, indices, _, _ = q.eval()(f)
    got = q.teacher_forcing_inputs(indices)
    assert got.shape == (2, sum(p * p for p in SCALES[1:]), 8)
    # Reference written independently of step(): sum of phi(upsample(embed)) over scales <= k.
    want, cum = [], torch.zeros(2, 8, 4, 4)
    for k, idx in enumerate(indices[:-1]):
        h = q.codebook.weight[idx].permute(0, 3, 1, 2)
        h = F.interpolate(h, size=(4, 4), mode="bicubic") if SCALES[k] != 4 else h
        phi = q.phis[phi_index(k, len(SCALES), len(q.phis))]
        cum = cum + phi(h)
        p = SCALES[k + 1]
        want.append(F.interpolate(cum, size=(p, p), mode="area").flatten(2).transpose(1, 2))
    torch.testing.assert_close(got, torch.cat(want, dim=1))


def test_straight_through_value_is_fhat_and_gradient_reaches_the_input():
    q = make_quantizer().eval()
    f = torch.randn(2, 8, 4, 4, requires_grad=True)
    out, indices, loss, _ = q(f)
    torch.testing.assert_close(out.detach(), q.indices_to_fhat(indices).detach())
    out.sum().backward(retain_graph=True)
    torch.testing.assert_close(f.grad, torch.ones_like(f))
    q.zero_grad()
    loss.backward()
    assert q.codebook.weight.grad.abs().sum() > 0 and q.phis[0].weight.grad is not None


def test_dead_codes_restart_from_the_batch():
    q = make_quantizer(dead_code_threshold=0.5, usage_decay=0.0).train()
    _, indices, _, logs = q(torch.randn(2, 8, 4, 4))
    used = torch.cat([i.flatten() for i in indices]).unique()
    assert logs["dead_codes_restarted"] == 32 - used.numel()


def test_dead_codes_restart_on_every_scale_alike():
    """Restarts draw the scale uniformly: a 1x1 scale (2 vectors in the batch) gets about half of
    them beside a 4x4 one (32 vectors), not 2/34 as sampling the whole batch would give."""
    torch.manual_seed(0)
    q = make_quantizer(dead_code_threshold=0.5, usage_decay=0.0).train()
    coarse, fine = torch.full((2, 8, 1, 1), 1.0), torch.full((2, 8, 4, 4), 2.0)
    indices = [torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long)]
    assert q._restart_dead_codes(indices, [coarse, fine]) == 31
    rows = q.codebook.weight.data[1:]
    from_coarse, from_fine = int((rows == 1.0).all(1).sum()), int((rows == 2.0).all(1).sum())
    assert from_coarse + from_fine == 31, "restarted codes are vectors a scale quantized"
    assert 8 <= from_coarse <= 23


def test_per_scale_usage_is_logged_without_reading_the_device():
    from conftest import HostReads

    q = make_quantizer().eval()
    with HostReads() as reads:
        _, indices, _, logs = q(torch.randn(2, 8, 4, 4))
    assert reads.calls == []  # the VAR transformer's every training step encodes through this
    assert set(logs) == {f"usage_scale{p}" for p in SCALES}
    for idx, v in zip(indices, logs.values(), strict=True):
        assert float(v) == idx.unique().numel() / q.codebook_size


@pytest.mark.parametrize("scales", [[1, 2, 8], [2, 1, 16], [1, 2, 4, 16, 16], [0, 16]])
def test_scale_schedule_inconsistent_with_the_latent_size_fails_at_build_time(scales):
    with pytest.raises(ConfigError, match="scales"):
        load_config(None, VQVAEConfig, [f"scales={scales}"])


def test_vqvae_shapes_and_round_trip():
    cfg = load_config(
        None,
        VQVAEConfig,
        [
            "resolution=32",
            "block_out_channels=[16,16,16]",
            "norm_num_groups=8",
            "latent_channels=8",
            "scales=[1,2,4,8]",
        ],
    )
    torch.manual_seed(0)
    model = MultiScaleVQVAE(cfg).eval()
    images = torch.rand(2, 3, 32, 32)
    out = model(images)
    assert out.images.shape == images.shape and out.loss.ndim == 0
    indices = model.encode(images)
    assert [tuple(i.shape) for i in indices] == [(2, p, p) for p in (1, 2, 4, 8)]
    torch.testing.assert_close(model.decode(indices), ((out.images + 1) / 2).clamp(0, 1))
    with pytest.raises(ValueError, match="32, 32"):
        model.encode(torch.rand(1, 3, 16, 16))


def test_vqvae_training_stage_logs_usage_per_scale_and_saves_a_loadable_model(tmp_path):
    from conftest import train_debug_vqvae

    from detokenizer.var.io import load_vqvae
    from lavit.train.tasks.var_vqvae import VQVAETask

    cfg, metrics = train_debug_vqvae(tmp_path)
    assert set(metrics) == {"psnr", "scene_kept"} | {f"usage_scale{p}" for p in (1, 2, 4, 8)}
    # The saved folder is the trained model: reloaded, it scores exactly what training reported.
    assert VQVAETask(cfg).evaluate(load_vqvae(tmp_path / "model"), step=3) == metrics


# ---------------------------------------------------------------------------------------------
# Next-scale transformer
# ---------------------------------------------------------------------------------------------


# A layout reader of a 3x3 grid (pooled down to 1 and 2, up to 4: every case of area pooling).
LAYOUT = {"layout_queries": 9, "layout_width": 16, "layout_depth": 1, "layout_heads": 2, "max_codes": 8}
HEAD = {"last_head": 8, "last_head_blocks": 1}
VARIANTS = {
    "plain": {},
    "layout": LAYOUT,
    "head": HEAD,
    "layout+head": {**LAYOUT, **HEAD},
    "layout+head on 2 scales": {**LAYOUT, **HEAD, "last_head_scales": 2},
}


def make_var(seed: int = 0, **layout):
    from detokenizer.var.config import VARConfig
    from detokenizer.var.transformer import NextScaleTransformer

    vq_cfg = load_config(
        None, VQVAEConfig, ["latent_channels=8", "codebook_size=32", "scales=[1,2,3,4]", "resolution=16"]
    )
    torch.manual_seed(seed)
    q = MultiScaleQuantizer(8, 32, vq_cfg.scales)
    q.codebook.weight.data.normal_()
    model = NextScaleTransformer(VARConfig(width=32, depth=2, heads=2, cond_dim=12, **layout), vq_cfg).eval()
    for block in model.blocks:  # leave adaLN-zero so the blocks actually act in the tests
        block.ada[1].weight.data.normal_(0, 0.05)
    if model.layout_proj is not None:  # nor a zero layout projection
        model.layout_proj.weight.data.normal_(0, 0.5)
    if model.last_head is not None:  # nor a zero last-scale head
        model.last_head.out[-1].weight.data.normal_(0, 0.1)
    return model, q.eval()


def condition(b: int = 2, length: int = 5):
    torch.manual_seed(1)
    cond = torch.randn(b, length, 12)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 3:] = False
    return cond, mask


@pytest.mark.parametrize("layout", list(VARIANTS.values()), ids=list(VARIANTS))
def test_block_causal_mask_never_lets_a_token_see_a_later_scale(layout):
    model, q = make_var(**layout)
    lengths = [1, 4, 9, 16]
    assert model.mask.shape == (30, 30)
    starts = [0, 1, 5, 14, 30]
    for k in range(4):
        rows = model.mask[starts[k] : starts[k + 1]]
        assert rows[:, : starts[k + 1]].all() and not rows[:, starts[k + 1] :].any()
    # Behaviour: changing the tokens of scales >= k leaves the logits of scales <= k unchanged.
    cond, mask = condition()
    _, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    base = model(cond, mask, indices, q)
    for k in range(1, 4):
        changed = [i.clone() for i in indices]
        for j in range(k, 4):
            changed[j] = (changed[j] + 1) % 32
        out = model(cond, mask, changed, q)
        end = sum(lengths[: k + 1])
        torch.testing.assert_close(out[:, :end], base[:, :end])
        assert not torch.allclose(out[:, end:], base[:, end:]) or k == 3


@pytest.mark.parametrize("layout", list(VARIANTS.values()), ids=list(VARIANTS))
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_kv_cached_sampling_gives_the_logits_of_recomputing_all_scales(guidance, layout):
    from detokenizer.var.config import VARSamplingConfig

    model, q = make_var(**layout)
    cond, mask = condition()
    _, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    # Inference fed the same tokens builds the same inputs as teacher forcing, scale by scale.
    out = model.sample(cond, mask, q, VARSamplingConfig(guidance_scale=guidance), forced=indices)
    logits, f_hat = out.logits, out.f_hat
    full_cond = model(cond, mask, indices, q)
    full_null = model(cond, mask, indices, q, drop=torch.ones(2, dtype=torch.bool))
    for k, (a, b) in enumerate(model.spans):
        t = guidance * k / 3
        want = (1 + t) * full_cond[:, a:b] - t * full_null[:, a:b] if guidance != 1 else full_cond[:, a:b]
        torch.testing.assert_close(logits[k], want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(f_hat, q.indices_to_fhat(indices))


def test_sampling_is_seeded_per_image_and_matches_golden_values():
    from detokenizer.var.config import VARSamplingConfig
    from lavit.generate import seeded_generators

    model, q = make_var()
    cond, mask = condition()
    cfg = VARSamplingConfig(guidance_scale=2.0, top_k=8, top_p=0.9)
    a = model.sample(cond, mask, q, cfg, seeded_generators(2, 0)).tokens
    b = model.sample(cond, mask, q, cfg, seeded_generators(2, 0)).tokens
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    alone = model.sample(cond[1:], mask[1:], q, cfg, seeded_generators(1, 1)).tokens
    assert all(torch.equal(x[1:], y) for x, y in zip(a, alone, strict=True)), "image 1 independent of the batch"
    assert [t.flatten().tolist() for t in a[:2]] == GOLDEN_FIRST_SCALES


def test_a_forced_prefix_keeps_its_tokens_and_samples_the_rest_from_them():
    from detokenizer.var.config import VARSamplingConfig
    from lavit.generate import seeded_generators

    model, q = make_var()
    cond, mask = condition()
    _, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    cfg = VARSamplingConfig(guidance_scale=2.0, top_k=8, top_p=0.9)
    free = model.sample(cond, mask, q, cfg, seeded_generators(2, 0), forced=[None] * 4)
    plain = model.sample(cond, mask, q, cfg, seeded_generators(2, 0))
    assert all(torch.equal(x, y) for x, y in zip(free.tokens, plain.tokens, strict=True)), "None samples"
    # Scales 0-1 forced: they hold the given tokens; scales 2-3 are sampled from the given prefix,
    # so greedily they are the argmax of teacher forcing's logits for that prefix.
    greedy = VARSamplingConfig(guidance_scale=1.0, top_k=1)
    out = model.sample(cond, mask, q, greedy, forced=indices[:2] + [None, None])
    assert all(torch.equal(out.tokens[k], indices[k]) for k in range(2))
    a, b = model.spans[2]
    want = model(cond, mask, indices[:2] + out.tokens[2:], q)[:, a:b].argmax(-1)
    assert torch.equal(out.tokens[2].flatten(1), want)
    assert not all(torch.equal(out.tokens[k], indices[k]) for k in range(2, 4))


def test_condition_dropout_uses_the_null_sequence():
    model, q = make_var()
    cond, mask = condition()
    _, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    dropped = model(cond, mask, indices, q, drop=torch.tensor([True, False]))
    null, null_mask = model.null_condition(2, cond.shape[1])
    torch.testing.assert_close(dropped[0], model(null, null_mask, indices, q)[0])
    torch.testing.assert_close(dropped[1], model(cond, mask, indices, q)[1])


def test_layout_reader_pools_its_grid_to_every_scale_and_drops_to_the_null_grid():
    model, _ = make_var(**LAYOUT)
    cond, mask = condition()
    grid = model.layout(cond, mask).transpose(1, 2).reshape(2, 16, 3, 3)  # (B, D, 3, 3)
    tokens = model.layout_tokens(cond, mask, drop=torch.tensor([False, True]))
    assert tokens.shape == (2, 30, 16)
    torch.testing.assert_close(tokens[0, 0], grid[0].mean(dim=(1, 2)))  # the 1x1 scale: the mean
    torch.testing.assert_close(tokens[0, 14:30].T.reshape(16, 4, 4)[:, 0, 0], grid[0, :, 0, 0])  # 4x4 up
    null = model.layout.null.T.reshape(16, 3, 3)
    torch.testing.assert_close(tokens[1, 5:14].T.reshape(16, 3, 3), null)  # dropped: the null grid
    # The reader reads the condition, and only its unmasked part.
    other = cond.clone()
    other[1, 3:] += 5.0  # masked positions of image 1
    other[0] += 1.0
    changed = model.layout_tokens(other, mask)
    torch.testing.assert_close(changed[1], model.layout_tokens(cond, mask)[1])
    assert not torch.allclose(changed[0], tokens[0])


def test_a_grown_layout_reader_starts_as_the_transformer_it_grew_from():
    plain, q = make_var()
    grown, _ = make_var(**LAYOUT)
    own = {k: v for k, v in grown.state_dict().items() if not k.startswith(("layout.", "layout_proj."))}
    assert own.keys() == plain.state_dict().keys()
    grown.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.zeros_(grown.layout_proj.weight)  # as built
    cond, mask = condition()
    _, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    torch.testing.assert_close(grown(cond, mask, indices, q), plain(cond, mask, indices, q))


@pytest.mark.parametrize("scales", [1, 3])
def test_a_grown_last_scale_head_starts_as_the_transformer_and_then_acts_on_its_scales_only(scales):
    plain, q = make_var(**LAYOUT)
    grown, _ = make_var(**LAYOUT, **HEAD, last_head_scales=scales)
    own = {k: v for k, v in grown.state_dict().items() if not k.startswith("last_head.")}
    assert own.keys() == plain.state_dict().keys()
    grown.load_state_dict(plain.state_dict(), strict=False)
    cond, mask = condition()
    _, indices, _, _ = q(torch.randn(2, 8, 4, 4))
    torch.nn.init.zeros_(grown.last_head.out[-1].weight)  # as built
    torch.testing.assert_close(grown(cond, mask, indices, q), plain(cond, mask, indices, q))
    grown.last_head.out[-1].weight.data.normal_(0, 0.5)
    out, base = grown(cond, mask, indices, q), plain(cond, mask, indices, q)
    untouched = grown.spans[-scales][0]
    torch.testing.assert_close(out[:, :untouched], base[:, :untouched])
    for a, e in grown.spans[-scales:]:
        assert not torch.allclose(out[:, a:e], base[:, a:e])


def test_a_head_on_every_scale_fails_at_build_time():
    with pytest.raises(
        ValueError,
        match="last_head_scales=4: .* at most 3 of these 4 scales; set model.last_head_scales between 1 and 3",
    ):
        make_var(**HEAD, last_head_scales=4)


@pytest.mark.parametrize("width", [-8, 12])
def test_a_last_scale_head_width_that_group_norm_cannot_split_fails_at_build_time(width):
    from detokenizer.var.config import VARConfig

    with pytest.raises(ConfigError, match="last_head"):
        VARConfig(last_head=width)


@pytest.mark.parametrize("queries", [8, -4])
def test_a_layout_grid_that_is_not_square_fails_at_build_time(queries):
    from detokenizer.var.config import VARConfig

    with pytest.raises(ConfigError, match="layout_queries"):
        VARConfig(layout_queries=queries)


def test_init_from_continues_a_trained_decoder(tmp_path, tokenizer_dir, var_dir):
    from dataclasses import replace

    from conftest import debug_var_cfg

    from detokenizer.var.decoder import load_var_decoder
    from detokenizer.var.io import load_vqvae, save_vqvae
    from lavit.train.tasks.var import VARTask

    source = load_var_decoder(var_dir)
    # vqvae_dir may name a VAR decoder's folder: its VQ-VAE.
    vq = load_vqvae(var_dir)
    mine, theirs = vq.state_dict(), source.vqvae.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    cfg = debug_var_cfg(tmp_path, tokenizer_dir, f"vqvae_dir={var_dir}", f"init_from={var_dir}")
    task = VARTask(cfg)
    mine, theirs = task.build_model().transformer.state_dict(), source.transformer.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    vq.decoder.conv_out.bias.data += 0.1  # another VQ-VAE
    save_vqvae(vq, tmp_path / "other_vq")
    task.vqvae = load_vqvae(tmp_path / "other_vq")
    with pytest.raises(ConfigError, match="its VQ-VAE differs from vqvae_dir's"):
        task.build_model()
    task.vqvae = source.vqvae
    task.cfg = replace(cfg, model=replace(cfg.model, width=64))
    with pytest.raises(ConfigError, match="its transformer differs from model's"):
        task.build_model()
    task.cfg = replace(cfg, init_from=str(tmp_path))
    with pytest.raises(ConfigError, match="not a loadable VAR decoder"):
        task.build_model()


def test_layout_reader_grows_into_a_trained_decoder_from_a_diffusion_conditioner(
    tmp_path, tokenizer_dir, var_dir, diffusion_dir
):
    from dataclasses import replace

    from conftest import debug_var_cfg

    from detokenizer.diffusion.io import load_detokenizer
    from detokenizer.var.decoder import load_var_decoder
    from lavit.train.tasks.var import VARTask

    # The debug diffusion conditioner: width 32, depth 1, 4 queries (2x2), up to 16 codes.
    layout = ["model.layout_queries=4", "model.layout_width=32", "model.layout_depth=1", "model.max_codes=16"]
    cfg = debug_var_cfg(
        tmp_path,
        tokenizer_dir,
        f"vqvae_dir={var_dir}",
        f"init_from={var_dir}",
        f"layout_init_from={diffusion_dir}",
        *layout,
    )
    task = VARTask(cfg)
    model = task.build_model().transformer
    source, reader = load_detokenizer(diffusion_dir).conditioner.state_dict(), model.layout.state_dict()
    assert source.keys() == reader.keys() and all(torch.equal(source[k], reader[k]) for k in source)
    plain = load_var_decoder(var_dir).transformer.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())  # the rest as trained
    assert not model.layout_proj.weight.any()  # so it starts as the decoder it grew from

    bad = {
        "its conditioner differs from the layout reader": replace(cfg, model=replace(cfg.model, layout_width=64)),
        "needs a layout reader: set model.layout_queries": replace(cfg, model=replace(cfg.model, layout_queries=0)),
        "not a loadable diffusion detokenizer": replace(cfg, layout_init_from=str(var_dir)),
    }
    for message, bad_cfg in bad.items():
        task.cfg = bad_cfg
        with pytest.raises(ConfigError, match=message):
            task.build_model()


def test_a_last_scale_head_grows_into_a_trained_decoder_and_trains_alone(tmp_path, tokenizer_dir, var_dir):
    from dataclasses import replace

    from conftest import debug_var_cfg

    from detokenizer.var.decoder import load_var_decoder
    from lavit.train.tasks.var import VARTask

    cfg = debug_var_cfg(
        tmp_path,
        tokenizer_dir,
        f"vqvae_dir={var_dir}",
        f"init_from={var_dir}",
        "model.last_head=8",
        "trainable=[last_head.]",
    )
    task = VARTask(cfg)
    model = task.build_model().transformer
    plain = load_var_decoder(var_dir).transformer.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())
    assert not model.last_head.out[-1].weight.any()  # so it starts as the decoder it grew from
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("last_head.") for n in trained)
    task.cfg = replace(cfg, trainable=["lats_head."])
    with pytest.raises(ConfigError, match=r"\['lats_head.'\] name no parameter"):
        task.build_model()


def test_var_training_stage_reconstructs_from_codes_and_saves_one_loadable_decoder(tmp_path, tokenizer_dir):
    from conftest import debug_var_cfg

    from detokenizer.var.config import VARSamplingConfig
    from detokenizer.var.decoder import decode_codes_var, load_var_decoder
    from lavit.train.tasks.var import VARTask
    from lavit.train.trainer import fit
    from tokenizer import load_tokenizer

    cfg = debug_var_cfg(tmp_path, tokenizer_dir)
    metrics = fit(VARTask(cfg), cfg.train)
    assert set(metrics) == {"recon_scene_kept", "recon_scene_recovered", "recon_psnr"}
    assert (tmp_path / "var" / "recon_step3.png").is_file()
    decoder, tok = load_var_decoder(tmp_path / "var" / "model"), load_tokenizer(tokenizer_dir)
    codes = tok.encode(torch.rand(2, 3, 32, 32))
    images = decode_codes_var(decoder, tok, codes, VARSamplingConfig(), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    decoder.cfg.transformer.cond_dim = 48  # as if trained on another tokenizer
    with pytest.raises(ValueError, match="lavit train var with its tokenizer_dir"):
        decode_codes_var(decoder, tok, codes, VARSamplingConfig())
    with pytest.raises(ConfigError, match="model.cond_dim"):
        VARTask(debug_var_cfg(tmp_path / "wide", tokenizer_dir, "model.cond_dim=48"))


# Scales 1x1 and 2x2 of both images (seeds 0, 1), recorded on torch 2.14.1 CPU.
GOLDEN_FIRST_SCALES = [[6, 14], [15, 15, 28, 16, 3, 16, 17, 17]]
