"""The install ends with the PIL it says it has (pillow-simd, or Pillow as the announced fallback)."""
import importlib.metadata
import os

import PIL
import PIL.Image

from tests.conftest import ROOT


def _owner_of_pil() -> str:
    """The distribution whose files include the PIL package that is imported."""
    pil_init = os.path.realpath(PIL.__file__)
    for dist in ("pillow-simd", "pillow"):
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if str(f).replace("\\", "/") == "PIL/__init__.py" and os.path.realpath(f.locate()) == pil_init:
                return dist
    return "unknown"


def test_loaded_pil_is_the_installed_flavour():
    recorded = open(os.path.join(ROOT, ".venv", ".mmcurate-pil")).read().strip()
    assert _owner_of_pil() == recorded
    if recorded == "pillow-simd":
        # pillow-simd versions carry a .postN suffix; plain Pillow's never do.
        assert ".post" in PIL.__version__
        im = PIL.Image.new("RGB", (2000, 1500), (10, 20, 30)).resize((224, 224), PIL.Image.Resampling.BICUBIC)
        assert im.getpixel((0, 0)) == (10, 20, 30)

