"""LIPT: structure, parameter counts, reparameterisation and official checkpoint loading."""
import copy

import numpy as np
import pytest
import torch

from restore.models import lipt
from restore.models.blocks.dbb import RepConv3x3


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics so that folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
        if m.__class__.__name__ == "IdentityInitConv1x1":
            m.weight.data.normal_(0, 0.05, generator=g)


def deploy_params(variant: str, scale: int) -> int:
    return lipt.count_parameters(lipt.build(variant, scale, deploy=True))


@pytest.mark.parametrize("variant,scale,expected", [
    ("small", 2, 2_328_420),  # paper table: 2.33 M
    ("tiny", 2, 360_116),  # paper table: 0.36 M
    ("tiny", 4, 369_224),
])
def test_parameter_counts_match_paper_table(variant, scale, expected):
    assert deploy_params(variant, scale) == expected


def test_rep_conv_folds_exactly_in_float64():
    torch.manual_seed(0)
    block = RepConv3x3(6, 10).double()
    randomise_batchnorm(block)
    block.eval()
    x = torch.randn(2, 6, 9, 13, dtype=torch.float64)
    with torch.no_grad():
        diff = (block(x) - block.fold()(x)).abs().max().item()
    assert diff < 1e-10


@pytest.mark.parametrize("scale", [2, 4])
def test_reparameterised_model_equals_training_graph(scale):
    torch.manual_seed(1)
    model = lipt.build("tiny", scale)
    randomise_batchnorm(model)
    # Keep the random network's output in image range so the 1e-4 bound is meaningful.
    model.tail[0].weight.data.mul_(1e-3)
    model.tail[0].bias.data.zero_()
    model.eval()
    x = torch.rand(1, 3, 27, 35)  # not a multiple of the window: exercises pad + crop
    with torch.no_grad():
        before = model(x)
        folded = copy.deepcopy(model).reparameterize()
        after = folded(x)
    assert before.shape == (1, 3, 27 * scale, 35 * scale)
    assert folded.is_reparameterized and not model.is_reparameterized
    assert (before - after).abs().max().item() < 1e-4
    assert before.abs().max().item() > 0.1  # the comparison is not between two near-zero tensors


def test_fold_is_exact_in_float64_for_the_whole_network():
    torch.manual_seed(2)
    model = lipt.build("tiny", 2).double()
    randomise_batchnorm(model)
    model.eval()
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        after = model.reparameterize()(x)
    assert ((before - after).abs().max() / before.abs().max()).item() < 1e-10


def test_sparse_index_matches_official_unfold_and_mask():
    """The gather equals: circular pad by w, unfold 2w windows with stride w, keep the mask."""
    w, n = 8, 32
    mask = torch.tensor(lipt.SPARSE_MASKS[w], dtype=torch.bool)
    line = torch.arange(n)
    padded = torch.cat([line, line[:w]])  # circular pad at the end
    windows = padded.unfold(0, 2 * w, w)  # (n / w, 2w)
    expected = windows[:, mask].reshape(-1)
    assert torch.equal(lipt.sparse_index(n, w, torch.device("cpu")), expected)
    assert lipt.SPARSE_MASKS[8] == (1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1)
    assert len(lipt.SPARSE_MASKS[16]) == 32 and sum(lipt.SPARSE_MASKS[16]) == 16


def test_attention_is_computed_once_per_block_and_reused():
    block = lipt.LIPTB(8, 1, 8, shifted=True, n_share=1).eval()
    first, shared = block.modules_nvsm_sa["smmsa_0"], block.modules_nvsm_sa["smmsa_1"]
    assert first.calc_attn and not shared.calc_attn
    # the shared sub-block only projects values: C -> C instead of C -> 2C
    assert first.project_inp[0].out_channels == 16 and shared.project_inp[0].out_channels == 8
    seen = []
    shared.register_forward_hook(lambda m, inp, out: seen.append((inp[1], out[1])))
    with torch.no_grad():
        block(torch.rand(1, 8, 16, 16))
    given, returned = seen[0]
    assert given is not None and all(a is b for a, b in zip(given, returned))


def test_alternate_blocks_are_shifted():
    model = lipt.build("tiny", 2)
    shifts = [blk.modules_nvsm_sa["smmsa_0"].shifted for blk in model.body]
    assert shifts == [False, True, False, True]


def test_attention_uses_q_as_k_without_scaling():
    torch.manual_seed(3)
    sa = lipt.NVSMSA(4, 8, shifted=False, calc_attn=True).eval()
    x = torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        _, attns = sa(x)
        proj = sa.project_inp(x)
        dense = proj[:, :4]  # first half: q (2 ch) then v (2 ch), one 8x8 window
        q = dense[:, :2].reshape(2, 64).T
        expected = torch.softmax(q @ q.T, dim=-1)
    assert torch.allclose(attns[0][0], expected, atol=1e-6)


