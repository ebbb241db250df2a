"""Vendors the part of KubeRay's CRD schemas that infra/kuberay/*.yaml uses, for tests/test_infra.py.

    python -m tests.crd_fields /path/to/kuberay [COMMIT] > tests/data/kuberay_fields.json

(``/path/to/kuberay``: a checkout of github.com/ray-project/kuberay; COMMIT: its commit id,
recorded in the output, read with git when not given.) For every node of our
manifests it records, from ``ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml``
(version v1), what the CRD allows there: an object's field names and required fields, a
map's value type, or a scalar's type. Only the nodes we use are kept, each with all of its
sibling field names, so a misspelt or misplaced field fails the test without vendoring the
whole CRD (~1 MB). A node the file does not know (a new field) asks for a re-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "infra" / "kuberay").glob("*.yaml"))
CRDS = {
    "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
}
VERSION = "v1"


def describe(schema: dict[str, Any]) -> dict[str, Any]:
    """What a CRD schema node allows, in the vendored form."""
    if schema.get("x-kubernetes-int-or-string"):
        return {"kind": "scalar", "types": ["integer", "string"]}
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        return {
            "kind": "object",
            "fields": sorted(schema["properties"]),
            "required": sorted(schema.get("required", [])),
        }
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return {"kind": "map", "values": describe(schema["additionalProperties"])}
    if kind == "object":
        return {"kind": "free"}  # e.g. metadata: ObjectMeta is not expanded in CRDs
    if kind == "array":
        return {"kind": "array"}
    return {"kind": "scalar", "types": [kind], **({"enum": schema["enum"]} if "enum" in schema else {})}


def walk(node: Any, schema: dict[str, Any], path: str, out: dict[str, Any]) -> None:
    out[path] = describe(schema)
    if isinstance(node, dict) and "properties" in schema:
        for key, value in node.items():
            if key in schema["properties"]:
                walk(value, schema["properties"][key], f"{path}.{key}" if path else key, out)
    elif isinstance(node, list) and "items" in schema:
        for item in node:
            walk(item, schema["items"], f"{path}[]", out)


def schemas(kuberay: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for kind, rel in CRDS.items():
        crd = yaml.safe_load((kuberay / rel).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
        found[kind] = version["schema"]["openAPIV3Schema"]
    return found


def main(kuberay: str, commit: str | None = None) -> None:
    root = Path(kuberay)
    by_kind = schemas(root)
    if commit is None:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    vendored: dict[str, Any] = {
        "_source": f"ray-project/kuberay@{commit or 'unknown'} {', '.join(CRDS.values())} ({VERSION})"
    }
    for manifest in MANIFESTS:
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc and doc.get("kind") in by_kind:
                walk(doc, by_kind[doc["kind"]], "", vendored.setdefault(doc["kind"], {}))
    json.dump(vendored, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
