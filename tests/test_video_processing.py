"""HybridVLMVideoProcessor: exact sampling rules, seeking instead of decoding everything, and every damaged-input case
giving a correct result or a clear error in bounded time.

Every video is written here with PyAV (tiny frames, no downloads). Frame ``i`` is one flat colour that encodes ``i``
(three base-13 digits), so a test can read back which frame the decoder really delivered.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import PIL.Image
import pytest
import torch

from hybrid_vlm import video_decoding
from hybrid_vlm import video_processing_hybrid_vlm as vpm
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.token_counts import VisualTokenSpec, count_video_tokens
from hybrid_vlm.video_processing_hybrid_vlm import (
    HybridVLMVideoProcessor,
    VideoDecodingError,
    fps_indices,
    frames_for_token_budget,
    middle_indices,
    uniform_indices,
)

BASE, STEP, LOW = 13, 18, 20  # frame i -> RGB digits of i in base 13, 18 levels apart: survives lossy coding
SIDE = 16
LOGGER = "hybrid_vlm.video_processing_hybrid_vlm"


def frame_color(i: int) -> np.ndarray:
    return np.array([LOW + ((i // BASE**k) % BASE) * STEP for k in range(3)], dtype=np.uint8)


def frame_array(i: int, side: int = SIDE) -> np.ndarray:
    return np.broadcast_to(frame_color(i), (side, side, 3)).copy()


def frame_id(rgb: np.ndarray) -> int:
    """Which frame a decoded (H, W, 3) uint8 array is."""
    digits = np.clip(np.rint((rgb.reshape(-1, 3).mean(0) - LOW) / STEP), 0, BASE - 1).astype(int)
    return int(digits[0] + digits[1] * BASE + digits[2] * BASE * BASE)


def write_video(
    path: Path,
    num_frames: int,
    rate: int = 10,
    codec: str = "mpeg4",
    gop: int = 10,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """A video whose frame i shows frame_color(i); `pts` (in `time_base` units) makes it variable frame rate."""
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream(codec, rate=rate)
    stream.width = stream.height = SIDE
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    stream.codec_context.gop_size = gop
    if codec == "mpeg4":
        stream.options = {"sc_threshold": "1000000000"}  # keyframes every `gop` frames, never on "scene cuts"
    if time_base is not None:
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(frame_array(i), format="rgb24")
        if pts is not None:
            frame.pts, frame.time_base = pts[i], time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    vfr_pts = [0, 100, 200, 300, 1000, 1100, 2500, 2600, 2700, 4000]
    return {
        "cfr": write_video(root / "cfr.mkv", 40, rate=10),  # 4.0 s
        "long": write_video(root / "long.mkv", 2000, rate=25, gop=50),  # 80 s, a keyframe every 50 frames
        "vfr": write_video(root / "vfr.mkv", len(vfr_pts), pts=vfr_pts, time_base=Fraction(1, 1000)),
        "short": write_video(root / "short.mkv", 5, rate=5),
        "mjpeg": write_video(root / "mjpeg.avi", 20, codec="mjpeg"),
        "avi": write_video(root / "mpeg4.avi", 20),
        "faststart": write_video(root / "faststart.mp4", 60, options={"movflags": "faststart"}),
        "mp4": write_video(root / "plain.mp4", 60),
    }


@pytest.fixture(scope="module")
def vp() -> HybridVLMVideoProcessor:
    return HybridVLMVideoProcessor(size={"height": 14, "width": 14}, do_center_crop=False)


def decode_everything(path: Path) -> list[np.ndarray]:
    """The reference: every frame, decoded from the start in one pass (what seeking must agree with)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def delivered(out: Any) -> list[int]:
    """Frame ids actually inside pixel_values_videos[0], read back from the un-normalised pixels."""
    return [frame_id(np.asarray(frame)) for frame in raw_frames(out)]


