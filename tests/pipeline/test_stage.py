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
