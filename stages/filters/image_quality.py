"""Stage `filter_image_quality`: blank images, blur and extreme sizes.

Measured on a grayscale copy shrunk to at most 512 px on its longer side (so that the
numbers do not depend on the resolution an image happens to come in):
- entropy of the 256-bin gray histogram, in bits (0 for one flat colour, 8 at most):
  below `min_entropy` (default 2.0) the image is blank or near-uniform;
- variance of the 3x3 Laplacian, the standard focus measure (Pech-Pacheco et al.,
  "Diatom autofocusing in brightfield microscopy", ICPR 2000): below `min_sharpness`
  the image is blurred. The measure depends on content as much as on focus: on
  scikit-image's photographs it is 48 to 5,300, but a smooth colour wheel scores 2.8
  and a microscope cell 2.9, while a photograph under a Gaussian blur of radius 10
  to 16, JPEG-encoded, lands at 1.8 to 2.0. The default, 2.0, only catches such
  heavy blur; raise it for a corpus of ordinary photographs.
Both are written as columns `image_entropy` and `image_sharpness` whether or not
the row is kept, for the report.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources, RowParams, Stage
from stages.ingest.image import open_image

MEASURE_SIZE = 512


def measure(data: bytes) -> tuple[float, float, int, int]:
    """(entropy bits, Laplacian variance, width, height) of an encoded image."""
    g = open_image(data, "L", least=MEASURE_SIZE)
    w, h = g.info["original_size"]
    if max(g.size) > MEASURE_SIZE:
        g.thumbnail((MEASURE_SIZE, MEASURE_SIZE), Image.Resampling.BILINEAR)
    a = np.asarray(g, dtype=np.float64)
    hist = np.bincount(a.astype(np.uint8).ravel(), minlength=256) / a.size
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    if min(a.shape) < 3:
        return entropy, 0.0, w, h
    lap = a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1]
    return entropy, float(lap.var()), w, h


class FilterImageQualityParams(RowParams):
    image_column: str = Field("image", description="image column")
    min_entropy: float = Field(2.0, ge=0, le=8, description="gray-histogram entropy in bits below which an image "
                                                            "is blank or near-uniform")
    min_sharpness: float = Field(2.0, ge=0, description="variance of the Laplacian (at <= 512 px) below which an "
                                                         "image is blurred")
    min_side: int = Field(32, ge=1, description="smallest acceptable shorter side of the stored image, px")
    max_pixels: int = Field(100_000_000, ge=1, description="largest acceptable width x height")


class FilterImageQuality(Stage):
    """Rejects blank, blurred and extremely sized images; records entropy and sharpness."""

    name = "filter_image_quality"
    Params = FilterImageQualityParams
    resources = Resources(num_cpus=1, batch_size=64)

    def reads(self) -> list[str]:
        return [self.params.image_column]

    def adds(self) -> list[Column]:
        return [Column("image_entropy", "metric", label="image entropy (bits)"),
                Column("image_sharpness", "metric", label="image sharpness (Laplacian variance)")]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        entropies, sharpness, rejects = [], [], []
        for data in batch.column(p.image_column).to_pylist():
            try:
                e, s, w, h = measure(data)
            except Exception as err:  # noqa: BLE001 - this row's problem only
                entropies.append(None)
                sharpness.append(None)
                rejects.append(ledger.reject("undecodable_image", f"{type(err).__name__}: {err}"))
                continue
            entropies.append(round(e, 4))
            sharpness.append(round(s, 3))
            if min(w, h) < p.min_side or w * h > p.max_pixels:
                rejects.append(ledger.reject("extreme_size", f"{w}x{h} (shorter side >= {p.min_side}, "
                                             f"pixels <= {p.max_pixels})"))
            elif e < p.min_entropy:
                rejects.append(ledger.reject("low_entropy", f"entropy {e:.2f} bits < {p.min_entropy}: blank or "
                                             "near-uniform"))
            elif s < p.min_sharpness:
                rejects.append(ledger.reject("blurry", f"Laplacian variance {s:.1f} < {p.min_sharpness}"))
            else:
                rejects.append(None)
        batch = ledger.set_column(batch, "image_entropy", pa.array(entropies, pa.float32()))
        batch = ledger.set_column(batch, "image_sharpness", pa.array(sharpness, pa.float32()))
        return ledger.with_rejects(batch, rejects)