def raw_frames(out: Any) -> list[np.ndarray]:
    values = np.asarray(out["pixel_values_videos"][0], dtype=np.float64)  # (T, 3, H, W), normalised
    mean = np.asarray(vpm.HybridVLMVideoProcessor().image_mean)[:, None, None]
    std = np.asarray(vpm.HybridVLMVideoProcessor().image_std)[:, None, None]
    return [np.moveaxis((f * std + mean) * 255.0, 0, -1) for f in values]


# ------------------------------------------------------------------------------------------- pure sampling rules


def test_uniform_and_middle_rules_are_exact():
    assert uniform_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert uniform_indices(100, 8) == np.linspace(0, 99, 8).astype(int).tolist()
    assert uniform_indices(10, 1) == [0]
    assert uniform_indices(5, 5) == uniform_indices(5, 9) == [0, 1, 2, 3, 4]
    assert middle_indices(100, 8) == [6, 18, 31, 43, 56, 68, 81, 93]
    assert middle_indices(10, 1) == [5]
    assert middle_indices(3, 8) == [0, 1, 2]
    for total in (1, 7, 64, 1001):
        for count in (1, 2, 7, 64, 128):
            for rule in (uniform_indices, middle_indices):
                indices = rule(total, count)
                assert len(indices) == min(total, count)
                assert indices == sorted(set(indices)) and 0 <= indices[0] and indices[-1] < total
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        uniform_indices(10, 0)


def test_fps_rule_uses_timestamps_and_caps():
    stamps = [Fraction(i, 10) for i in range(40)]  # 10 fps, 4 s
    assert fps_indices(stamps, Fraction(4), 1) == [0, 10, 20, 30]
    assert fps_indices(stamps, Fraction(4), 2.5) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    assert fps_indices(stamps, Fraction(4), 100) == list(range(40))  # never a frame twice
    # More samples than max_frames: exactly max_frames sample times spread over the whole video.
    assert fps_indices(stamps, Fraction(4), 2, max_frames=3) == [0, 13, 26]
    vfr = [Fraction(t, 1000) for t in (0, 100, 200, 300, 1000, 1100, 2500, 2600, 2700, 4000)]
    assert fps_indices(vfr, Fraction(41, 10), 1) == [0, 4, 5, 8, 9]  # the frame on screen at 0, 1, 2, 3, 4 s
    with pytest.raises(ValueError, match="fps must be a positive number"):
        fps_indices(stamps, Fraction(4), 0)


def test_token_budget_uses_the_shared_count():
    spec = VisualTokenSpec(patch_size=14, num_prefix_tokens=1)
    per_frame = count_video_tokens(spec, 1, 28, 28)  # 4
    assert frames_for_token_budget(4 * 10, spec, 28, 28) == 10
    assert frames_for_token_budget(4 * 10 + 3, spec, 28, 28) == 10
    # longllava spends 3 markers per frame plus 1: 10 frames need 40 + 31 tokens.
    assert frames_for_token_budget(71, spec, 28, 28, "longllava") == 10
    assert frames_for_token_budget(70, spec, 28, 28, "longllava") == 9
    with pytest.raises(ValueError, match=f"less than one 28x28 frame needs \\({per_frame} tokens"):
        frames_for_token_budget(per_frame - 1, spec, 28, 28)


# ------------------------------------------------------------------------------------------- decoding and sampling


def test_uniform_sampling_from_a_file_is_exact(vp, media):
    out = vp(str(media["cfr"]), num_frames=8, return_tensors="pt")
    meta = out["video_metadata"][0]
    expected = uniform_indices(40, 8)
    assert out["pixel_values_videos"].shape == (1, 8, 3, 14, 14)
    assert meta["frame_indices"] == expected and delivered(out) == expected
    assert meta["timestamps"] == pytest.approx([i / 10 for i in expected])
    assert (meta["total_num_frames"], meta["fps"], meta["duration"]) == (40, 10.0, 4.0)
    assert meta["sampling"] == "uniform" and meta["requested_num_frames"] == 8


