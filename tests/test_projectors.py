"""Projectors: scan orders and their inverses on hand-written grids, the Mamba projector's use of all four orders and
of both maps, pooling and conv shapes and invariances, token counts, gradients, config seam. Tiny sizes, CPU, seconds.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, Dinov2Config

from hybrid_vlm import ssm
from hybrid_vlm.anyres import pool_2d
from hybrid_vlm.configuration_hybrid_vlm import PROJECTOR_TYPES, HybridVLMConfig
from hybrid_vlm.projectors import (
    POOLING_PROJECTORS,
    PROJECTOR_CLASSES,
    TOKEN_PRESERVING_PROJECTORS,
    Conv2dAdapterProjector,
    MambaProjector,
    MLP2xGeluProjector,
    MLP3xGeluProjector,
    Pool1dMLPProjector,
    Pool2dMLPProjector,
    build_projector,
    fused_scan_order,
    init_projector_module,
    inverse_permutation,
    projector_output_grid,
    scan_orders,
    validate_projector_settings,
)

D, TEXT = 16, 24
TINY_SSM = dict(d_state=4, head_dim=8, chunk_size=4)


def mamba(seed: int = 0, widths=(D, D), **overrides) -> MambaProjector:
    torch.manual_seed(seed)
    options = dict(hidden_size=D, ssm=TINY_SSM)
    options.update(overrides)
    return MambaProjector(widths, TEXT, **options).double().eval()


def two_maps(seed: int = 1, n: int = 2, tokens: int = 9, widths=(D, D)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, tokens, w, generator=generator, dtype=torch.float64) for w in widths)


# ---------------------------------------------------------------------------------------------------------------
# Scan orders
# ---------------------------------------------------------------------------------------------------------------

# Patch indices of the grids, row-major:   2x3: 0 1 2      3x3: 0 1 2
#                                               3 4 5           3 4 5
#                                                               6 7 8
HAND_ORDERS = {
    (2, 3): [
        [0, 1, 2, 3, 4, 5],  # row-major
        [0, 3, 1, 4, 2, 5],  # column-major
        [5, 4, 3, 2, 1, 0],  # row-major reversed
        [5, 2, 4, 1, 3, 0],  # column-major reversed
    ],
    (3, 3): [
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
        [0, 3, 6, 1, 4, 7, 2, 5, 8],
        [8, 7, 6, 5, 4, 3, 2, 1, 0],
        [8, 5, 2, 7, 4, 1, 6, 3, 0],
    ],
    (1, 1): [[0], [0], [0], [0]],
}


@pytest.mark.parametrize("grid", list(HAND_ORDERS))
def test_scan_orders_match_hand_written_grids(grid):
    orders = scan_orders(*grid)
    assert [o.tolist() for o in orders] == HAND_ORDERS[grid]
    for order in orders:
        assert order.dtype == torch.long
        assert sorted(order.tolist()) == list(range(grid[0] * grid[1]))  # a permutation


@pytest.mark.parametrize("grid", [(2, 3), (3, 2), (3, 3), (4, 5)])
def test_inverse_permutation_restores_the_layout_exactly(grid):
    height, width = grid
    # Every patch labelled by (row, col): the scan visits labels in its order; the inverse puts each label back.
    labels = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), -1).reshape(1, -1, 2)
    for order in scan_orders(height, width):
        scanned = labels[:, order]
        restored = scanned[:, inverse_permutation(order)]
        assert torch.equal(restored, labels)
        assert torch.equal(order[inverse_permutation(order)], torch.arange(height * width))
    column_major = labels[:, scan_orders(height, width)[1]][0].tolist()
    assert column_major == [[r, c] for c in range(width) for r in range(height)]


def test_inverse_permutation_of_a_hand_written_permutation_and_errors():
    assert inverse_permutation(torch.tensor([2, 0, 1])).tolist() == [1, 2, 0]
    assert inverse_permutation(torch.tensor([], dtype=torch.long)).tolist() == []
    for bad in (torch.tensor([0, 0, 1]), torch.tensor([0, 3]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match="Not a permutation"):
            inverse_permutation(bad)
    with pytest.raises(ValueError, match="1-D integer"):
        inverse_permutation(torch.tensor([0.0, 1.0]))


def test_fused_scan_orders_for_two_maps_on_a_2x3_grid():
    row, column = scan_orders(2, 3)[:2]
    # map a holds positions 0..5, map b 6..11 of the visual long sequence.
    assert fused_scan_order(row, 2, "cross_stitch").tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    assert fused_scan_order(column, 2, "cross_stitch").tolist() == [0, 6, 3, 9, 1, 7, 4, 10, 2, 8, 5, 11]
    assert fused_scan_order(column, 2, "cross_cat").tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
    assert fused_scan_order(row, 1, "cross_stitch").tolist() == row.tolist()
    sequence = torch.arange(12) * 10
    for order in scan_orders(2, 3):
        for fusion in ("cross_stitch", "cross_cat"):
            fused = fused_scan_order(order, 2, fusion)
            assert sorted(fused.tolist()) == list(range(12))
            assert torch.equal(sequence[fused][inverse_permutation(fused)], sequence)
    with pytest.raises(ValueError, match="scan fusion"):
        fused_scan_order(row, 2, "stitch")


# ---------------------------------------------------------------------------------------------------------------
# The Mamba projector
# ---------------------------------------------------------------------------------------------------------------


def reference_mamba(projector: MambaProjector, maps, grid) -> torch.Tensor:
    """The projector written out with hand-built sequences (loops over grid positions), independent of the
    permutation helpers: the check that scanning, stitching and putting back are right."""
    height, width = grid
    tokens = height * width
    x = torch.cat([projector.in_proj(m) for m in maps], dim=1)
    x = x.reshape(-1, height, width, projector.hidden_size).permute(0, 3, 1, 2)
    x = torch.nn.functional.silu(projector.conv2d(x)).permute(0, 2, 3, 1).reshape(maps[0].shape[0], -1, x.shape[1])
    row_major = [(r, c) for r in range(height) for c in range(width)]
    column_major = [(r, c) for c in range(width) for r in range(height)]
    walks = [row_major, column_major, row_major[::-1], column_major[::-1]]
    merged = torch.zeros_like(x)
    for block, walk in zip(projector.ssm, walks):
        positions = [r * width + c for r, c in walk]
        if projector.scan_fusion == "cross_stitch":
            slots = [m * tokens + p for p in positions for m in range(len(maps))]
        else:
            slots = [m * tokens + p for m in range(len(maps)) for p in positions]
        out = block(x[:, slots])
        restored = torch.zeros_like(x)
        for step, slot in enumerate(slots):
            restored[:, slot] = out[:, step]
        merged = merged + restored
    if projector.merge == "mean":
        merged = merged / 4
    gate = torch.nn.functional.silu(torch.cat([projector.gate_proj(m) for m in maps], dim=1))
    return projector.out_proj(projector.out_norm(merged) * gate)


@pytest.mark.parametrize("fusion", ["cross_stitch", "cross_cat"])
@pytest.mark.parametrize("grid", [(2, 3), (3, 3)])
def test_mamba_projector_matches_a_hand_built_scan(fusion, grid):
    projector = mamba(scan_fusion=fusion)
    maps = two_maps(tokens=grid[0] * grid[1])
    with torch.no_grad():
        expected = reference_mamba(projector, maps, grid)
        got = projector(maps, grid=grid)
    assert got.shape == (2, 2 * grid[0] * grid[1], TEXT)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_mamba_projector_uses_all_four_orders():
    projector = mamba()
    maps = two_maps()
    with torch.no_grad():
        base = projector(maps)
        for direction in range(4):
            perturbed = copy.deepcopy(projector)
            weight = perturbed.ssm[direction].mixer.out_proj.weight
            weight.add_(0.5 * torch.randn_like(weight))  # random: a uniform shift would vanish in out_norm
            assert not torch.allclose(perturbed(maps), base), f"direction {direction} does not reach the output"


def test_the_four_directions_see_different_sequences():
    """With identical SSM weights in all four blocks, a direction-blind implementation would give each the same
    input; the outputs of the blocks (put back in patch order) must still differ because the orders differ."""
    projector = mamba(widths=(D,))
    for block in projector.ssm[1:]:
        block.load_state_dict(projector.ssm[0].state_dict())
    (features,) = two_maps(n=1)[:1]
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in projector.ssm]
    with torch.no_grad():
        projector(features)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 4
    assert not torch.allclose(outputs[0], outputs[2])  # row-major vs its reverse: causal scans differ


def test_swapping_the_two_encoders_maps_changes_the_output():
    projector = mamba()
    a, b = two_maps()
    with torch.no_grad():
        ab = projector((a, b))
        ba = projector((b, a))
    assert not torch.allclose(ab, ba)
    # Not symmetric either: the swapped run, re-aligned to the first map's positions, is not the same result.
    assert not torch.allclose(torch.cat([ba[:, 9:], ba[:, :9]], dim=1), ab)


def test_cross_stitch_and_cross_cat_differ_with_the_same_weights():
    stitch = mamba(scan_fusion="cross_stitch")
    cat = mamba(scan_fusion="cross_cat")
    cat.load_state_dict(stitch.state_dict())
    maps = two_maps()
    with torch.no_grad():
        out_stitch, out_cat = stitch(maps), cat(maps)
    assert out_stitch.shape == out_cat.shape == (2, 18, TEXT)
    assert not torch.allclose(out_stitch, out_cat)
    # With one map there is nothing to stitch: the two fusions coincide.
    single_stitch, single_cat = mamba(widths=(D,)), mamba(widths=(D,), scan_fusion="cross_cat")
    single_cat.load_state_dict(single_stitch.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(single_stitch(maps[0]), single_cat(maps[0]))


def test_mamba_projector_sequence_tensor_equals_tuple_and_batching_is_exact():
    projector = mamba()
    a, b = two_maps(n=3)
    with torch.no_grad():
        from_tuple = projector((a, b))
        torch.testing.assert_close(projector(torch.cat([a, b], dim=1)), from_tuple)
        one_by_one = torch.cat([projector((a[i : i + 1], b[i : i + 1])) for i in range(3)])
    torch.testing.assert_close(one_by_one, from_tuple, rtol=1e-10, atol=1e-12)


def test_mamba_projector_mean_merge_and_no_gate():
    maps = two_maps()
    summed, mean = mamba(), mamba(merge="mean")
    mean.load_state_dict(summed.state_dict())
    with torch.no_grad():
        assert not torch.allclose(summed(maps), mean(maps))
        torch.testing.assert_close(mean(maps), reference_mamba(mean, maps, (3, 3)), rtol=1e-10, atol=1e-12)
    ungated = mamba(gate=False)
    assert ungated.gate_proj is None and ungated(maps).shape == (2, 18, TEXT)


def test_mamba_projector_ssm_is_the_library_ssm():
    projector = mamba()
    assert len(projector.ssm) == 4
    for block in projector.ssm:
        assert type(block) is ssm.SSMBlock
        assert type(block.mixer) is ssm.Mamba2Mixer
    # No other SSM implementation hides in the projector: every module with SSM parameters is one of ssm.py's mixers.
    for module in projector.modules():
        if "A_log" in module._parameters:
            assert type(module) in (ssm.Mamba2Mixer, ssm.Mamba1Mixer)
    calls = []
    hooks = [b.mixer.register_forward_hook(lambda m, i, o: calls.append(m.compute_path)) for b in projector.ssm]
    projector(two_maps())
    for hook in hooks:
        hook.remove()
    assert calls == ["torch"] * 4  # ssm.py's automatic path on CPU (kernels on CUDA)
    mamba1 = mamba(ssm=dict(mixer="mamba1", d_state=4, chunk_size=4))
    assert all(type(b.mixer) is ssm.Mamba1Mixer for b in mamba1.ssm)
    assert mamba1(two_maps()).shape == (2, 18, TEXT)


def test_mamba_projector_reference_path_agrees_with_torch_path():
    projector = mamba()
    maps = two_maps()
    with torch.no_grad():
        fast = projector(maps)
        for block in projector.ssm:
            block.mixer.compute_path = "reference"
        torch.testing.assert_close(projector(maps), fast, rtol=1e-9, atol=1e-10)


def test_mamba_projector_with_different_encoder_widths():
    """DINOv2 (1024) and SigLIP (1152) differ in width: one input projection (and gate) per encoder."""
    projector = mamba(widths=(D, D + 8))
    assert isinstance(projector.in_proj, nn.ModuleList) and isinstance(projector.gate_proj, nn.ModuleList)
    assert projector.in_proj[1].in_features == D + 8
    maps = two_maps(widths=(D, D + 8))
    out = projector(maps)
    assert out.shape == (2, 18, TEXT)
    torch.testing.assert_close(out, reference_mamba_per_width(projector, maps), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="map 1 must be"):
        projector(two_maps())
    assert set(dict(projector.named_parameters())) >= {"in_proj.0.weight", "in_proj.1.weight", "gate_proj.1.bias"}


def reference_mamba_per_width(projector: MambaProjector, maps) -> torch.Tensor:
    shared = copy.deepcopy(projector)
    shared.in_proj = _PerMap(projector.in_proj)
    shared.gate_proj = _PerMap(projector.gate_proj)
    with torch.no_grad():
        return reference_mamba(shared, maps, (3, 3))


class _PerMap(nn.Module):
    """Dispatches each map to its own layer by width (the reference calls projections one map at a time)."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return next(layer for layer in self.layers if layer.in_features == tensor.shape[-1])(tensor)


