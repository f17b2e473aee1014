"""Arrow schemas of the records mmcurate moves around (versioned).

Every row carries the identity columns; each modality adds its own; a row
that a stage rejects carries a `reject` struct until the runner splits it out
into the flat rejects table.
"""
import pyarrow as pa

VERSION = 1

# Identity columns every row carries (DESIGN.md, "Data flow").
IDENTITY = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int64(), nullable=False),
        pa.field("modality", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("meta", pa.string()),
    ]
)

# A rejected row travels in the stream with this struct set (null = kept).
REJECT = pa.struct(
    [
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("cluster_id", pa.string()),
    ]
)

# The rejects table is flat: these columns beside every input column.
REJECT_COLUMNS = pa.schema(
    [
        pa.field("reject_stage", pa.string()),
        pa.field("reject_reason", pa.string()),
        pa.field("reject_detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("cluster_id", pa.string()),
    ]
)

# Columns an image-text sample has after ingest.
IMAGE_TEXT = pa.schema(
    [
        *IDENTITY,
        pa.field("content_sha256", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("image", pa.large_binary()),
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

# How a row becomes WebDataset members (DESIGN.md, "Conventions"): a media
# column and the column naming its extension (or a fixed extension).
SHARD_MEMBERS = {
    "image": ("image_format", None),
    "caption": (None, "txt"),
    "audio": (None, "flac"),
    "video": (None, "mp4"),
}
# Columns ending in this suffix are embeddings: one `<key>.<column>.npy` each.
EMBEDDING_SUFFIX = "_emb"