def test_middle_sampling_and_vamba_temporal_patch(vp, media):
    out = vp(media["cfr"], sampling="middle", num_frames=7)
    assert out["video_metadata"][0]["frame_indices"] == middle_indices(40, 7) == [2, 8, 14, 20, 25, 31, 37]
    assert delivered(out) == [2, 8, 14, 20, 25, 31, 37]
    # temporal_patch_size=2: an odd count loses its last frame.
    out = vp(media["cfr"], sampling="middle", num_frames=7, temporal_patch_size=2)
    assert out["video_metadata"][0]["frame_indices"] == [2, 8, 14, 20, 25, 31]
    with pytest.raises(ValueError, match="fewer than temporal_patch_size=2"):
        vp(media["cfr"], num_frames=1, temporal_patch_size=2)


def test_fps_sampling_with_cap(vp, media):
    out = vp(media["cfr"], fps=1)  # passing fps selects fps mode
    meta = out["video_metadata"][0]
    assert meta["sampling"] == "fps" and meta["frame_indices"] == [0, 10, 20, 30] == delivered(out)
    out = vp(media["cfr"], fps=2, max_frames=3)
    assert out["video_metadata"][0]["frame_indices"] == [0, 13, 26]
    # LongLLaVA's setting, 1 fps and at most 128: the 80 s video gives one frame per second...
    longllava = HybridVLMVideoProcessor(sampling="fps", fps=1, max_frames=128, size={"height": 14, "width": 14})
    out = longllava(media["long"])
    assert out["video_metadata"][0]["frame_indices"] == [25 * s for s in range(80)] == delivered(out)
    # ...and with a cap below 80, exactly the cap, spread over the whole video (one frame every 5 s here).
    out = longllava(media["long"], max_frames=16)
    assert out["video_metadata"][0]["frame_indices"] == [125 * j for j in range(16)] == delivered(out)
    with pytest.raises(ValueError, match="num_frames=4 and fps=1 were both given"):
        vp(media["cfr"], num_frames=4, fps=1)
    with pytest.raises(ValueError, match="sampling='fps' needs fps"):
        vp(media["cfr"], sampling="fps")


def test_any_frame_count_per_call(vp, media):
    """MMJamba's AnyFrame: one processor, any count at inference."""
    for count in (1, 3, 8, 16, 33):
        out = vp(media["cfr"], num_frames=count)
        assert out["pixel_values_videos"].shape[1] == count
        assert delivered(out) == uniform_indices(40, count)


def test_token_budget_picks_the_frame_count(vp, media):
    spec = VisualTokenSpec(patch_size=7, num_prefix_tokens=1)  # 14x14 frames -> 4 tokens each
    out = vp(media["cfr"], num_frames=None, max_visual_tokens=4 * 6, visual_token_spec=spec)
    assert out["video_metadata"][0]["frame_indices"] == uniform_indices(40, 6)
    out = vp(
        media["cfr"], num_frames=20, max_visual_tokens=4 * 6 + 19, visual_token_spec=spec, video_layout="longllava"
    )
    assert len(out["video_metadata"][0]["frame_indices"]) == 6  # 6 * 4 + 19 markers
    with pytest.raises(ValueError, match="needs the model's token spec"):
        vp(media["cfr"], max_visual_tokens=100)


def test_seeking_decodes_a_few_gops_not_the_whole_video(vp, media):
    """8 frames from 2000 (keyframe every 50): each costs at most one GOP of decoding."""
    out = vp(media["long"], num_frames=8)
    meta = out["video_metadata"][0]
    assert delivered(out) == meta["frame_indices"] == uniform_indices(2000, 8)
    assert meta["decoded_frames"] <= 8 * 50
    assert meta["decoded_frames"] < 2000 / 5
    out = vp(media["long"], sampling="middle", num_frames=16)
    assert delivered(out) == middle_indices(2000, 16)
    assert out["video_metadata"][0]["decoded_frames"] <= 16 * 50


