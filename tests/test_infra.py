"""Deployment configs: every YAML parses and is checked against the schema of what reads it.

KubeRay manifests: against the fields of KubeRay's CRDs (vendored by tests/crd_fields.py into
tests/data/kuberay_fields.json). Cluster launcher: Ray's own validator and JSON schema.
Runtime env: Ray's known fields. Dockerfile: instructions, pinned base images, COPY sources.
No Docker engine here, so the image itself is not built.
"""

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from infra.lock import IMAGE_EXTRAS, project_requirements
from jobs.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
CRD_FIELDS = json.loads((Path(__file__).parent / "data" / "kuberay_fields.json").read_text())
PY_TYPES = {"string": str, "integer": int, "boolean": bool, "number": (int, float)}


def load(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests(kind: str) -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load(path) if doc["kind"] == kind]


def crd_problems(node, path: str, fields: dict) -> list[str]:
    """Where ``node`` (at ``path``) breaks the vendored CRD schema; empty when it conforms."""
    allowed = fields.get(path)
    if allowed is None:
        return [f"{path or '<root>'}: not a field the CRD defines here (or new: re-run tests/crd_fields.py)"]
    kind = allowed["kind"]
    if kind == "object":
        if not isinstance(node, dict):
            return [f"{path}: expected an object, got {node!r}"]
        problems = [
            f"{path}.{k}: unknown field; expected one of {allowed['fields']}"
            for k in node
            if k not in allowed["fields"]
        ]
        problems += [f"{path}: missing required field {r!r}" for r in allowed["required"] if r not in node]
        for key, value in node.items():
            if key in allowed["fields"]:
                problems += crd_problems(value, f"{path}.{key}" if path else key, fields)
        return problems
    if kind == "map":
        if not isinstance(node, dict):
            return [f"{path}: expected a map, got {node!r}"]
        return [p for key, value in node.items() for p in scalar_problems(value, f"{path}[{key}]", allowed["values"])]
    if kind == "array":
        if not isinstance(node, list):
            return [f"{path}: expected a list, got {node!r}"]
        return [p for item in node for p in crd_problems(item, f"{path}[]", fields)]
    if kind == "free":
        return [] if isinstance(node, dict) else [f"{path}: expected an object, got {node!r}"]
    return scalar_problems(node, path, allowed)


def scalar_problems(value, path: str, allowed: dict) -> list[str]:
    types = tuple(PY_TYPES[t] for t in allowed.get("types", []) if t in PY_TYPES)
    if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        return [f"{path}: expected {' or '.join(allowed['types'])}, got {value!r}"]
    if "enum" in allowed and value not in allowed["enum"]:
        return [f"{path}: expected one of {allowed['enum']}, got {value!r}"]
    return []


def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "runtime_env.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/secrets.example.yaml",
        "aws/cluster.yaml",
    }
    for f in files:
        assert load(f), f"{f} is empty"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifests_match_the_crd(kind):
    docs = manifests(kind)
    assert docs, f"no {kind} under infra/kuberay"
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        assert crd_problems(doc, "", CRD_FIELDS[kind]) == []


def test_crd_check_catches_typos_and_wrong_types():
    cluster = copy.deepcopy(manifests("RayCluster")[0])
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8  # misspelt
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    del cluster["spec"]["workerGroupSpecs"][1]["groupName"]  # required
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    problems = "\n".join(crd_problems(cluster, "", CRD_FIELDS["RayCluster"]))
    assert "spec.workerGroupSpecs[].maxReplica: unknown field" in problems
    assert "rayStartParams[num-cpus]: expected string, got 0" in problems
    assert "spec.workerGroupSpecs[]: missing required field 'groupName'" in problems
    assert "containers[].imag: unknown field" in problems


def test_raycluster_head_gpu_and_cpu_groups():
    spec = manifests("RayCluster")[0]["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no tasks on the head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    for c in groups["cpu"]["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_rayjob_runs_flowlabel_label_on_the_same_cluster_and_shuts_down():
    (job,) = manifests("RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["flowlabel", "label"]
    args = build_parser().parse_args(argv[1:])  # every option is one `flowlabel label` knows
    assert args.gpus_per_actor == 1 and args.actors >= 1  # GPU workers start at 0: ask for GPUs explicitly
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"] == manifests("RayCluster")[0]["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"


def test_secrets_referenced_exist_in_the_example_with_placeholders_only():
    secrets = {d["metadata"]["name"]: d for d in manifests("Secret")}
    spec = manifests("RayCluster")[0]["spec"]
    containers = [
        c for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]
    ]
    referenced = {e["secretRef"]["name"] for c in containers for e in c.get("envFrom", [])}
    assert referenced == {"flowlabel-s3"} and referenced <= set(secrets)
    assert set(secrets["flowlabel-s3"]["stringData"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "auth_token" in secrets[spec["authOptions"]["secretName"]]["stringData"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secrets["flowlabel-s3"]["stringData"][name].startswith("REPLACE_")


def launcher_config() -> dict:
    return yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())


def test_aws_launcher_config_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher_config()
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu"]["resources"]["GPU"] >= 1 and types["gpu"]["max_workers"] >= types["gpu"]["min_workers"]
    assert config["max_workers"] >= sum(t.get("min_workers", 0) for t in types.values())
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert any("--metrics-export-port=8080" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize("typo", ["max_worker", "head_node"])
def test_aws_launcher_validator_rejects_unknown_keys(typo):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher_config()
    config[typo] = config.get("max_workers", 1)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(config))


def test_one_image_everywhere():
    images = {
        c["image"]
        for kind in ("RayCluster", "RayJob")
        for doc in manifests(kind)
        for group in [
            doc["spec"].get("rayClusterSpec", doc["spec"])["headGroupSpec"],
            *doc["spec"].get("rayClusterSpec", doc["spec"])["workerGroupSpecs"],
        ]
        for c in group["template"]["spec"]["containers"]
    }
    images.add(launcher_config()["docker"]["image"])
    assert len(images) == 1
    assert re.fullmatch(r"[a-z0-9.\-/]+:[\w.\-]+", images.pop())  # a tag, not :latest by default


def test_runtime_env_installs_nothing_and_ships_only_code():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    assert set(env) <= set(RuntimeEnv.known_fields)
    assert not set(env) & {"pip", "conda", "uv", "container", "image_uri"}  # the image has the dependencies
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert {".venv/", ".git/", "tests/data/"} <= set(env["excludes"])
    RuntimeEnv(**env)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword, rest.strip()))
        pending = ""
    assert not pending, "dangling line continuation at the end"
    return out


def test_dockerfile_instructions_base_images_and_copy_sources():
    known = {
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    }
    instructions = dockerfile_instructions(INFRA / "Dockerfile")
    assert {k for k, _ in instructions} <= known
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    stages, bases = set(), []
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            bases.append(image)
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    assert any(b.startswith("nvidia/cuda:") and "runtime" in b for b in bases)
    for image in bases:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned base image {image}"
    ignored = {
        line.strip()
        for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for keyword, rest in instructions:
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by Dockerfile.dockerignore"


def test_constraints_pin_every_requirement_within_its_bounds():
    pins = {}
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert re.fullmatch(r"[a-z0-9\-]+", name) and re.fullmatch(r"[\w.]+", version), line
            pins[name] = version
    for req in project_requirements(extras=IMAGE_EXTRAS):
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req} is not pinned in infra/constraints.txt (python -m infra.lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"
    assert Requirement("torch").name in pins and "+" not in pins["torch"]  # PyPI's CUDA build, not +cpu
