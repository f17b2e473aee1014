"""deploy/: every manifest checked offline against its schema (Kubernetes' own, bundled by
kubernetes-validate; KubeRay's RayJob and RayCluster CRDs, vendored), with no field the
schema does not know; every mmcurate command in them parses with mmcurate's own CLI."""
from __future__ import annotations

import configparser
import glob
import gzip
import json
import os
import shlex

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import build_parser
from tests.conftest import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
KUBERNETES = "1.31.0"


def _crd(kind: str) -> dict:
    path = os.path.join(DEPLOY, "kubernetes", "schemas", f"ray.io_{kind.lower()}s.v1.json.gz")
    return json.loads(gzip.open(path).read())["openAPIV3Schema"]


def unknown_fields(value, schema: dict, where: str = "") -> list[str]:
    """Fields the schema does not declare (the API server would drop them: a typo)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or not isinstance(value, (dict, list)):
        return []
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in unknown_fields(v, schema.get("items", {}), f"{where}[{i}]")]
    props, extra = schema.get("properties"), schema.get("additionalProperties")
    out = []
    for key, v in value.items():
        if props is not None and key in props:
            out += unknown_fields(v, props[key], f"{where}.{key}")
        elif isinstance(extra, dict):
            out += unknown_fields(v, extra, f"{where}.{key}")
        elif props is not None and extra is not True:
            out.append(f"{where}.{key}")
    return out


def check(doc: dict) -> None:
    if doc["apiVersion"] == "ray.io/v1":
        schema = _crd(doc["kind"])
        jsonschema.Draft7Validator(schema).validate(doc)
        assert unknown_fields(doc, schema) == [], doc["kind"]
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))):
        for doc in yaml.safe_load_all(open(path)):
            out.append((os.path.basename(path), doc))
            if doc["kind"] == "ConfigMap":  # a manifest inside a ConfigMap is a manifest too
                out += [(f"{os.path.basename(path)}:{k}", yaml.safe_load(v)) for k, v in doc["data"].items()
                        if k.endswith(".yaml")]
    return out


def _mmcurate(command: str) -> None:
    """The mmcurate command inside a shell line or an entrypoint parses with mmcurate's CLI."""
    words = shlex.split(command.split(">>")[0].split("&&")[-1])
    i = next(i for i, w in enumerate(words) if w.endswith("mmcurate"))
    build_parser().parse_args(words[i + 1:])  # exits (SystemExit) on anything it does not know


@pytest.mark.parametrize("name,doc", manifests(), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_manifests_match_their_schemas(name, doc):
    check(doc)
    if doc["kind"] == "RayJob":
        _mmcurate(doc["spec"]["entrypoint"])


def test_the_checks_catch_mistakes():
    cluster = next(d for _, d in manifests() if d["kind"] == "RayCluster")
    typo = json.loads(json.dumps(cluster))
    typo["spec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(AssertionError):
        check(typo)
    wrong = json.loads(json.dumps(cluster))
    wrong["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        check(wrong)
    cron = next(d for _, d in manifests() if d["kind"] == "CronJob")
    cron = json.loads(json.dumps(cron))
    cron["spec"]["concurrency"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        check(cron)
    with pytest.raises(SystemExit):
        _mmcurate("mmcurate refresh jobs/x.yaml --datset s3://x")


def test_cron_and_systemd():
    lines = [ln for ln in open(os.path.join(DEPLOY, "cron", "mmcurate-refresh.cron")) if ln.strip()
             and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert len(lines) == 1
    minute, hour, day, month, weekday, user, command = lines[0].split(maxsplit=6)
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24 and (day, month, weekday) == ("*", "*", "*")
    _mmcurate(command)
    service = configparser.ConfigParser(strict=True, interpolation=None)
    service.read(os.path.join(DEPLOY, "systemd", "mmcurate-refresh.service"))
    assert service["Service"]["Type"] == "oneshot"
    _mmcurate(service["Service"]["ExecStart"])
    timer = configparser.ConfigParser(strict=True, interpolation=None)
    timer.read(os.path.join(DEPLOY, "systemd", "mmcurate-refresh.timer"))
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"