@pytest.mark.parametrize(
    ("suffix", "codec", "container_format"),
    [
        (".mp4", "h264", None),
        (".webm", "libvpx-vp9", None),
        (".ts", "h264", None),  # one keyframe only: FFmpeg's seek finds nothing, decoding falls back to the start
        (".mpg", "mpeg2video", None),
        (".h264", "h264", "h264"),  # a raw stream: no timestamps, frames are numbered in order
    ],
)
def test_seeking_agrees_with_decoding_everything(vp, tmp_path, suffix, codec, container_format):
    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_array(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    reference = [frame_id(frame) for frame in decode_everything(path)]
    assert reference == list(range(30))
    for sampling in ("uniform", "middle"):
        out = vp(path, sampling=sampling, num_frames=6)
        meta = out["video_metadata"][0]
        assert meta["total_num_frames"] == 30 and meta["substituted_frames"] == 0
        assert (
            delivered(out)
            == meta["frame_indices"]
            == (uniform_indices if sampling == "uniform" else middle_indices)(30, 6)
        )


def test_variable_frame_rate_timestamps(vp, media):
    out = vp(media["vfr"], do_sample_frames=False)
    meta = out["video_metadata"][0]
    assert meta["total_num_frames"] == 10 and delivered(out) == list(range(10))
    assert meta["timestamps"] == pytest.approx([0, 0.1, 0.2, 0.3, 1.0, 1.1, 2.5, 2.6, 2.7, 4.0])
    assert meta["duration"] == pytest.approx(4.1)
    out = vp(media["vfr"], fps=1)
    assert out["video_metadata"][0]["frame_indices"] == [0, 4, 5, 8, 9] == delivered(out)
    assert out["video_metadata"][0]["timestamps"] == pytest.approx([0, 1.0, 1.1, 2.7, 4.0])


# ------------------------------------------------------------------------------------------- damaged and odd inputs


def test_frame_count_metadata_that_lies(vp, media, tmp_path, caplog):
    data = bytearray(media["avi"].read_bytes())
    strh = data.find(b"strh") + 8  # AVI stream header: dwLength sits 32 bytes into it
    data[strh + 32 : strh + 36] = struct.pack("<I", 100)
    avih = data.find(b"avih") + 8  # main header: dwTotalFrames at 16
    data[avih + 16 : avih + 20] = struct.pack("<I", 100)
    liar = tmp_path / "liar.avi"
    liar.write_bytes(bytes(data))
    with av.open(str(liar)) as container:
        assert container.streams.video[0].frames == 100  # what a metadata-trusting loader would believe
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = vp(liar, num_frames=8)
    meta = out["video_metadata"][0]
    assert (meta["total_num_frames"], meta["metadata_num_frames"]) == (20, 100)
    assert meta["frame_indices"] == uniform_indices(20, 8) == delivered(out)
    assert "says 100 frames but 20 are there" in caplog.text


def test_truncated_files_are_bounded(vp, media, tmp_path, caplog):
    # Index up front (faststart): the index promises 60 frames, the file holds fewer.
    data = media["faststart"].read_bytes()
    cut = tmp_path / "cut_faststart.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = vp(cut, num_frames=4)
    meta = out["video_metadata"][0]
    assert meta["metadata_num_frames"] == 60 and 0 < meta["total_num_frames"] < 60
    assert meta["frame_indices"] == uniform_indices(meta["total_num_frames"], 4)
    # The last frame's data is cut short: the decoder conceals it (here with the previous picture). Whatever it
    # shows, seeking must deliver exactly what decoding the whole file from the start shows at those indices.
    reference = decode_everything(cut)
    assert delivered(out) == [frame_id(reference[i]) for i in meta["frame_indices"]]
    assert "the container says 60 frames" in caplog.text
    # Index at the end (the default mp4 layout): cut off, the file is unreadable and says so.
    data = media["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodingError, match="is not a video PyAV can read|has no video stream"):
        vp(cut)
    # A stream container cut mid-packet: the frames before the cut are used.
    data = media["cfr"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2 + 7])
    out = vp(cut, do_sample_frames=False)
    total = out["video_metadata"][0]["total_num_frames"]
    assert 0 < total < 40 and delivered(out) == list(range(total))


def test_corrupt_packets_are_skipped_and_counted(vp, media, tmp_path, caplog):
    with av.open(str(media["mjpeg"])) as container:
        packets = [(p.pts, p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(media["mjpeg"].read_bytes())
    for _, pos, size in packets[9:11]:  # wipe frames 9 and 10
        data[pos : pos + size] = bytes(size)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = vp(damaged, do_sample_frames=False)
    meta = out["video_metadata"][0]
    # The requested count is delivered: frames 9 and 10 are replaced by the next decodable one, 11.
    assert meta["frame_indices"] == [*range(9), 11, 11, *range(11, 20)] == delivered(out)
    assert (meta["corrupt_packets"], meta["substituted_frames"]) == (2, 2)
    assert "skipped 2 corrupt packet(s)" in caplog.text and "wanted->used: 9->11, 10->11" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = vp(damaged, num_frames=5)  # 0, 4, 9, 14, 19: seeking to 9 lands on a broken frame
    assert out["video_metadata"][0]["frame_indices"] == [0, 4, 11, 14, 19] == delivered(out)
    assert "skipped 2 corrupt packet(s)" in caplog.text  # a packet met twice (re-seek) is counted once


def test_files_that_are_not_videos(vp, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("certainly not a video\n" * 20)
    with pytest.raises(ValueError, match=r"notes\.txt\) is a text file, not a video"):  # FFmpeg would play it
        vp(text)
    binary = tmp_path / "random.bin"
    binary.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"random\.bin\) is not a video PyAV can read"):
        vp(binary)
    still = tmp_path / "still.png"
    PIL.Image.fromarray(frame_array(3)).save(still)
    with pytest.raises(ValueError, match=r"still\.png\) is a still image \(png\), not a video"):
        vp(still)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a video PyAV can read"):
        vp(empty)
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(ValueError, match="has no video stream \\(streams: audio\\)"):
        vp(audio)
    with pytest.raises(FileNotFoundError, match="no such file"):
        vp(str(tmp_path / "missing.mp4"))
    with pytest.raises(TypeError, match="is a URL; download it first"):
        vp("https://example.com/video.mp4")


def test_zero_length_videos(vp, tmp_path):
    for suffix, message in ((".avi", "contains no video frames"), (".mp4", "has no video stream")):
        path = tmp_path / f"zero{suffix}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width = stream.height = SIDE
            stream.pix_fmt = "yuv420p"
            container.start_encoding()
        with pytest.raises(ValueError, match=message):
            vp(path)


def test_video_shorter_than_requested(vp, media, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = vp(media["short"], num_frames=8)
    assert out["video_metadata"][0]["frame_indices"] == [0, 1, 2, 3, 4] == delivered(out)
    assert "has only 5 frame(s) but num_frames=8 were asked for; returning all 5" in caplog.text
    with pytest.raises(ValueError, match=r"has only 5 frame\(s\) but num_frames=8 .*strict=True"):
        vp(media["short"], num_frames=8, strict=True)


def test_every_decode_is_bounded(vp, media, monkeypatch):
    with pytest.raises(VideoDecodingError, match="after decode_timeout=1e-09 s"):
        vp(media["long"], decode_timeout=1e-9)
    monkeypatch.setattr(video_decoding, "MAX_PACKETS", 100)
    with pytest.raises(VideoDecodingError, match="more than 100 packets; refusing to index it"):
        vp(media["long"])
    with pytest.raises(ValueError, match="decode_timeout must be a positive number"):
        vp(media["cfr"], decode_timeout=0)


# ------------------------------------------------------------------------------------------- inputs and outputs


def test_every_input_kind(vp, media):
    raw = media["cfr"].read_bytes()
    for source in (str(media["cfr"]), media["cfr"], raw, io.BytesIO(raw)):
        assert delivered(vp(source, num_frames=4)) == uniform_indices(40, 4)
    frames_hwc = np.stack([frame_array(i) for i in range(6)])
    as_pil = [PIL.Image.fromarray(f) for f in frames_hwc]
    as_tchw = torch.from_numpy(frames_hwc).permute(0, 3, 1, 2)
    for video in (frames_hwc, as_pil, as_tchw, list(frames_hwc)):
        out = vp(video)
        assert delivered(out) == list(range(6))  # frames given in memory are kept as given by default
        assert out["video_metadata"][0]["backend"] == "frames"
    out = vp(as_pil, do_sample_frames=True, num_frames=3)
    assert delivered(out) == [0, 2, 5]
    out = vp(frames_hwc, do_sample_frames=True, fps=2, video_metadata={"fps": 4})
    assert delivered(out) == [0, 2, 4] and out["video_metadata"][0]["timestamps"] == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="sampling='fps' needs the frame rate"):
        vp(frames_hwc, do_sample_frames=True, fps=2)
    batch = np.stack([frames_hwc, frames_hwc[::-1]])  # 5-D: two videos
    assert vp(batch)["pixel_values_videos"].shape == (2, 6, 3, 14, 14)
    with pytest.raises(TypeError, match="cannot read a int as a video"):
        vp(3)
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) \\['num_frame'\\]"):
        vp(frames_hwc, num_frame=3)


def test_videos_of_different_lengths_come_as_a_list(vp, media):
    out = vp([media["cfr"], media["short"]], num_frames=8, return_tensors="pt")
    values = out["pixel_values_videos"]
    assert isinstance(values, list) and [tuple(v.shape) for v in values] == [(8, 3, 14, 14), (5, 3, 14, 14)]
    assert all(isinstance(v, torch.Tensor) for v in values)
    out = vp([media["cfr"], media["long"]], num_frames=4, return_tensors="pt")
    assert out["pixel_values_videos"].shape == (2, 4, 3, 14, 14)


def test_frames_use_the_image_processors_pipeline(media):
    image_processor = HybridVLMImageProcessor(size={"shortest_edge": 14}, crop_size=12, image_mean=0.3, image_std=0.2)
    video_processor = HybridVLMVideoProcessor.from_image_processor(image_processor)
    frames = [
        PIL.Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), dtype=np.uint8)) for i in range(3)
    ]
    videos = video_processor(frames)["pixel_values_videos"][0]
    images = image_processor(frames)["pixel_values"]
    np.testing.assert_array_equal(videos, images)
    assert videos.shape == (3, 3, 12, 12)


