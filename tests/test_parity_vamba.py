"""Parity with Vamba's reference code (TIGER-AI-Lab/Vamba): `hybrid-vlm convert --from vamba` on a tiny checkpoint the
reference built and saved, then the converted folder's own processor and chat template on each case's raw inputs, as
a user would run them. The reference's ids, pixels, logits and greedy tokens come from the shared parity pack
(`../shared/parity/vamba`, see its README); these tests skip when the pack is not there.

What the reference does and what is compared: its prompt has `<|vision_start|><|vision_end|>` and no pad tokens (the
visual tokens are not in its text sequence), so our ids with the visual placeholders removed must equal its ids, with
exactly `num_visual_tokens` placeholders; the processed pixels (as frames) must match its `pixel_frames`; the logits
at its stored text positions and its greedy continuation must match.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_parity_case

PACK = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "vamba"
CASES = sorted(p.name for p in (PACK / "cases").iterdir() if (p / "case.json").is_file()) if PACK.is_dir() else []

pytestmark = pytest.mark.skipif(
    not (PACK / "Vamba-tiny" / "config.json").is_file() or not CASES,
    reason=f"the Vamba parity pack is not at {PACK} (it lives beside the repository, in ../shared/parity/vamba)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The reference checkpoint converted once, loaded with the Auto classes (model in eval mode, processor)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hybrid_vlm  # noqa: F401  (registers HybridVLM with the Auto classes)
    from hybrid_vlm.convert import convert

    folder = tmp_path_factory.mktemp("vamba") / "converted"
    convert(PACK / "Vamba-tiny", folder, "vamba", progress=False)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return model, AutoProcessor.from_pretrained(folder)


def _case(name: str) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    return load_parity_case(PACK / "cases" / name)


def _run_case(model, processor, name: str) -> dict:
    """The processor's output for a case's messages, which positions are visual placeholders, the model's logits."""
    meta, reference, messages = _case(name)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = {k: v for k, v in inputs.items() if k != "video_metadata"}
    ids = inputs["input_ids"][0]
    placeholders = (ids == model.config.image_token_id) | (ids == model.config.video_token_id)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    return dict(meta=meta, reference=reference, inputs=inputs, ids=ids, placeholders=placeholders, logits=logits)


def _logit_difference(run: dict) -> float:
    """Max |ours - reference| over the reference's stored text positions and vocabulary columns."""
    meta, reference = run["meta"], run["reference"]
    text_positions = torch.nonzero(~run["placeholders"]).flatten()
    ours = run["logits"][text_positions[reference["logit_positions"]], : meta["reference_vocab_size"]]
    return (ours - reference["logits"]).abs().max().item()


@pytest.fixture(scope="module")
def runs(converted):
    model, processor = converted
    return {name: _run_case(model, processor, name) for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_ids_are_the_references_once_the_visual_placeholders_are_removed(runs, name):
    run = runs[name]
    assert run["ids"][~run["placeholders"]].tolist() == run["meta"]["input_ids"]
    assert run["reference"]["input_ids"][0].tolist() == run["meta"]["input_ids"]
    assert int(run["placeholders"].sum()) == run["meta"]["num_visual_tokens"]


@pytest.mark.parametrize("name", CASES)
def test_pixels_match_the_references(runs, name):
    run = runs[name]
    inputs = run["inputs"]
    pixels = inputs["pixel_values"] if "pixel_values" in inputs else inputs["pixel_values_videos"][0]
    expected = run["reference"]["pixel_frames"]
    assert tuple(pixels.shape) == tuple(expected.shape) == tuple(run["meta"]["pixel_frames_shape"])
    tolerance = run["meta"]["tolerance"]["pixels_max_abs"]
    assert (pixels - expected).abs().max().item() <= tolerance


@pytest.mark.parametrize("name", CASES)
def test_logits_at_the_stored_text_positions_match_the_references(runs, name):
    run = runs[name]
    meta, reference = run["meta"], run["reference"]
    text_positions = torch.nonzero(~run["placeholders"]).flatten()
    assert run["ids"][text_positions[reference["logit_positions"]]].tolist() == meta["logit_position_token_ids"]
    assert _logit_difference(run) <= meta["tolerance"]["logits_max_abs"]


@pytest.mark.parametrize("name", CASES)
def test_greedy_continuation_is_the_references(converted, runs, name):
    model, _ = converted
    run = runs[name]
    wanted = run["meta"]["greedy_continuation"]
    with torch.no_grad():
        generated = model.generate(**run["inputs"], max_new_tokens=len(wanted), do_sample=False)
    assert generated[0, run["ids"].shape[0] :].tolist() == wanted == run["reference"]["generated"][0].tolist()


def test_the_converted_processor_samples_and_pads_frames_as_vambas_chat_script(converted):
    """Vamba's chat sampling from the decoded video: the reference took frames [0, 2, 4, 6] of the video case's 8
    (and resized them 90x120 -> 84x112 with PIL's bicubic, which is what smart_resize does here): same pixels."""
    model, processor = converted
    meta, reference, _ = _case("video")
    frames = [str(PACK / "cases" / "video" / f) for f in meta["decoded_video"]["frames"]]
    content = [{"type": "video", "frames": frames}, {"type": "text", "text": "Describe what happens in this video."}]
    out = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt", num_frames=4)
    assert (out["pixel_values_videos"][0] - reference["pixel_frames"]).abs().max().item() <= 1e-5
    ids = out["input_ids"][0]
    assert ids[ids != model.config.video_token_id].tolist() == meta["input_ids"]
    from PIL import Image

    decoded = [Image.open(f).convert("RGB") for f in frames]
    sampled = processor.video_processor(decoded, do_sample_frames=True, num_frames=4)
    assert sampled["video_metadata"][0]["frame_indices"] == meta["sampled_frame_indices"]
    padded = processor.video_processor(decoded[:3], do_sample_frames=True, num_frames=6)
    assert padded["video_metadata"][0]["frame_indices"] == [0, 1, 2, 2, 2, 2]


def test_a_folder_converted_here_matches_the_reference_on_the_other_transformers_line(converted, other_python):
    """The converted folder (saved by this line) loaded by the other line: same ids, same logits."""
    model, _ = converted
    folder = Path(model.config._name_or_path)
    result = subprocess.run([other_python, __file__, "check", str(folder)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("MAXDIFF")[-1].split()[0]) <= 1e-3


def _check(folder: str) -> None:
    """Every case through a converted folder: print ids/pixels/logits/continuation against the reference, then the
    largest logit gap (`python tests/test_parity_vamba.py check FOLDER`; the other-line test runs this)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hybrid_vlm  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    worst = 0.0
    for name in CASES:
        run = _run_case(model, processor, name)
        ids_equal = run["ids"][~run["placeholders"]].tolist() == run["meta"]["input_ids"]
        assert ids_equal, f"{name}: ids differ"
        inputs = run["inputs"]
        pixels = inputs["pixel_values"] if "pixel_values" in inputs else inputs["pixel_values_videos"][0]
        pixel_gap = (pixels - run["reference"]["pixel_frames"]).abs().max().item()
        wanted = run["meta"]["greedy_continuation"]
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=len(wanted), do_sample=False)
        same = generated[0, run["ids"].shape[0] :].tolist() == wanted
        gap = _logit_difference(run)
        worst = max(worst, gap)
        print(f"{name}: ids equal {ids_equal}, pixels {pixel_gap:.3g}, logits {gap:.3g}, continuation equal {same}")
    print(f"MAXDIFF {worst}")


if __name__ == "__main__":
    _check(sys.argv[2])