def test_mamba_projector_errors():
    with pytest.raises(ValueError, match="scan_fusion"):
        MambaProjector(D, TEXT, ssm=TINY_SSM, scan_fusion="zigzag")
    with pytest.raises(ValueError, match="merge"):
        MambaProjector(D, TEXT, ssm=TINY_SSM, merge="max")
    with pytest.raises(ValueError, match="odd"):
        MambaProjector(D, TEXT, ssm=TINY_SSM, dwconv_kernel=2)
    with pytest.raises(ValueError, match="Unknown projector ssm option"):
        MambaProjector(D, TEXT, ssm=dict(d_sate=4))
    with pytest.raises(ValueError, match="prefix"):
        MambaProjector(D, TEXT, ssm=TINY_SSM, num_prefix_tokens=1)
    projector = mamba()
    with pytest.raises(ValueError, match="not a square grid"):
        projector(two_maps(tokens=6))
    assert projector(two_maps(tokens=6), grid=(2, 3)).shape == (2, 12, TEXT)
    with pytest.raises(ValueError, match="built for 2 map"):
        projector(two_maps()[:1])


# ---------------------------------------------------------------------------------------------------------------
# Pooling projectors (LongLLaVA)
# ---------------------------------------------------------------------------------------------------------------


def test_pool2d_24x24_to_12x12_shape_and_block_means():
    torch.manual_seed(0)
    projector = Pool2dMLPProjector(D, TEXT, pooled_grid=12).double()
    features = torch.randn(3, 576, D, dtype=torch.float64)
    out = projector(features)
    assert out.shape == (3, 144, TEXT)
    block_means = features.view(3, 12, 2, 12, 2, D).mean(dim=(2, 4)).reshape(3, 144, D)
    torch.testing.assert_close(out, projector.linear_2(projector.act(projector.linear_1(block_means))))
    torch.testing.assert_close(out, MLP2xGeluProjector.forward(projector, pool_2d(features, 12)))


