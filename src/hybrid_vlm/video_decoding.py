"""Reading frames out of video files: PyAV by seeking (the default), decord and torchcodec when installed.

Each backend is a reader with the same three calls: `index()` (frame count, every frame's timestamp and the frame size,
before anything is decoded), `read(indices)` (RGB arrays of the wanted frames) and `close()`. `open_video` picks the
reader and normalises the source (path, bytes, file-like object). The backend packages are imported only when a reader
is built, so none of them is needed to import this module.

PyAV's reader first indexes the packets of the video stream without decoding them: that gives the true frame count
(container metadata lies), every frame's presentation timestamp (variable frame rate is exact) and the keyframes. It
then seeks to the keyframe before each wanted frame and decodes forward only to it, so sampling 16 frames from an hour
costs about 16 GOPs, not an hour. Corrupt packets are skipped and counted; every loop is bounded by a wall-clock
deadline and an iteration cap, so no file can hang the caller.
"""

from __future__ import annotations

import bisect
import io
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

_NAME = "HybridVLMVideoProcessor"


BACKENDS: tuple[str, ...] = ("auto", "pyav", "torchcodec", "decord")
# Seeking costs about this many decoded frames (flushing the decoder, re-reading from the keyframe): forward decoding
# is preferred when the next wanted frame is at most this many frames past the next keyframe.
_SEEK_COST_FRAMES = 4
# Extra frames a decoder may emit past a GOP (B-frame reordering, codec delay) before the iteration cap trips.
_DECODE_SLACK_FRAMES = 64
# Iteration cap of the indexing pass: about 46 hours at 60 fps. Module-level so tests (and users) can lower it.
MAX_PACKETS = 10_000_000


class VideoDecodingError(ValueError):
    """A video could not be read: not a video, no frames, nothing decodable, or a limit (time, iterations) was hit."""


class _Timestamps(Sequence):
    """Exact seconds from the first frame, computed on access from integer pts (hours of video index instantly)."""

    def __init__(self, pts: list[int], time_base: Fraction) -> None:
        self._pts, self._time_base = pts, time_base

    def __len__(self) -> int:
        return len(self._pts)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return (self._pts[index] - self._pts[0]) * self._time_base


@dataclass
class _VideoIndex:
    """What is known about a video before any frame is decoded."""

    timestamps: Sequence[Fraction]  # seconds from the first frame, one per frame, sorted
    duration: Fraction
    height: int
    width: int
    metadata_num_frames: int | None = None
    metadata_fps: float | None = None
    notes: list[str] = field(default_factory=list)  # problems met while indexing (reported as a warning)

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)


@dataclass
class _ReadStats:
    decoded_frames: int = 0
    corrupt_packets: int = 0
    substituted: list[tuple[int, int]] = field(default_factory=list)  # (wanted index, delivered index)