def reference_nvsm_sa(sa: lipt.NVSMSA, x: torch.Tensor, attns=None):
    """NVSM-SA written the plain way (roll, index the sparse rows/columns, reshape + permute
    into windows and back), as the official code does it: the row gathers must equal it."""
    b, _, h, wd = x.shape
    w = sa.window
    outs, new = [], []
    for i, part in enumerate(torch.chunk(sa.project_inp(x), 2, dim=1)):
        if sa.shifted:
            part = torch.roll(part, shifts=(-w // 2, -w // 2), dims=(2, 3))
        if attns is None:
            if i == 1:
                part = part[:, :, lipt.sparse_index(h, w, x.device)][:, :, :, lipt.sparse_index(wd, w, x.device)]
            q, v = torch.chunk(lipt.to_windows(part, w), 2, dim=-1)
            attn = torch.softmax(q @ q.transpose(-2, -1), dim=-1)
            new.append(attn)
        else:
            attn, v = attns[i], lipt.to_windows(part, w)
        y = lipt.from_windows(attn @ v, b, h, wd, w)
        if sa.shifted:
            y = torch.roll(y, shifts=(w // 2, w // 2), dims=(2, 3))
        outs.append(y)
    return sa.project_out(torch.cat(outs, dim=1)), (new if attns is None else attns)


@pytest.mark.parametrize("shifted", [False, True])
def test_row_gather_attention_equals_the_plain_window_reshapes(shifted):
    torch.manual_seed(5)
    first = lipt.NVSMSA(12, 8, shifted, calc_attn=True).eval()
    shared = lipt.NVSMSA(12, 8, shifted, calc_attn=False).eval()
    x = torch.rand(2, 12, 24, 40)  # 3 x 5 windows: rows and columns wrap differently
    with torch.no_grad():
        y, attns = first(x)
        y_ref, attns_ref = reference_nvsm_sa(first, x)
        assert all(torch.allclose(a, r, atol=1e-6) for a, r in zip(attns, attns_ref))
        assert torch.allclose(y, y_ref, atol=1e-5)
        z, _ = shared(x, attns)
        assert torch.allclose(z, reference_nvsm_sa(shared, x, attns)[0], atol=1e-5)
        # the shift really moves pixels: the unshifted windows give another answer
        flipped = lipt.NVSMSA(12, 8, not shifted, calc_attn=True).eval()
        flipped.load_state_dict(first.state_dict())
        assert not torch.allclose(flipped(x)[0], y, atol=1e-3)


def official_state_dict(model: lipt.LIPT) -> dict:
    """What the official trainer saves: DataParallel keys under 'model_state_dict'."""
    return {"model_state_dict": {f"module.{k}": v.clone() for k, v in model.state_dict().items()},
            "epoch": 1}


def test_official_training_checkpoint_loads_and_converts():
    torch.manual_seed(4)
    trained = lipt.build("tiny", 2)
    randomise_batchnorm(trained)
    trained.tail[0].weight.data.mul_(1e-3)
    ckpt = official_state_dict(trained)
    keys = ckpt["model_state_dict"]
    # key names as in the official repository (methods.md §2)
    for key in [
        "module.head.0.weight", "module.tail.0.bias", "module.sub_mean.weight", "module.add_mean.bias",
        "module.body.0.modules_hrm_a.lcs_a_0.conv0.dbb_origin.conv.weight",
        "module.body.0.modules_hrm_a.lcs_a_0.conv0.dbb_origin.bn.running_var",
        "module.body.0.modules_hrm_c.lcs_c_1.conv1.dbb_1x1.conv.weight",
        "module.body.1.modules_hrm_b.lcs_b_0.conv0.dbb_avg.conv.weight",
        "module.body.1.modules_hrm_b.lcs_b_0.conv0.dbb_avg.bn.bn.running_mean",
        "module.body.1.modules_hrm_b.lcs_b_0.conv0.dbb_avg.avgbn.weight",
        "module.body.2.modules_hrm_a.lcs_a_0.conv1.dbb_1x1_kxk.idconv1.weight",
        "module.body.2.modules_hrm_a.lcs_a_0.conv1.dbb_1x1_kxk.bn1.bn.bias",
        "module.body.2.modules_hrm_a.lcs_a_0.conv1.dbb_1x1_kxk.conv2.weight",
        "module.body.2.modules_hrm_a.lcs_a_0.conv1.dbb_1x1_kxk.bn2.running_mean",
        "module.body.3.modules_hrm_c.lcs_c_0.conv0.dbb_sobelx.k0",
        "module.body.3.modules_hrm_c.lcs_c_0.conv0.dbb_sobely.mask",
        "module.body.3.modules_nvsm_sa.smmsa_0.project_inp.0.weight",
        "module.body.3.modules_nvsm_sa.smmsa_0.project_inp.1.running_var",
        "module.body.3.modules_nvsm_sa.smmsa_1.project_out.bias",
    ]:
        assert key in keys, key
    assert keys["module.body.0.modules_hrm_a.lcs_a_0.conv0.dbb_sobelx.mask"][0, 0, 1, 0].item() == pytest.approx(2 ** 0.5)

    converted = lipt.load_official(ckpt, lipt.make_config("tiny", 2))
    deploy_keys = set(converted.state_dict())
    assert "body.0.modules_hrm_a.lcs_a_0.conv0.weight" in deploy_keys
    assert "body.0.modules_nvsm_sa.smmsa_0.project_inp.weight" in deploy_keys
    assert not any("dbb_" in k or "running" in k for k in deploy_keys)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (converted(x) - trained.eval()(x)).abs().max().item() < 1e-4


def test_official_bare_state_dict_without_prefix_also_loads():
    model = lipt.build("tiny", 3)
    converted = lipt.load_official(model.state_dict(), lipt.make_config("tiny", 3))
    assert converted.is_reparameterized


def test_plain_init_starts_blocks_as_identity():
    model = lipt.build("tiny", 2, deploy=True).init_plain()
    block = model.body[0]
    x = torch.rand(1, 28, 16, 16)
    with torch.no_grad():
        assert torch.allclose(block(x), x)


def _attention_logit_std(model, x):
    """Mean std of the attention logits q·q over the model's softmax calls on `x`."""
    seen = []
    real = torch.softmax

    def spy(t, dim=-1):
        seen.append(t.std(-1).mean().item())
        return real(t, dim=dim)

    torch.softmax = spy
    try:
        with torch.no_grad():
            model(x)
    finally:
        torch.softmax = real
    return float(np.mean(seen))


def test_plain_training_graph_keeps_attention_logits_in_softmax_range():
    """Folding project_inp's BatchNorm before training leaves q·q in the thousands (one-hot
    softmax, no gradient); the plain training graph keeps the BatchNorm and the logits sane."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    folded = lipt.build("tiny", 2, deploy=True).init_plain().train()
    kept = lipt.build("tiny", 2).plain_training_graph().init_plain()
    assert _attention_logit_std(folded, x) > 100
    assert _attention_logit_std(kept, x) < 20
    assert not any(isinstance(m, RepConv3x3) for m in kept.modules())  # the HRMs are folded ...
    assert isinstance(kept.body[0].modules_nvsm_sa.smmsa_0.project_inp[1], torch.nn.BatchNorm2d)  # ... BN kept


def test_plain_training_graph_folds_to_the_same_outputs():
    torch.manual_seed(0)
    model = lipt.build("tiny", 2).plain_training_graph()
    for m in model.modules():  # non-trivial statistics and affine in every BatchNorm
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2), m.running_var.uniform_(0.5, 3)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-1, 1)
    model.eval().double()  # float64: the untrained net's outputs reach ~50, beyond fp32's 1e-4
    x = torch.rand(1, 3, 24, 32, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        after = model.reparameterize()(x)
    assert model.is_reparameterized
    assert (before - after).abs().max().item() < 1e-4


def test_a_folded_plain_run_is_adopted_with_values_kept_and_queries_normalised():
    torch.manual_seed(0)
    old = lipt.build("tiny", 2, deploy=True).init_plain()
    for m in old.modules():  # a "trained" net: non-zero residual branches
        if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
            m.weight.data.normal_(0, 0.05)
    old.eval()
    batch = torch.rand(4, 3, 32, 32)
    new = lipt.build("tiny", 2).plain_training_graph()
    state = new.adopt_folded_projections(old.state_dict(), batch)
    new.load_state_dict(state)
    assert new.adopt_folded_projections(new.state_dict(), batch) is None  # nothing left to convert
    # The first block sees the same input in both nets: compare its projections there.
    outs = {}
    for tag, net in (("old", old), ("new", new)):
        sa = net.body[0].modules_nvsm_sa.smmsa_0
        sa.project_inp.register_forward_hook(lambda mod, i, o, tag=tag: outs.__setitem__(tag, o))
        with torch.no_grad():
            net.eval()(batch)
    half = 14
    values = [slice(half, 2 * half), slice(3 * half, 4 * half)]
    queries = [slice(0, half), slice(2 * half, 3 * half)]
    for v in values:
        assert torch.allclose(outs["new"][:, v], outs["old"][:, v], atol=1e-3)
    for q in queries:
        assert outs["new"][:, q].mean((0, 2, 3)).abs().max() < 1e-3
        assert (outs["new"][:, q].var((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2
        assert outs["old"][:, q].std() > 5  # the old queries were far from unit scale
