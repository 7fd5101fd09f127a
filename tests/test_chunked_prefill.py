"""Chunked prefill of videos: the same logits and generations as a one-pass prefill, for every decoder family."""

from __future__ import annotations

import pytest
import torch

from hybrid_vlm import from_preset, plan_prefill_chunks, prefill_in_chunks
from hybrid_vlm.token_counts import video_frame_tokens

GREEDY = {"do_sample": False, "max_new_tokens": 4}
# (preset, extra options): interleaved attention, hybrid attention/Mamba, SSM-only LMs, and both Vamba orders
FAMILIES = {
    "llava": ("llava-tiny", {}),
    "jamba": ("jamba-llava-tiny", {}),
    "mamba2": ("mamba2-llava-tiny", {}),
    "mambavlm": ("mambavlm-tiny", {}),
    "vamba": ("vamba-tiny", {}),
    "vamba-causal": ("vamba-tiny", {"cross_attention_visibility": "causal"}),
    "vamba-qwen2vl": ("vamba-qwen2vl-tiny", {}),
}


def _model(family: str):
    preset, vamba = FAMILIES[family]
    overrides = {}
    if vamba:
        from hybrid_vlm.presets import TINY_VAMBA_OPTIONS

        overrides["vamba_options"] = {**TINY_VAMBA_OPTIONS, **vamba}
    model, _ = from_preset(preset, seed=0, **overrides)
    return model.eval()


def _prompt(model, frames: int = 4, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Text, a video of `frames` frames with a marker token between frames, more text: (ids, video)."""
    spec = model.model.visual_token_spec
    vision = model.config.vision_config
    size = size or (getattr(vision, "image_size", None) or 28)
    size = size if spec.video_temporal_patch == 1 else 28
    torch.manual_seed(1)
    video = torch.randn(frames, 3 * _channels(model), size, size)
    per_group = video_frame_tokens(spec, size, size)
    token = model.config.video_token_id
    ids = [5, 6, 7]
    for _ in range(frames // spec.video_temporal_patch):
        ids += [token] * per_group + [8]
    ids += [9, 10, 11, 12]
    return torch.tensor([ids]), video


def _channels(model) -> int:
    return len(model.config.vision_configs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunked_prefill_equals_one_pass(family):
    model = _model(family)
    ids, video = _prompt(model)
    with torch.no_grad():
        full = model(input_ids=ids, pixel_values_videos=video[None]).logits[:, -1]
    patch = model.model.visual_token_spec.video_temporal_patch
    # 4 frames: two even chunks; a chunk of 3 and a shorter last one (Qwen2-VL: chunks of whole 2-frame patches)
    for chunk_frames in (2, 3) if patch == 1 else (2, 4):
        out = prefill_in_chunks(model, ids, video[None], chunk_frames=chunk_frames)
        torch.testing.assert_close(out.logits[:, -1], full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "jamba", "mamba2", "vamba", "vamba-causal"])
def test_generate_with_prefill_chunk_frames_equals_plain_generate(family):
    model = _model(family)
    ids, video = _prompt(model)
    plain = model.generate(input_ids=ids, pixel_values_videos=video[None], **GREEDY)
    chunked = model.generate(input_ids=ids, pixel_values_videos=video[None], prefill_chunk_frames=2, **GREEDY)
    assert chunked.tolist() == plain.tolist()


def test_plan_cuts_after_whole_frames_and_keeps_order():
    model = _model("llava")
    ids, video = _prompt(model, frames=5)
    chunks = plan_prefill_chunks(model, ids, video[None], chunk_frames=2)
    assert [len(c.videos[0]) for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat([c.input_ids for c in chunks], dim=1), ids)
    token = model.config.video_token_id
    per_frame = video_frame_tokens(model.model.visual_token_spec, video.shape[-2], video.shape[-1])
    assert [int((c.input_ids == token).sum()) for c in chunks] == [2 * per_frame, 2 * per_frame, per_frame]


def test_vamba_feeds_visual_tokens_before_text():
    model = _model("vamba")
    ids, video = _prompt(model, frames=4)
    chunks = plan_prefill_chunks(model, ids, video[None], chunk_frames=2)
    token = model.config.video_token_id
    assert all(bool((c.input_ids == token).all()) for c in chunks[:-1])
    assert not bool((chunks[-1].input_ids == token).any()) and chunks[-1].videos == []
    assert chunks[-1].input_ids.tolist() == [[t for t in ids[0].tolist() if t != token]]


def test_bad_inputs_fail_early_with_the_fix():
    model = _model("llava")
    ids, video = _prompt(model, frames=4)
    with pytest.raises(ValueError, match="one sample at a time"):
        prefill_in_chunks(model, ids.repeat(2, 1), video[None].repeat(2, 1, 1, 1, 1), chunk_frames=2)
    with pytest.raises(ValueError, match="positive integer"):
        prefill_in_chunks(model, ids, video[None], chunk_frames=0)
    with pytest.raises(ValueError, match="placeholder"):
        prefill_in_chunks(model, ids[:, :-8], video[None], chunk_frames=2)
    with pytest.raises(ValueError, match="images are not supported"):
        prefill_in_chunks(model, ids, video[None], chunk_frames=2, pixel_values=video[:1])
    with pytest.raises(ValueError, match="ends inside a video"):
        model.generate(input_ids=ids[:, :-5], pixel_values_videos=video[None], prefill_chunk_frames=2)
    qwen = _model("vamba-qwen2vl")
    ids, video = _prompt(qwen, frames=4)
    with pytest.raises(ValueError, match="multiple of 2"):
        prefill_in_chunks(qwen, ids, video[None], chunk_frames=3)
