"""The columns of an image-text sample after ingest."""
import pyarrow as pa

from . import IDENTITY

IMAGE_TEXT = pa.schema(
    [
        *IDENTITY,
        pa.field("content_sha256", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("image", pa.large_binary()),  # what ingest makes; the runner stores it and keeps a reference
        pa.field("image_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image_bytes", pa.int64()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("original_bytes", pa.int64()),
        pa.field("original_format", pa.string()),
    ]
)