@pytest.mark.parametrize("cls", [Pool2dMLPProjector, Pool1dMLPProjector])
def test_pooling_a_constant_map_gives_the_mlp_of_the_constant(cls):
    torch.manual_seed(0)
    projector = cls(D, TEXT, pooled_grid=12).double()
    vector = torch.randn(D, dtype=torch.float64)
    out = projector(vector.expand(2, 576, D))
    expected = projector.linear_2(projector.act(projector.linear_1(vector)))
    torch.testing.assert_close(out, expected.expand(2, 144, TEXT))


@pytest.mark.parametrize("side", [12, 7, 5, 1])
def test_pool1d_token_counts(side):
    projector = Pool1dMLPProjector(D, TEXT, pooled_grid=side)
    out = projector(torch.randn(2, 576, D))
    assert out.shape == (2, side * side, TEXT) and projector.output_tokens(576) == side * side


def test_pool1d_means_consecutive_tokens_and_differs_from_2d():
    torch.manual_seed(0)
    one_d = Pool1dMLPProjector(D, TEXT, pooled_grid=12).double()
    two_d = Pool2dMLPProjector(D, TEXT, pooled_grid=12).double()
    two_d.load_state_dict(one_d.state_dict())
    features = torch.randn(2, 576, D, dtype=torch.float64)
    strips = features.view(2, 144, 4, D).mean(dim=2)  # 1x4 strips of consecutive row-major tokens
    torch.testing.assert_close(one_d(features), one_d.linear_2(one_d.act(one_d.linear_1(strips))))
    assert not torch.allclose(one_d(features), two_d(features))