class _Deadline:
    """Wall-clock limit for everything done to one video."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.end = time.monotonic() + seconds

    def check(self, stage: str) -> None:
        if time.monotonic() > self.end:
            raise VideoDecodingError(
                f"{_NAME}: gave up {stage} {self.what} after decode_timeout={self.seconds:g} s. The file may be "
                "damaged or far larger than expected; raise decode_timeout if it is just long."
            )


def _is_av_error(err: BaseException) -> bool:
    import av

    return isinstance(err, av.error.FFmpegError)


class _PyAVReader:
    """Index the packets once, then decode only the wanted frames by seeking to the keyframe before each."""

    name = "pyav"

    def __init__(self, source: Any, what: str, deadline: _Deadline) -> None:
        import av

        self.what, self.deadline, self.max_packets = what, deadline, MAX_PACKETS
        self.stats = _ReadStats()
        self._bad_packets: set[tuple[Any, Any]] = set()
        self._source = source
        # Sequential mode decodes from the start instead of seeking: for streams without timestamps (raw .h264) and
        # for files whose seeking lands nowhere. Ordinal mode numbers frames by output order (no timestamps at all).
        self._sequential = self._ordinal = False
        self._imprecise_seeks = 0
        self._reformatter: Any = None
        try:
            self.container = self._open()
        except Exception as err:
            deadline.check("opening")  # FFmpeg's interrupt on timeout reads like any other open failure
            if isinstance(err, (av.error.FFmpegError, OSError, UnicodeDecodeError)):
                raise VideoDecodingError(
                    f"{_NAME}: {what} is not a video PyAV can read ({err}). Pass a video file (mp4, mkv, webm, avi, "
                    "...), a file-like object holding one, or the frames themselves."
                ) from err
            raise
        try:
            if not self.container.streams.video:
                kinds = sorted({s.type for s in self.container.streams}) or ["none"]
                raise VideoDecodingError(
                    f"{_NAME}: {what} has no video stream (streams: {', '.join(kinds)}); pass a file with video in it."
                )
            self.stream = self.container.streams.video[0]
            self._index: _VideoIndex | None = None
            # FFmpeg also "plays" text files (as ANSI art) and still images; neither is a video a model should get.
            demuxer, codec = self.container.format.name, self.stream.codec_context.name
            if demuxer == "tty" or codec == "ansi":
                raise VideoDecodingError(f"{_NAME}: {what} is a text file, not a video; pass a video file.")
            if demuxer == "image2" or demuxer.endswith("_pipe"):
                raise VideoDecodingError(
                    f"{_NAME}: {what} is a still image ({codec}), not a video. Pass it with images=..., or as a "
                    "one-frame video given as a list of frames ([PIL.Image.open(path)])."
                )
        except BaseException:
            self.container.close()
            raise

    def _open(self) -> Any:
        import av

        # `timeout` makes FFmpeg's own I/O interruptible; the deadline covers the Python-side loops.
        return av.open(self._source, mode="r", timeout=self.deadline.seconds, metadata_errors="ignore")

    def _restart(self) -> None:
        """Reopen the file and decode from its first packet (the fallback when seeking cannot be trusted)."""
        self.container.close()
        if hasattr(self._source, "seek"):
            self._source.seek(0)
        self.container = self._open()
        self.stream = self.container.streams.video[0]
        self._iter, self._position, self._at_end, self._damaged = self._frames(), None, False, False

    def close(self) -> None:
        self.container.close()

    # -------------------------------------------------------------- indexing

    def index(self) -> _VideoIndex:
        """Demux (no decoding) every packet of the stream: true frame count, timestamps and keyframes."""
        stream = self.stream
        pts: list[int] = []
        keyframes: list[int] = []
        durations: dict[int, int] = {}
        notes: list[str] = []
        without_time = 0
        demux = self.container.demux(stream)
        packets = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except Exception as err:
                if not _is_av_error(err):
                    raise
                notes.append(f"reading stopped after {len(pts)} frames: {err}")
                break
            packets += 1
            if packets % 256 == 0:
                self.deadline.check("indexing")
            if packets > self.max_packets:
                raise VideoDecodingError(
                    f"{_NAME}: {self.what} has more than {self.max_packets} packets; refusing to index it (iteration "
                    "cap). Cut the video first, or raise hybrid_vlm.video_decoding.MAX_PACKETS if it is "
                    "really that long."
                )
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                without_time += 1
                continue
            pts.append(stamp)
            if packet.is_keyframe:
                keyframes.append(stamp)
            if packet.duration:
                durations[stamp] = packet.duration
        unique = sorted(set(pts))
        if len(unique) < len(pts):
            notes.append(f"{len(pts) - len(unique)} packet(s) repeat an earlier timestamp and were ignored")
        if without_time:
            notes.append(f"{without_time} packet(s) without any timestamp were ignored")
        rate = stream.average_rate or stream.guessed_rate
        if not unique and without_time:
            # A raw stream (e.g. .h264) has no timestamps at all: frames are numbered in order at the nominal rate,
            # and decoded from the start (there is nothing to seek by).
            unique, keyframes, durations = list(range(without_time)), [], {}
            notes = [n for n in notes if "without any timestamp" not in n]
            self._sequential = self._ordinal = True
            stream_time_base = 1 / Fraction(rate) if rate else Fraction(1, 25)
        else:
            stream_time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        if not unique:
            raise VideoDecodingError(
                f"{_NAME}: {self.what} contains no video frames"
                + (f" ({'; '.join(notes)})" if notes else "")
                + ". It is empty or truncated before its first frame."
            )
        time_base = stream_time_base
        self._pts = unique
        self._pts_to_index = {value: i for i, value in enumerate(unique)}
        self._key_indices = sorted({self._pts_to_index[k] for k in keyframes})
        # The longest run of frames between keyframes bounds the decoding one wanted frame can need. Without a keyframe
        # flag on the first frame, decoding may have to start at the beginning: allow for the whole stream.
        keys = self._key_indices
        if keys and keys[0] == 0:
            self._max_gop = max(b - a for a, b in zip(keys, [*keys[1:], len(unique)]))
        else:
            self._max_gop = len(unique)
        timestamps = _Timestamps(unique, time_base)
        last = durations.get(unique[-1])
        if last:
            last_duration = last * time_base
        elif len(unique) > 1:
            last_duration = Fraction(int(np.median(np.diff(unique)))) * time_base
        else:
            last_duration = 1 / Fraction(rate) if rate else Fraction(0)
        duration = timestamps[-1] + last_duration
        if duration <= 0:
            duration = Fraction(1, 1000)
        claimed = int(stream.frames or 0) or None
        if claimed is not None and claimed != len(unique):
            notes.append(f"the container says {claimed} frames but {len(unique)} are there; using {len(unique)}")
        average = stream.average_rate or stream.guessed_rate
        context = stream.codec_context
        self._index = _VideoIndex(
            timestamps=timestamps,
            duration=duration,
            height=int(context.height or 0),
            width=int(context.width or 0),
            metadata_num_frames=claimed,
            metadata_fps=float(average) if average else None,
            notes=notes,
        )
        return self._index

    # -------------------------------------------------------------- decoding

    def _frames(self) -> Iterator[Any]:
        """Decode from the current position; corrupt packets are skipped and counted, never raised."""
        demux = self.container.demux(self.stream)
        while True:
            self.deadline.check("decoding")
            try:
                packet = next(demux)
            except StopIteration:
                return
            except Exception as err:
                if not _is_av_error(err):
                    raise
                self.stats.corrupt_packets += 1
                self._damaged = True  # the demuxer cannot go on from here; a later seek may get past the damage
                return
            try:
                frames = packet.decode()
            except Exception as err:
                if not _is_av_error(err):
                    raise
                key = (packet.pts, packet.pos)
                if key not in self._bad_packets:  # a packet decoded twice (after a re-seek) is counted once
                    self._bad_packets.add(key)
                    self.stats.corrupt_packets += 1
                continue
            for frame in frames:
                self.stats.decoded_frames += 1
                if self.stats.decoded_frames > self._decode_cap:
                    raise VideoDecodingError(
                        f"{_NAME}: decoded {self._decode_cap} frames of {self.what} without reaching the wanted ones "
                        "(iteration cap); the file's timestamps or keyframes are probably broken."
                    )
                yield frame

    def _frame_index(self, frame: Any, previous: int | None) -> int:
        stamp = None if self._ordinal else (frame.pts if frame.pts is not None else frame.dts)
        if stamp is None:
            return 0 if previous is None else previous + 1
        index = self._pts_to_index.get(stamp)
        if index is None:  # a timestamp the demuxer did not report: place it by value
            index = max(0, bisect.bisect_right(self._pts, stamp) - 1)
        return index

    def _find(self, target: int) -> tuple[Any, int] | None:
        """The first decodable frame at or after frame ``target``, or None when the stream ends before one."""
        if self._at_end and self._position is not None and target > self._position:
            return None
        if self._sequential:
            return self._find_sequentially(target)
        keys = self._key_indices
        key = keys[bisect.bisect_right(keys, target) - 1] if keys and keys[0] <= target else 0
        forward_ok = self._iter is not None and self._position is not None and self._position < target
        seek_to: int | None = None if forward_ok and key - self._position <= _SEEK_COST_FRAMES else key
        for attempt in range(4):
            if seek_to is not None:
                self.container.seek(self._pts[seek_to], backward=True, any_frame=False, stream=self.stream)
                self._iter, self._position, self._at_end, self._damaged = self._frames(), None, False, False
            fresh = seek_to is not None
            overshoot = False
            assert self._iter is not None
            for frame in self._iter:
                index = self._frame_index(frame, self._position)
                self._position = index
                if fresh and index > target and seek_to and attempt < 3:
                    overshoot = True  # the seek landed after the target: retry from an earlier keyframe
                    break
                if fresh and seek_to is not None and index + self._max_gop + _SEEK_COST_FRAMES < seek_to:
                    # The seek landed far before its keyframe (MPEG-PS and other demuxers without an index often
                    # go back to the start): each further seek would decode the same frames again. Twice is
                    # enough evidence; then keep decoding forward, in one pass for all the remaining targets.
                    self._imprecise_seeks += 1
                    self._sequential = self._imprecise_seeks >= 2
                fresh = False
                if index < target:
                    self._before = (frame, index)
                    continue
                return frame, index
            if not overshoot:
                if fresh and not self._damaged:
                    # The seek produced no frame at all (some demuxers cannot seek in some files): decode from the
                    # start from now on instead.
                    self._sequential = True
                    self._iter = None
                    return self._find_sequentially(target)
                self._at_end = not self._damaged
                self._iter = None
                return None
            earlier = [k for k in keys if k < seek_to]
            seek_to = earlier[-1] if earlier else 0
        return None

    def _find_sequentially(self, target: int) -> tuple[Any, int] | None:
        """`_find` without seeking: continue decoding forward, or restart from the first frame when past it."""
        if self._iter is None or (self._position is not None and self._position >= target):
            self._restart()
        assert self._iter is not None
        for frame in self._iter:
            index = self._frame_index(frame, self._position)
            self._position = index
            if index < target:
                self._before = (frame, index)
                continue
            return frame, index
        self._at_end = not self._damaged
        self._iter = None
        return None

    def read(self, wanted: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        """Frames at the sorted, distinct indices ``wanted`` as (RGB uint8 array, index actually delivered).

        A wanted frame that cannot be decoded is replaced by the next decodable one (or, past the last decodable
        frame, by the last one) and recorded in ``stats.substituted``.
        """
        if self._index is None:
            self.index()
        self._decode_cap = len(wanted) * (self._max_gop + _DECODE_SLACK_FRAMES) + _DECODE_SLACK_FRAMES
        self._iter: Iterator[Any] | None = None
        self._position: int | None = None  # index of the last frame the decoder produced
        self._before: tuple[Any, int] | None = None  # the last decoded frame before the current target
        self._at_end = self._damaged = False
        out: list[tuple[np.ndarray, int]] = []
        taken: tuple[np.ndarray, int] | None = None  # the last frame delivered
        for target in wanted:
            if taken is None or taken[1] < target:
                found = self._find(target)
                if found is not None:
                    taken = (self._to_rgb(found[0]), found[1])
                elif self._before is not None and (taken is None or self._before[1] > taken[1]):
                    taken = (self._to_rgb(self._before[0]), self._before[1])
                if taken is None:
                    raise VideoDecodingError(
                        f"{_NAME}: no frame of {self.what} could be decoded ({self.stats.corrupt_packets} corrupt "
                        "packet(s)). The file is damaged or uses a codec this FFmpeg build cannot decode."
                    )
            # else: decoding for an earlier target already ran past this one, so its own frame was not decodable
            if taken[1] != target:
                self.stats.substituted.append((target, taken[1]))
            out.append(taken)
        return out

    def _to_rgb(self, frame: Any) -> np.ndarray:
        # One reformatter per video keeps its conversion context: ~25x faster than frame.to_ndarray(format=...).
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()


class _DecordReader:
    """decord, when installed and asked for (``backend="decord"``): its own index, timestamps and batched reads."""

    name = "decord"

    def __init__(self, source: Any, what: str, deadline: _Deadline) -> None:
        import decord

        self.what, self.deadline, self.stats = what, deadline, _ReadStats()
        try:
            self.reader = decord.VideoReader(source, ctx=decord.cpu(0))
        except Exception as err:  # decord raises its own DECORDError
            raise VideoDecodingError(f"{_NAME}: {what} is not a video decord can read ({err}).") from err

    def close(self) -> None:
        self.reader = None

    def index(self) -> _VideoIndex:
        total = len(self.reader)
        if total == 0:
            raise VideoDecodingError(f"{_NAME}: {self.what} contains no video frames.")
        spans = np.asarray(self.reader.get_frame_timestamp(list(range(total))), dtype=np.float64).reshape(total, 2)
        starts = [Fraction(float(s)).limit_denominator(1_000_000) for s in spans[:, 0]]
        first = starts[0]
        timestamps = sorted(s - first for s in starts)
        duration = Fraction(float(spans[-1, 1])).limit_denominator(1_000_000) - first
        height, width = self.reader[0].shape[:2]
        return _VideoIndex(
            timestamps,
            duration if duration > 0 else Fraction(1, 1000),
            int(height),
            int(width),
            total,
            float(self.reader.get_avg_fps()),
        )

    def read(self, wanted: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        self.deadline.check("decoding")
        batch = self.reader.get_batch(list(wanted)).asnumpy()
        self.stats.decoded_frames += len(wanted)
        return [(batch[i], int(index)) for i, index in enumerate(wanted)]


class _TorchCodecReader:
    """torchcodec, when installed and asked for (``backend="torchcodec"``), in its exact seek mode.

    torchcodec does not expose every frame's timestamp without decoding, so ``fps`` sampling with this backend assumes
    a constant frame rate (``average_fps``); use the default PyAV backend for variable-frame-rate files.
    """

    name = "torchcodec"

    def __init__(self, source: Any, what: str, deadline: _Deadline) -> None:
        from torchcodec.decoders import VideoDecoder

        self.what, self.deadline, self.stats = what, deadline, _ReadStats()
        if hasattr(source, "read"):
            source = source.read()
        try:
            self.decoder = VideoDecoder(source, dimension_order="NHWC", seek_mode="exact")
        except Exception as err:
            raise VideoDecodingError(f"{_NAME}: {what} is not a video torchcodec can read ({err}).") from err

    def close(self) -> None:
        self.decoder = None

    def index(self) -> _VideoIndex:
        meta = self.decoder.metadata
        total = int(meta.num_frames or 0)
        if total == 0:
            raise VideoDecodingError(f"{_NAME}: {self.what} contains no video frames.")
        fps = Fraction(float(meta.average_fps or 1.0)).limit_denominator(1_000_000)
        timestamps = [i / fps for i in range(total)]
        return _VideoIndex(timestamps, total / fps, int(meta.height or 0), int(meta.width or 0), total, float(fps))

    def read(self, wanted: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        self.deadline.check("decoding")
        batch = self.decoder.get_frames_at(indices=list(wanted)).data.numpy()
        self.stats.decoded_frames += len(wanted)
        return [(batch[i], int(index)) for i, index in enumerate(wanted)]


_READERS = {"pyav": _PyAVReader, "decord": _DecordReader, "torchcodec": _TorchCodecReader}
_BACKEND_PACKAGES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec"}


def _reader_class(backend: str) -> type:
    name = "pyav" if backend == "auto" else backend
    try:
        __import__(_BACKEND_PACKAGES[name])
    except ImportError as err:
        raise ValueError(
            f"{_NAME}: backend={backend!r} needs the {_BACKEND_PACKAGES[name]!r} package, which is not installed "
            f"({err}); install it or use backend='pyav'."
        ) from err
    return _READERS[name]


def open_video(video: Any, what: str, backend: str, decode_timeout: float) -> Any:
    """A reader of `backend` for `video` (a path, bytes or a file-like object), bounded by `decode_timeout` s."""
    reader_class = _reader_class(backend)
    source = video
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if isinstance(path, str) and path.startswith(("http://", "https://")):
            raise TypeError(f"{_NAME}: {what} is a URL; download it first and pass the local path or the bytes.")
        if os.path.isdir(path):
            raise ValueError(
                f"{_NAME}: {what} is a folder ({path!r}), not a video file; pass one video file, or the folder's "
                "frames as a list of image paths."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{_NAME}: {what}: no such file {path!r}.")
        source = path
    elif isinstance(video, (bytes, bytearray)):
        source = io.BytesIO(bytes(video))
    elif hasattr(video, "seekable") and not video.seekable():
        source = io.BytesIO(video.read())  # seeking needs random access
    return reader_class(source, what, _Deadline(decode_timeout, what))
