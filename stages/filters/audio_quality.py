"""Stage `filter_audio_quality`: recordings too short or long, too quiet or loud, clipped,
noisy, mostly silent or narrowband, judged on the signal metrics that ingest_audio and
segment_audio store as columns (nothing is decoded again).

Defaults, and where each comes from (the measurements are on espeak-ng speech, the
demo's, with `python bench/bench_audio.py --metrics`):
- duration 1 s to 4 h: CLAP repeats a clip to fill its 10 s window, so a clip under
  1 s is seen ten times over; 4 h is ingest_audio's own limit (a 10-minute recording
  is ordinary). Speech-synthesis corpora cut tighter (Emilia keeps 3-30 s segments).
- loudness -50 to -5 LUFS (ITU-R BS.1770): -50 is 27 LU under EBU R128's -23 LUFS
  target, where normalising would lift 16-bit quantisation noise (-98 dBFS) to about
  -71 dBFS, audible in pauses; speech (peaking at 0.9) overdriven by 18 dB reads -6.0
  to -6.5 LUFS with 10-14% of its samples clipped.
- clipping ratio 0.001: speech peaking at 0.9 has no clipped sample; 6 dB too hot,
  0.3-0.9%.
- SNR 10 dB (the frame-percentile estimate of ingest_audio): speech in white noise
  at a true 10 dB reads about 12.4, at a true 5 dB about 7.5. Recordings without
  pauses have no estimate and are not judged on it.
- silence ratio 0.5 (20 ms frames under -60 dBFS): speech reads 0.12-0.16; a
  sentence followed by as much digital silence reads 0.56-0.58.
- bandwidth 4,500 Hz (the highest frequency within 60 dB of the spectrum's peak):
  audio upsampled from 8 kHz (telephone band, ITU-T G.711) reads 3.87-3.88 kHz, from
  16 kHz 7.72-7.75 kHz, full-band speech and music more. A pure tone reads its own
  frequency: set 0 for corpora of test tones.
Every threshold can be set to None to switch its test off.
"""
from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Resources, RowParams, Stage


class FilterAudioQualityParams(RowParams):
    min_duration: float | None = Field(1.0, ge=0, description="seconds; shorter is too_short")
    max_duration: float | None = Field(4 * 3600.0, gt=0, description="seconds; longer is too_long")
    min_loudness_lufs: float | None = Field(-50.0, description="integrated loudness (BS.1770) below which a "
                                                               "recording is too_quiet")
    max_loudness_lufs: float | None = Field(-5.0, description="integrated loudness above which it is too_loud")
    max_clipping_ratio: float | None = Field(0.001, ge=0, le=1, description="share of samples at full scale above "
                                                                          "which it is clipped")
    min_snr_db: float | None = Field(10.0, description="estimated SNR below which it is noisy (no estimate: not "
                                                       "judged)")
    max_silence_ratio: float | None = Field(0.5, ge=0, le=1, description="share of 20 ms frames under -60 dBFS "
                                                                       "above which it is mostly_silent")
    min_bandwidth_hz: float | None = Field(4500.0, ge=0, description="band edge below which it is narrowband "
                                                                     "(upsampled from 8 kHz reads ~3.9 kHz)")


# (reason, metric column, parameter, is the parameter a minimum, how the value reads)
TESTS = [
    ("too_short", "duration", "min_duration", True, "{:.2f} s"),
    ("too_long", "duration", "max_duration", False, "{:.1f} s"),
    ("too_quiet", "loudness_lufs", "min_loudness_lufs", True, "{:.1f} LUFS"),
    ("too_loud", "loudness_lufs", "max_loudness_lufs", False, "{:.1f} LUFS"),
    ("clipped", "clipping_ratio", "max_clipping_ratio", False, "{:.4%} of samples clipped"),
    ("noisy", "snr_db", "min_snr_db", True, "estimated SNR {:.1f} dB"),
    ("mostly_silent", "silence_ratio", "max_silence_ratio", False, "{:.0%} of frames silent"),
    ("narrowband", "bandwidth_hz", "min_bandwidth_hz", True, "band edge {:.0f} Hz"),
]


class FilterAudioQuality(Stage):
    """Rejects recordings outside the duration, loudness, clipping, SNR, silence and bandwidth bounds."""

    name = "filter_audio_quality"
    Params = FilterAudioQualityParams
    resources = Resources(num_cpus=0.5, batch_size=1024)
    reason_hints = {reason: param for reason, _, param, _, _ in TESTS}

    def reads(self) -> list[str]:
        return sorted({column for _, column, param, _, _ in TESTS if getattr(self.params, param) is not None})

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        active = [t for t in TESTS if getattr(p, t[2]) is not None]
        values = {column: batch.column(column).to_pylist() for _, column, *_ in active}
        rejects = []
        for i in range(batch.num_rows):
            found = None
            for reason, column, param, is_min, unit in active:
                value, bound = values[column][i], getattr(p, param)
                if value is not None and (value < bound if is_min else value > bound):
                    found = ledger.reject(reason, f"{unit.format(value)} {'<' if is_min else '>'} {param}={bound:g}")
                    break
            rejects.append(found)
        return ledger.with_rejects(batch, rejects) if any(rejects) else batch