def test_pooling_keeps_prefix_tokens_and_pools_each_map():
    torch.manual_seed(0)
    projector = Pool2dMLPProjector((D, D), TEXT, pooled_grid=2, num_prefix_tokens=1).double()
    a, b = (torch.randn(2, 17, D, dtype=torch.float64) for _ in range(2))
    out = projector((a, b))
    assert out.shape == (2, 2 * (1 + 4), TEXT) and projector.output_tokens(34) == 10
    mlp = lambda x: projector.linear_2(projector.act(projector.linear_1(x)))  # noqa: E731
    torch.testing.assert_close(out[:, 0], mlp(a[:, 0]))  # CLS of map a, unpooled, first
    torch.testing.assert_close(out[:, 5], mlp(b[:, 0]))
    torch.testing.assert_close(out[:, 1:5], mlp(pool_2d(a[:, 1:], 2)))


def test_pooling_errors():
    with pytest.raises(ValueError, match="pooling only reduces"):
        Pool2dMLPProjector(D, TEXT, pooled_grid=30)(torch.randn(1, 576, D))
    with pytest.raises(ValueError, match="not a square grid"):
        Pool1dMLPProjector(D, TEXT, pooled_grid=2)(torch.randn(1, 10, D))
    with pytest.raises(ValueError, match="positive int"):
        Pool2dMLPProjector(D, TEXT, pooled_grid=0)


