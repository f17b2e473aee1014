"""Arrow schemas the engine knows (versioned): identity, lineage, rejects, media references.

Every row carries the identity columns; a child row (a clip of a video, a file of a
repository) also carries `parent_id`. A row that a stage rejects, or expands into
children, carries a `reject` struct until the runner splits it out. A media column
holds a reference (MEDIA_REF) to bytes in the run's media store or in a source file,
never the bytes. Each modality's own columns live in a module of its own
(schemas.image_text, ...), so that a stage's fingerprint follows only the schemas it uses.
"""
import pyarrow as pa

VERSION = 2

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
PARENT = pa.field("parent_id", pa.string())  # set on children: the sample they were cut from

# A row that leaves the stream carries this struct (null = it goes on): rejected with a
# reason, or expanded into children (reason EXPANDED, detail = how many).
REJECT = pa.struct(
    [
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("cluster_id", pa.string()),
    ]
)
EXPANDED = "expanded"

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
# The expanded table: every input column beside these.
EXPANDED_COLUMNS = pa.schema([pa.field("expand_stage", pa.string()), pa.field("children", pa.int64())])

# Where a sample's media bytes are: a whole file (offset 0, size = its size) or a range of
# one (a member of a tar, a span of a recording), local or s3://.
MEDIA_REF = pa.struct([pa.field("uri", pa.string()), pa.field("offset", pa.int64()), pa.field("size", pa.int64())])
