"""The columns of a video sample (a video or a clip of one, with its caption or subtitles)."""
import pyarrow as pa

from . import IDENTITY

PROBE = pa.schema(
    [
        pa.field("duration", pa.float64()),  # seconds
        pa.field("width", pa.int32()),  # as displayed (rotation applied)
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),  # of the display matrix (ffprobe's): 90/270 = the frames are shown on their side
        pa.field("fps", pa.float64()),
        pa.field("video_codec", pa.string()),
        pa.field("audio_codec", pa.string()),
        pa.field("has_audio", pa.bool_()),
        pa.field("bit_rate", pa.int64()),
    ]
)

VIDEO_TEXT = pa.schema(
    [
        *IDENTITY,
        pa.field("content_sha256", pa.string()),  # of the file's bytes (a clip's: of the clip's)
        pa.field("text", pa.string()),
        pa.field("video", pa.large_binary()),  # stored by the runner (or streamed by the stage); a reference after
        pa.field("video_format", pa.string()),  # container: mp4, webm, mkv, mov, ...
        pa.field("original_bytes", pa.int64()),
        pa.field("transcript_segments", pa.string()),  # JSON [{start, end, text}] of its subtitles
        *PROBE,
    ]
)
