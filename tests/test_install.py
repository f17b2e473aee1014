"""The install ends with the PIL it says it has (pillow-simd, or Pillow as the announced fallback)."""
import importlib.metadata
import os

import PIL
import PIL.Image

from tests.conftest import ROOT


def test_loaded_pil_is_the_installed_flavour():
    recorded = open(os.path.join(ROOT, ".venv", ".mmcurate-pil")).read().strip()
    # pillow-simd releases carry a .postN suffix (12.1.1.post0); Pillow's never do.
    loaded = "pillow-simd" if ".post" in PIL.__version__ else "pillow"
    assert loaded == recorded
    assert importlib.metadata.version(loaded) == PIL.__version__
    if loaded == "pillow-simd":  # and no Pillow left whose files could shadow it
        try:
            importlib.metadata.distribution("pillow")
            raise AssertionError("Pillow is installed next to pillow-simd")
        except importlib.metadata.PackageNotFoundError:
            pass
    im = PIL.Image.new("RGB", (2000, 1500), (10, 20, 30)).resize((224, 224), PIL.Image.Resampling.BICUBIC)
    assert im.getpixel((0, 0)) == (10, 20, 30)
