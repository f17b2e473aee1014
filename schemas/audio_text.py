"""The columns of an audio sample (a recording with its transcript or caption) after ingest."""
import pyarrow as pa

from . import IDENTITY

METRICS = pa.schema(
    [
        pa.field("duration", pa.float64()),  # seconds
        pa.field("rms_dbfs", pa.float64()),
        pa.field("peak_dbfs", pa.float64()),
        pa.field("true_peak_dbtp", pa.float64()),
        pa.field("loudness_lufs", pa.float64()),  # ITU-R BS.1770-4 integrated loudness
        pa.field("clipping_ratio", pa.float64()),
        pa.field("dc_offset", pa.float64()),
        pa.field("silence_ratio", pa.float64()),
        pa.field("snr_db", pa.float64()),
        pa.field("bandwidth_hz", pa.float64()),
    ]
)

AUDIO_TEXT = pa.schema(
    [
        *IDENTITY,
        pa.field("content_sha256", pa.string()),  # of the original file's bytes
        pa.field("pcm_sha256", pa.string()),  # of its decoded samples (16-bit): a re-muxed copy has the same
        pa.field("text", pa.string()),
        pa.field("audio", pa.large_binary()),  # what ingest makes; the runner stores it and keeps a reference
        pa.field("audio_format", pa.string()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("original_sample_rate", pa.int32()),
        pa.field("original_channels", pa.int32()),
        pa.field("original_bytes", pa.int64()),
        pa.field("transcript_segments", pa.string()),  # JSON [{start, end, text}] of a timed transcript
        *METRICS,
    ]
)