# ---------------------------------------------------------------------------------------------------------------
# MMJamba's conv adapter
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "grid", "out_grid"),
    [(2, None, (24, 24), (12, 12)), (3, 3, (24, 24), (8, 8)), (3, 2, (24, 24), (11, 11)), (1, None, (4, 6), (4, 6)),
     (2, None, (4, 6), (2, 3)), (2, None, (5, 5), (2, 2))],
)
def test_conv_adapter_output_shapes(kernel, stride, grid, out_grid):
    projector = Conv2dAdapterProjector(D, TEXT, kernel_size=kernel, stride=stride)
    frames = torch.randn(8, grid[0] * grid[1], D)  # 8 frames of one video
    out = projector(frames, grid=None if grid[0] == grid[1] else grid)
    assert out.shape == (8, out_grid[0] * out_grid[1], TEXT)
    assert projector.output_grid(grid) == out_grid
    assert projector.output_tokens(grid[0] * grid[1], grid=None if grid[0] == grid[1] else grid) == out.shape[1]


def test_conv_adapter_kernel_1_is_a_per_token_linear_map_and_sees_the_grid():
    torch.manual_seed(0)
    projector = Conv2dAdapterProjector(D, TEXT, kernel_size=1).double()
    frames = torch.randn(2, 16, D, dtype=torch.float64)
    weight = projector.conv.weight[:, :, 0, 0]
    torch.testing.assert_close(projector(frames), frames @ weight.t() + projector.conv.bias)
    # kernel 2: output token (0, 0) mixes patches 0, 1, 4, 5 of a 4x4 grid, and nothing else.
    projector = Conv2dAdapterProjector(D, TEXT, kernel_size=2).double()
    base = projector(frames)
    for patch, inside in ((0, True), (5, True), (2, False), (8, False)):
        bumped = frames.clone()
        bumped[:, patch] += 1.0
        assert torch.allclose(projector(bumped)[:, 0], base[:, 0]) != inside


