"""Probe, decode, resample, measure and encode audio, block by block.

libsndfile (through soundfile) reads WAV, FLAC, MP3 and Ogg (Vorbis, Opus); Debian's
`ffmpeg`/`ffprobe` read the rest (m4a/AAC, WebM, ...), as processes run with an
argument list, a time limit and bounded output. A recording is never held whole:
`blocks()` yields float32 blocks of at most BLOCK_SECONDS, and `Meter` measures a
recording from its blocks, so that an hour of 48 kHz stereo costs a few blocks of
memory.
"""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from pipeline.ledger import Rejected

BLOCK_SECONDS = 10.0
FFMPEG_OUTPUT_CAP = 64 << 10  # bytes of ffprobe/ffmpeg messages kept


@dataclass
class Probe:
    """What a header says, before anything is decoded."""

    duration: float | None
    sample_rate: int
    channels: int
    codec: str
    reader: str  # "soundfile" or "ffmpeg"


def sniff(head: bytes) -> str | None:
    """The container by its first bytes (the file name is not trusted)."""
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"RF64") or head[:4] in (b"RF64", b"BW64"):
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "webm"
    if head[:4] in (b"FORM", b"caff", b".snd"):
        return "other"
    return None


def _limited(process: subprocess.Popen, timeout: float) -> tuple[bytes, bytes]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise Rejected("decode_timeout", f"ffmpeg did not finish within {timeout:g}s") from None
    return out, err[-FFMPEG_OUTPUT_CAP:]


def ffprobe(path: str, timeout: float) -> Probe:
    """The first audio stream's header, by ffprobe (argument list, time limit, bounded output)."""
    process = subprocess.Popen(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                "stream=codec_name,sample_rate,channels,duration:format=duration",
                                "-of", "json", "-protocol_whitelist", "file", "-i", path],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _limited(process, timeout)
    try:
        info = json.loads(out[:FFMPEG_OUTPUT_CAP] or b"{}")
    except ValueError:
        info = {}
    streams = info.get("streams") or []
    if process.returncode != 0 or not streams:
        why = err.decode("utf-8", "replace").strip().splitlines()
        raise Rejected("not_audio" if not streams else "corrupt",
                       f"ffprobe finds no audio stream ({why[-1][:200] if why else 'no output'})")
    s = streams[0]
    duration = s.get("duration") or (info.get("format") or {}).get("duration")
    return Probe(float(duration) if duration not in (None, "N/A") else None, int(s.get("sample_rate") or 0),
                 int(s.get("channels") or 0), str(s.get("codec_name")), "ffmpeg")


