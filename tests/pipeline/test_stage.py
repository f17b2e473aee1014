"""The stage contract and the entry-point registry."""
import pytest
from pydantic import ValidationError

from pipeline.stage import Stage, describe_params, registry
from stages.ingest.image_text import IngestImageText


def test_registry_finds_stages_through_entry_points():
    stages = registry()
    for name in ("ingest_image_text", "ingest_table", "shard_webdataset"):
        assert issubclass(stages[name], Stage) and stages[name].name == name


def test_every_parameter_has_a_description_and_a_default_or_is_required():
    for cls in registry().values():
        for p in describe_params(cls):
            assert p["description"], f"{cls.name}.{p['name']} has no description"


def test_params_are_validated_and_bounded():
    rows = {p["name"]: p for p in describe_params(IngestImageText)}
    assert rows["quality"]["bounds"] == ">=1 <=100" and rows["quality"]["default"] == 90
    assert rows["source"]["required"]
    with pytest.raises(ValidationError):
        IngestImageText(source="x", quality=0)


def test_fingerprint_follows_parameters():
    a, b = IngestImageText(source="x"), IngestImageText(source="x")
    assert a.fingerprint() == b.fingerprint()
    assert IngestImageText(source="x", quality=50).fingerprint() != a.fingerprint()


def test_setup_runs_once():
    calls = []

    class Once(Stage):
        name = "once"

        def setup(self):
            calls.append(1)

    s = Once()
    s.ensure_setup()
    s.ensure_setup()
    assert calls == [1]


def test_fingerprint_follows_the_code_a_stage_imports(tmp_path, monkeypatch):
    """A stage's fingerprint covers its module and every project module it imports, and no other."""
    import importlib
    import sys

    from pipeline import stage as stage_module

    pkg = tmp_path / "fpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("FACTOR = 1\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    (pkg / "mystage.py").write_text(
        "from pipeline.stage import Stage\nfrom pipeline import shuffle  # noqa\nfrom . import helper  # noqa\n\n"
        "class MyStage(Stage):\n    name = 'my_stage'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = importlib.import_module("fpkg.mystage").MyStage

    def fingerprint():
        for f in (stage_module._module_file, stage_module._imports, stage_module.code_digest):
            f.cache_clear()
        return cls().fingerprint()

    first = fingerprint()
    (pkg / "unrelated.py").write_text("X = 2\n")
    assert fingerprint() == first  # not imported: not part of it
    (pkg / "helper.py").write_text("FACTOR = 2\n")
    second = fingerprint()
    assert second != first
    shuffle = stage_module._module_file("pipeline.shuffle")
    assert shuffle in {stage_module._module_file(m) for m in _closure("fpkg.mystage")}
    assert shuffle not in {stage_module._module_file(m) for m in _closure("stages.filters.datacomp")}
    assert "pipeline.report" not in _closure("pipeline.runner") and "pipeline.cli" not in _closure("pipeline.runner")
    sys.modules.pop("fpkg.mystage", None)


def _closure(module: str) -> set[str]:
    from pipeline.stage import _imports

    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name))
    return seen


def test_fingerprint_follows_the_model_weights_but_not_the_placement(tmp_path):
    from stages.features.clip import EmbedClip
    from stages.features.models import save_tiny_clip

    model = save_tiny_clip(str(tmp_path / "clip"))
    before = EmbedClip(model=model).fingerprint()
    assert EmbedClip(model=model, num_cpus=2, concurrency=3).fingerprint() == before
    weights = next(p for p in (tmp_path / "clip").iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes() + b"\0")  # retrained (or replaced) in place
    assert EmbedClip(model=model).fingerprint() != before


def test_a_stage_kind_is_row_global_or_sink_and_ingest_streams_with_the_next_stage():
    from pipeline.runner import plan
    from pipeline.stage import Stage

    with pytest.raises(TypeError, match="'image'"):
        type("Odd", (Stage,), {"name": "odd", "kind": "image"})
    reg = registry()
    for name in ("ingest_image_text", "ingest_audio"):
        segs = plan([reg[name](source="x.jsonl"), reg["filter_datacomp_basic" if "image" in name else "segment_audio"]()])
        assert [s.kind for s in segs] == ["listing", "row"] and len(segs[1].stages) == 2