def test_conv_adapter_rejects_prefix_tokens_and_small_grids():
    with pytest.raises(ValueError, match="prefix"):
        Conv2dAdapterProjector(D, TEXT, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="larger than"):
        Conv2dAdapterProjector(D, TEXT, kernel_size=4)(torch.randn(1, 9, D))


# ---------------------------------------------------------------------------------------------------------------
# Every projector: token counts, gradients, weight names
# ---------------------------------------------------------------------------------------------------------------


def every_projector(widths=(D,), prefix: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    made = {
        "mlp2x_gelu": MLP2xGeluProjector(widths, TEXT, num_prefix_tokens=prefix),
        "mlp3x_gelu": MLP3xGeluProjector(widths, TEXT, num_prefix_tokens=prefix),
        "pool2d_mlp": Pool2dMLPProjector(widths, TEXT, pooled_grid=2, num_prefix_tokens=prefix),
        "pool1d_mlp": Pool1dMLPProjector(widths, TEXT, pooled_grid=2, num_prefix_tokens=prefix),
    }
    if not prefix:
        made["conv2d_adapter"] = Conv2dAdapterProjector(widths, TEXT, kernel_size=2)
        made["mamba"] = MambaProjector(widths, TEXT, hidden_size=D, ssm=TINY_SSM)
    return made


def test_every_registered_type_is_covered():
    assert set(every_projector()) | {"identity"} == set(PROJECTOR_CLASSES)  # identity: its own test below
    assert set(PROJECTOR_TYPES) <= set(PROJECTOR_CLASSES)  # the config's list names only buildable projectors
    # The pure token arithmetic knows every projector: preserving, pooling, or the conv adapter.
    known = {*TOKEN_PRESERVING_PROJECTORS, *POOLING_PROJECTORS, "conv2d_adapter"}
    assert known == set(PROJECTOR_CLASSES)
    for name, projector in every_projector().items():
        assert projector.projector_type == name and type(projector) is PROJECTOR_CLASSES[name]


@pytest.mark.parametrize("maps", [1, 2])
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("grid", [(4, 4), (5, 5), (4, 6)])
def test_output_tokens_equals_the_real_output_length(maps, prefix, grid):
    tokens = prefix + grid[0] * grid[1]
    for name, projector in every_projector((D,) * maps, prefix).items():
        passed_grid = None if grid[0] == grid[1] else grid
        inputs = tuple(torch.randn(2, tokens, D) for _ in range(maps))
        out = projector(inputs if maps > 1 else inputs[0], grid=passed_grid)
        assert out.shape[0] == 2 and out.shape[2] == TEXT, name
        assert projector.output_tokens(maps * tokens, grid=passed_grid) == out.shape[1], (name, maps, prefix, grid)
        if name not in ("mlp2x_gelu", "mlp3x_gelu"):
            out_grid = projector_output_grid(name, grid, **projector._grid_options())
            assert out.shape[1] == maps * (prefix + out_grid[0] * out_grid[1]), name


def test_identity_projector_passes_lm_wide_features_through():
    from hybrid_vlm.projectors import IdentityProjector

    projector = IdentityProjector(TEXT, TEXT)
    features = torch.randn(2, 9, TEXT, requires_grad=True)
    assert projector(features) is features and projector.output_tokens(9) == 9
    assert not list(projector.parameters())
    two = IdentityProjector((TEXT, TEXT), TEXT)
    a, b = torch.randn(1, 4, TEXT), torch.randn(1, 4, TEXT)
    assert torch.equal(two((a, b)), torch.cat([a, b], dim=1))
    with pytest.raises(ValueError, match="as wide as the language model"):
        IdentityProjector(D, TEXT)


@pytest.mark.parametrize("name", [n for n in PROJECTOR_CLASSES if n != "identity"])
def test_gradients_reach_every_parameter(name):
    maps = 2 if name == "mamba" else 1
    projector = every_projector((D,) * maps)[name].double()
    inputs = tuple(torch.randn(2, 16, D, dtype=torch.float64, requires_grad=True) for _ in range(maps))
    out = projector(inputs if maps > 1 else inputs[0])
    (out * torch.randn_like(out)).sum().backward()
    for param_name, param in projector.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), f"{name}: no gradient for {param_name}"
    assert all(x.grad is not None and bool(x.grad.abs().sum() > 0) for x in inputs)