def wav_shortfall(path: str) -> int:
    """Bytes a WAV's data chunk announces beyond the end of the file (0 when whole):
    libsndfile reads a cut WAV without complaint, up to where it ends."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                return max(0, pos + 8 + length - size) if length != 0xFFFFFFFF else 0
            pos += 8 + length + (length & 1)
    return 0


def probe(path: str, timeout: float) -> Probe:
    """The header by libsndfile, else ffprobe."""
    import soundfile as sf

    try:
        info = sf.info(path)
        if info.frames >= 0 and info.samplerate > 0:
            return Probe(info.frames / info.samplerate if info.frames else 0.0, info.samplerate, info.channels,
                         f"{info.format}/{info.subtype}".lower(), "soundfile")
    except Exception:  # noqa: BLE001 - libsndfile does not know it: ffprobe may
        pass
    return ffprobe(path, timeout)


def blocks(path: str, found: Probe, timeout: float, seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """float32 blocks (frames, channels) of a recording at its own rate."""
    if found.reader == "soundfile":
        import soundfile as sf

        try:
            with sf.SoundFile(path) as f:
                for block in f.blocks(blocksize=max(1, int(seconds * found.sample_rate)), dtype="float32",
                                      always_2d=True):
                    yield block
        except Exception as e:  # noqa: BLE001 - a broken frame in the middle
            if isinstance(e, Rejected):
                raise
            raise Rejected("truncated" if "unexpected" in str(e).lower() or "end of file" in str(e).lower()
                           else "corrupt", f"does not decode: {type(e).__name__}: {str(e)[:200]}") from None
        return
    yield from _ffmpeg_blocks(path, found, timeout, seconds)


def _ffmpeg_blocks(path: str, found: Probe, timeout: float, seconds: float) -> Iterator[np.ndarray]:
    """Decoded by ffmpeg as raw float32, read in blocks; killed at the deadline."""
    channels = max(1, found.channels)
    process = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-protocol_whitelist", "file", "-i", path, "-vn", "-f", "f32le", "-acodec",
                                "pcm_f32le", "-ac", str(channels), "-ar", str(found.sample_rate), "pipe:1"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read(FFMPEG_OUTPUT_CAP)), daemon=True)
    reader.start()
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    step = max(1, int(seconds * found.sample_rate)) * channels * 4
    try:
        while True:
            chunk = process.stdout.read(step)
            if not chunk:
                break
            chunk = chunk[: len(chunk) - len(chunk) % (4 * channels)]
            yield np.frombuffer(chunk, dtype="<f4").reshape(-1, channels)
        process.wait()
    finally:
        fired = not timer.is_alive()
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=1)
    if fired and process.returncode != 0:
        raise Rejected("decode_timeout", f"ffmpeg did not finish within {timeout:g}s")
    if process.returncode != 0:
        why = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        raise Rejected("corrupt", f"ffmpeg: {why[-1][:200] if why else 'failed'}")


def mix(block: np.ndarray, policy: str) -> np.ndarray:
    """The channel policy: mono (mean of the channels), first, or keep."""
    if policy == "mono" and block.shape[1] > 1:
        # a matrix product: 10-20x faster than mean(axis=1) over a few interleaved channels
        return block @ np.full((block.shape[1], 1), 1 / block.shape[1], np.float32)
    if policy == "first" and block.shape[1] > 1:
        return block[:, :1]
    return block


def db(value: float, floor: float = -200.0) -> float:
    return max(floor, 20 * math.log10(value)) if value > 0 else floor


# -- measuring, block by block -----------------------------------------------------------
SILENCE_FRAME = 0.02  # s: frames for the silence ratio and the SNR estimate
SILENCE_DBFS = -60.0  # a 20 ms frame this quiet (RMS) is silence
CLIP_LEVEL = 0.999  # |sample| at or above this (of full scale) is clipped
SNR_CEILING = 100.0  # dB: digital silence between words would read as infinite
BAND_EDGE_DB = 60.0  # dB under the spectrum's peak: above 16-bit dither, below any real content


def _k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """ITU-R BS.1770-4's K-weighting (a high shelf, then a high pass), for any sample rate
    (coefficients derived from the analog prototype, as pyloudnorm does)."""
    out = []
    for gain, q, fc, kind in ((4.0, 1 / math.sqrt(2), 1500.0, "shelf"), (0.0, 0.5, 38.0, "highpass")):
        a_ = 10 ** (gain / 40)
        w0 = 2 * math.pi * fc / rate
        alpha = math.sin(w0) / (2 * q)
        if kind == "shelf":
            b = [a_ * ((a_ + 1) + (a_ - 1) * math.cos(w0) + 2 * math.sqrt(a_) * alpha),
                 -2 * a_ * ((a_ - 1) + (a_ + 1) * math.cos(w0)),
                 a_ * ((a_ + 1) + (a_ - 1) * math.cos(w0) - 2 * math.sqrt(a_) * alpha)]
            a = [(a_ + 1) - (a_ - 1) * math.cos(w0) + 2 * math.sqrt(a_) * alpha,
                 2 * ((a_ - 1) - (a_ + 1) * math.cos(w0)),
                 (a_ + 1) - (a_ - 1) * math.cos(w0) - 2 * math.sqrt(a_) * alpha]
        else:
            b = [(1 + math.cos(w0)) / 2, -(1 + math.cos(w0)), (1 + math.cos(w0)) / 2]
            a = [1 + alpha, -2 * math.cos(w0), 1 - alpha]
        out.append((np.array(b) / a[0], np.array(a) / a[0]))
    return out


@dataclass
class Meter:
    """Signal metrics of a recording from its blocks (frames, channels), float32 in [-1, 1].

    snr_db is a frame-energy percentile estimate: noise = mean power of the quietest 10%
    of 20 ms frames, signal = mean power of the loudest 50% minus the noise. It needs
    pauses (speech has them); on a signal without any it reads low.
    bandwidth_hz is the band edge of the long-term spectrum (Blackman-Harris-windowed
    4096-point frames): the highest frequency within BAND_EDGE_DB of the spectrum's peak. Audio
    upsampled from 8 kHz reads about 3.9 kHz, from 16 kHz about 7.7 kHz, whatever its
    rate now; a pure tone reads its own frequency. (A 99% energy roll-off does not
    separate them: espeak-ng speech at 22 kHz rolls off at 3.6-7 kHz, its 8 kHz copy at
    3.4 kHz.)"""

    rate: int
    channels: int
    frames: int = 0
    sum_sq: float = 0.0
    peak: float = 0.0
    true_peak: float = 0.0
    sum_: float = 0.0
    clipped: int = 0
    nonfinite: int = 0
    frame_power: list = field(default_factory=list)
    _carry: np.ndarray | None = None
    _k_state: np.ndarray | None = None
    _hop_power: list = field(default_factory=list)
    _hop_carry: np.ndarray | None = None
    _spectrum: np.ndarray | None = None
    _upsampler: object | None = None

    def __post_init__(self) -> None:
        import soxr

        self._filters = _k_weighting(self.rate)
        self._sos = np.array([np.concatenate([b, a]) for b, a in self._filters])
        self._upsampler = soxr.ResampleStream(self.rate, self.rate * 4, self.channels, dtype="float32")

    def add(self, block: np.ndarray) -> None:
        from scipy.signal import sosfilt

        finite = np.isfinite(block)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            block = np.where(finite, block, 0.0).astype(np.float32)
        self.frames += len(block)
        x = block.astype(np.float64)
        flat = x.ravel()
        self.sum_sq += float(flat @ flat)
        self.sum_ += float(flat.sum())
        magnitude = np.abs(block)
        self.peak = max(self.peak, float(magnitude.max(initial=0.0)))
        self.clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
        up = self._upsampler.resample_chunk(block)
        if len(up):
            self.true_peak = max(self.true_peak, float(max(up.max(), -up.min())))
        # 20 ms frames of the channel mean: silence ratio and SNR
        mono = x[:, 0] if self.channels == 1 else x @ np.full(self.channels, 1 / self.channels)
        if self._carry is not None:
            mono = np.concatenate([self._carry, mono])
        n = max(1, int(SILENCE_FRAME * self.rate))
        whole = len(mono) // n * n
        if whole:
            self.frame_power.extend((mono[:whole].reshape(-1, n) ** 2).mean(axis=1).tolist())
        self._carry = mono[whole:]
        # BS.1770: K-weighted mean square per 100 ms hop, per channel (both biquads, every
        # channel, in one sosfilt call; its state carries over between blocks)
        if self._k_state is None:
            self._k_state = np.zeros((len(self._filters), 2, self.channels))
        weighted, self._k_state = sosfilt(self._sos, x, axis=0, zi=self._k_state)
        if self._hop_carry is not None:
            weighted = np.concatenate([self._hop_carry, weighted])
        hop = max(1, int(0.1 * self.rate))
        whole = len(weighted) // hop * hop
        if whole:
            self._hop_power.extend((weighted[:whole].reshape(-1, hop, self.channels) ** 2).mean(axis=1).sum(axis=1)
                                   .tolist())
        self._hop_carry = weighted[whole:]
        # long-term spectrum, 4096-point frames
        spec = np.abs(np.fft.rfft(_frames(mono, 4096), axis=1)) ** 2 if len(mono) >= 4096 else None
        if spec is not None:
            total = spec.sum(axis=0)
            self._spectrum = total if self._spectrum is None else self._spectrum + total

    def loudness(self) -> float:
        """Integrated loudness, LUFS: 400 ms blocks (75% overlap), absolute gate -70 LUFS,
        relative gate -10 LU (ITU-R BS.1770-4)."""
        hops = np.asarray(self._hop_power)
        if len(hops) < 4:
            return -200.0
        blocks_ = np.convolve(hops, np.ones(4) / 4, mode="valid")
        lk = -0.691 + 10 * np.log10(np.maximum(blocks_, 1e-20))
        gated = blocks_[lk > -70]
        if not len(gated):
            return -200.0
        relative = -0.691 + 10 * math.log10(gated.mean()) - 10
        final = blocks_[(lk > -70) & (lk > relative)]
        return float(-0.691 + 10 * math.log10(final.mean())) if len(final) else -200.0

    def metrics(self) -> dict[str, float | int]:
        n = max(1, self.frames * self.channels)
        power = np.asarray(self.frame_power)
        silent = float((10 * np.log10(np.maximum(power, 1e-20)) < SILENCE_DBFS).mean()) if len(power) else 1.0
        snr = None
        if len(power) >= 10:
            ordered = np.sort(power)
            noise = ordered[: max(1, len(ordered) // 10)].mean()
            loud = ordered[len(ordered) // 2:].mean()
            if loud > 1.5 * noise:  # else no pauses to hear the noise in: no estimate
                snr = min(SNR_CEILING, 10 * math.log10((loud - noise) / max(noise, 1e-20)))
        bandwidth = None
        if self._spectrum is not None and self._spectrum.max() > 0:
            edge = np.nonzero(self._spectrum > self._spectrum.max() * 10 ** (-BAND_EDGE_DB / 10))[0].max()
            bandwidth = float(edge * self.rate / 4096)
        tail = self._upsampler.resample_chunk(np.zeros((0, self.channels), np.float32), last=True)
        if len(tail):
            self.true_peak = max(self.true_peak, float(np.abs(tail).max()))
        return {
            "duration": round(self.frames / self.rate, 4),
            "rms_dbfs": round(db(math.sqrt(self.sum_sq / n)), 3),
            "peak_dbfs": round(db(self.peak), 3),
            "true_peak_dbtp": round(db(max(self.true_peak, self.peak)), 3),
            "loudness_lufs": round(self.loudness(), 3),
            "clipping_ratio": round(self.clipped / n, 6),
            "dc_offset": round(self.sum_ / n, 6),
            "silence_ratio": round(silent, 4),
            "snr_db": None if snr is None else round(snr, 2),
            "bandwidth_hz": None if bandwidth is None else round(bandwidth, 1),
        }


def _window(size: int) -> np.ndarray:
    """4-term Blackman-Harris: side lobes 92 dB down, so that 60 dB under the spectrum's
    peak is the signal's own band edge and not the window's leakage."""
    from scipy.signal.windows import blackmanharris

    return blackmanharris(size, sym=False)


_WINDOW = _window(4096)


def _frames(x: np.ndarray, size: int) -> np.ndarray:
    n = len(x) // size
    return x[: n * size].reshape(n, size) * (_WINDOW if size == len(_WINDOW) else _window(size))


# -- encoding -------------------------------------------------------------------------------
class Writer:
    """Encodes blocks to FLAC in a temporary file (never the whole recording in memory)."""

    def __init__(self, rate: int, channels: int, fmt: str = "FLAC", subtype: str = "PCM_16"):
        import soundfile as sf

        fd, self.path = tempfile.mkstemp(prefix="mmcurate-audio-", suffix=f".{fmt.lower()}")
        os.close(fd)
        self.file = sf.SoundFile(self.path, "w", samplerate=rate, channels=channels, format=fmt, subtype=subtype)

    def add(self, block: np.ndarray) -> None:
        self.file.write(np.clip(block, -1.0, 1.0))

    def close(self) -> str:
        self.file.close()
        return self.path


def read_range(path: str, start: float, end: float, rate: int | None = None) -> tuple[np.ndarray, int]:
    """float32 samples of [start, end) seconds of a file that libsndfile reads (seeking, not decoding
    what comes before)."""
    import soundfile as sf

    with sf.SoundFile(path) as f:
        sr = f.samplerate
        f.seek(max(0, int(start * sr)))
        data = f.read(max(0, int((end - start) * sr)), dtype="float32", always_2d=True)
    if rate and rate != sr:
        import soxr

        data = soxr.resample(data, sr, rate)
    return data, rate or sr


def pcm16(block: np.ndarray) -> bytes:
    """Samples rounded back to 16-bit steps: libsndfile and ffmpeg both decode 16-bit audio
    as v/32768, so any container of the same samples gives the same bytes."""
    return np.clip(np.rint(block * 32768.0), -32768, 32767).astype("<i2").tobytes()


def pcm_sha256(samples: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(pcm16(samples)).hexdigest()


def encode_flac(samples: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