def test_anyres_never_tiles_frames():
    image_processor = HybridVLMImageProcessor(size={"height": 14, "width": 14}, do_center_crop=False)
    if "anyres" in HybridVLMImageProcessor._param_names:
        image_processor = HybridVLMImageProcessor(size={"height": 14, "width": 14}, do_center_crop=False, max_tiles=4)
    video_processor = HybridVLMVideoProcessor.from_image_processor(image_processor)
    out = video_processor(np.zeros((3, 40, 10, 3), dtype=np.uint8))
    assert out["pixel_values_videos"].shape == (1, 3, 3, 14, 14)


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
def test_optional_backends(vp, media, backend):
    try:
        __import__(backend)
    except ImportError:
        with pytest.raises(ValueError, match=f"backend='{backend}' needs the '{backend}' package"):
            vp(media["cfr"], backend=backend)
        return
    out = vp(media["cfr"], num_frames=4, backend=backend)
    assert delivered(out) == uniform_indices(40, 4)


# ------------------------------------------------------------------------------------------- saving and loading


def test_save_load_round_trip(tmp_path, media):
    processor = HybridVLMVideoProcessor(
        size={"shortest_edge": 20},
        crop_size=16,
        sampling="fps",
        fps=2,
        max_frames=64,
        temporal_patch_size=2,
        strict=True,
        decode_timeout=30,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "HybridVLMVideoProcessor" and saved["fps"] == 2
    loaded = HybridVLMVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    np.testing.assert_array_equal(
        loaded(media["cfr"])["pixel_values_videos"], processor(media["cfr"])["pixel_values_videos"]
    )
    assert HybridVLMVideoProcessor.from_pretrained(tmp_path, num_frames=3, sampling="uniform").num_frames == 3
    # A folder that only has an image processor: its frame settings, default sampling.
    legacy = tmp_path / "legacy"
    image_processor = HybridVLMImageProcessor(size={"shortest_edge": 20}, crop_size=18, image_mean=0.1)
    image_processor.save_pretrained(legacy)
    derived = HybridVLMVideoProcessor.from_pretrained(legacy)
    assert derived.crop_size == {"height": 18, "width": 18} and derived.image_mean == [0.1] * 3
    assert derived.sampling == "uniform" and derived.num_frames == 8
    (tmp_path / "nothing_saved").mkdir()
    with pytest.raises(OSError, match="found none of video_preprocessor_config.json"):
        HybridVLMVideoProcessor.from_pretrained(tmp_path / "nothing_saved")
    with pytest.raises(OSError, match="is not a local folder and could not be read as a Hub repo"):
        HybridVLMVideoProcessor.from_pretrained(tmp_path / "nowhere")


def test_invalid_settings_are_explained():
    with pytest.raises(ValueError, match="unknown sampling 'random'"):
        HybridVLMVideoProcessor(sampling="random")
    with pytest.raises(ValueError, match="sampling='fps' needs fps"):
        HybridVLMVideoProcessor(sampling="fps")
    with pytest.raises(ValueError, match="unknown backend 'ffmpeg'"):
        HybridVLMVideoProcessor(backend="ffmpeg")
    with pytest.raises(ValueError, match="num_frames must be an int >= 1, got 0"):
        HybridVLMVideoProcessor(num_frames=0)
    with pytest.raises(TypeError, match="strict must be True or False"):
        HybridVLMVideoProcessor(strict="yes")


if __name__ == "__main__":  # pragma: no cover - handy for poking at a file by hand
    print(json.dumps(HybridVLMVideoProcessor()(sys.argv[1], num_frames=8)["video_metadata"], indent=2))


def test_a_list_of_image_files_is_one_video(tmp_path):
    """Frame files in a list are one video's frames (transformers' chat blocks pass videos so); video files in a list
    are videos."""
    from hybrid_vlm.video_processing_hybrid_vlm import is_video, make_video_list

    paths = []
    for index in range(3):
        path = tmp_path / f"frame_{index}.png"
        PIL.Image.fromarray(np.full((20, 30, 3), 40 * index, np.uint8)).save(path)
        paths.append(str(path))
    assert is_video(paths) and make_video_list(paths) == [paths]
    assert make_video_list(["a.mp4", "b.mkv"]) == ["a.mp4", "b.mkv"]
    processor = HybridVLMVideoProcessor(size={"height": 28, "width": 28}, do_center_crop=False)
    from_files = processor([paths], return_tensors="np")["pixel_values_videos"]
    from_images = processor([[PIL.Image.open(p) for p in paths]], return_tensors="np")["pixel_values_videos"]
    assert from_files.shape == (1, 3, 3, 28, 28) and np.array_equal(from_files, from_images)


def test_a_folder_is_not_a_video(tmp_path):
    from hybrid_vlm.video_processing_hybrid_vlm import HybridVLMVideoProcessor

    with pytest.raises(ValueError, match="is a folder .* not a video file; pass one video file"):
        HybridVLMVideoProcessor(size={"shortest_edge": 28}, crop_size=28)(str(tmp_path))