def test_weight_names_make_checkpoint_conversion_a_rename():
    """LongLLaVA's `mm_projector.{0,2}` and Cobra's `projector.{0,2,4}` (nn.Sequential) load by renaming keys."""
    torch.manual_seed(0)
    fused = 2 * D  # Cobra: DINOv2 and SigLIP concatenated on channels
    cobra = nn.Sequential(nn.Linear(fused, 4 * fused), nn.GELU(), nn.Linear(4 * fused, TEXT), nn.GELU(),
                          nn.Linear(TEXT, TEXT))
    ours = MLP3xGeluProjector(fused, TEXT)
    rename = {"0": "linear_1", "2": "linear_2", "4": "linear_3"}
    ours.load_state_dict({f"{rename[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in cobra.state_dict().items()})
    features = torch.randn(2, 9, fused)
    torch.testing.assert_close(ours(features), cobra(features))
    llava = nn.Sequential(nn.Linear(D, TEXT), nn.GELU(), nn.Linear(TEXT, TEXT))
    for cls, extra in ((MLP2xGeluProjector, {}), (Pool2dMLPProjector, {"pooled_grid": 3})):
        ours = cls(D, TEXT, **extra)
        ours.load_state_dict({f"{rename[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in llava.state_dict().items()})
        features = torch.randn(2, 9, D)
        torch.testing.assert_close(ours(features), llava(features))


def test_mlp3x_intermediate_size():
    assert MLP3xGeluProjector(D, TEXT).linear_1.out_features == 4 * D  # Cobra's 4x widening
    assert MLP3xGeluProjector(D, TEXT, intermediate_size=40).linear_2.in_features == 40


def test_mlp_projectors_need_equal_widths_for_sequence_fusion():
    with pytest.raises(ValueError, match="same width"):
        MLP2xGeluProjector((D, D + 8), TEXT)
    projector = MLP2xGeluProjector((D, D), TEXT)
    a, b = torch.randn(2, 4, D), torch.randn(2, 4, D)
    torch.testing.assert_close(projector((a, b)), projector(torch.cat([a, b], dim=1)))


def test_init_projector_module_initialises_like_a_fresh_projector():
    projector = mamba()
    for param in projector.parameters():
        param.data.fill_(float("nan"))
    for module in reversed(list(projector.modules())):  # children before parents, as transformers does
        init_projector_module(module, std=0.02)
    assert all(torch.isfinite(p).all() for p in projector.parameters())
    block = projector.ssm[0]
    assert bool((block.mixer.D == 1).all()) and bool((block.norm.weight == 1).all())
    assert bool((-torch.exp(block.mixer.A_log) < 0).all())
    assert torch.isfinite(projector(two_maps())).all()


# ---------------------------------------------------------------------------------------------------------------
# Pure arithmetic and the config seam
# ---------------------------------------------------------------------------------------------------------------


def test_projector_output_grid_arithmetic():
    assert projector_output_grid("mlp2x_gelu", (24, 24)) == (24, 24)
    assert projector_output_grid("mamba", (27, 27)) == (27, 27)
    assert projector_output_grid("pool2d_mlp", (24, 24), pooled_grid=12) == (12, 12)
    assert projector_output_grid("pool1d_mlp", (24, 24), pooled_grid=12) == (12, 12)
    assert projector_output_grid("conv2d_adapter", (24, 24)) == (12, 12)
    assert projector_output_grid("conv2d_adapter", (27, 27), conv_kernel=2) == (13, 13)
    assert projector_output_grid("conv2d_adapter", (24, 16), conv_kernel=4, conv_stride=2) == (11, 7)
    with pytest.raises(ValueError, match="needs a pooled grid"):
        projector_output_grid("pool2d_mlp", (24, 24))
    with pytest.raises(ValueError, match="Unknown projector_type"):
        projector_output_grid("qformer", (24, 24))


def fake_config(projector_type: str, **fields) -> SimpleNamespace:
    """A config with only what the projector seam reads (the real config gains these fields on integration)."""
    vision = fields.pop("vision_config", Dinov2Config(hidden_size=D, num_hidden_layers=1, num_attention_heads=2))
    fields.setdefault("vision_feature_select_strategy", "default")
    return SimpleNamespace(
        projector_type=projector_type, text_config=SimpleNamespace(hidden_size=TEXT), vision_config=vision, **fields
    )


@pytest.mark.parametrize(
    ("projector_type", "fields", "cls"),
    [
        ("mlp2x_gelu", {}, MLP2xGeluProjector),
        ("mlp3x_gelu", {"projector_intermediate_size": 40}, MLP3xGeluProjector),
        ("pool2d_mlp", {"projector_pooled_grid": 2}, Pool2dMLPProjector),
        ("pool1d_mlp", {"projector_pooled_grid": 2}, Pool1dMLPProjector),
        ("conv2d_adapter", {"projector_conv_kernel": 2}, Conv2dAdapterProjector),
        ("mamba", {"projector_ssm": TINY_SSM, "projector_scan_fusion": "cross_cat"}, MambaProjector),
    ],
)
def test_build_projector_from_config_fields(projector_type, fields, cls):
    projector = build_projector(fake_config(projector_type, **fields), (D, D) if cls is MambaProjector else D)
    assert type(projector) is cls
    if cls is MambaProjector:
        assert projector.scan_fusion == "cross_cat" and projector.num_maps == 2 and projector.merge == "sum"
    if cls is MLP3xGeluProjector:
        assert projector.linear_1.out_features == 40
    prefix = build_projector(fake_config("pool2d_mlp", projector_pooled_grid=2, vision_feature_select_strategy="full"), D)
    assert prefix.num_prefix_tokens == 1  # DINOv2's CLS


def test_build_projector_on_todays_config():
    config = HybridVLMConfig(
        vision_config=CLIPVisionConfig(hidden_size=D, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(model_type="llama", hidden_size=TEXT, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=50),
    )
    assert type(build_projector(config, D)) is MLP2xGeluProjector


@pytest.mark.parametrize(
    ("projector_type", "fields", "message"),
    [
        ("qformer", {}, "Unknown projector_type"),
        ("pool2d_mlp", {}, "needs projector_pooled_grid"),
        ("pool1d_mlp", {"projector_pooled_grid": 0}, "positive int"),
        ("pool2d_mlp", {"projector_pooled_grid": 12, "vision_pooled_grid": 12}, "pool a second time"),
        ("mlp2x_gelu", {"projector_pooled_grid": 12}, "only applies to"),
        ("conv2d_adapter", {"projector_conv_kernel": 0}, "positive int"),
        ("mamba", {"projector_scan_fusion": "zigzag"}, "projector_scan_fusion"),
        ("mamba", {"projector_scan_merge": "max"}, "projector_scan_merge"),
        ("mamba", {"projector_ssm": {"mixer": "s4"}}, "mixer"),
        ("mamba", {"projector_ssm": {"d_sate": 4}}, "Unknown projector ssm option"),
        ("mamba", {"vision_feature_select_strategy": "full"}, "patch grid only"),
        ("conv2d_adapter", {"vision_feature_select_strategy": "full"}, "patch grid only"),
    ],
)
def test_validate_projector_settings_errors(projector_type, fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        validate_projector_settings(fake_config(projector_type, **fields))
