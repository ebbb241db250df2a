"""Plugin models: import paths, entry points of installed packages, their contract probe, and Ray workers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import models
from jobs.cli import main
from jobs.synthetic import Motion, write_translating_video
from models import REGISTRY, CheckpointError, FlowModel, PluginError, PluginRegistry, load_model
from models.factory import load_model as factory_load_model
from models.plugins import ENTRY_POINT_GROUP, probe_shape
from pipeline.schema import arrays_from_table

ROOT = Path(__file__).resolve().parents[1]
SHIFT = "tests.plugin_models:ShiftFlow"


def frames_of_values(*values: float, h: int = 12, w: int = 20) -> torch.Tensor:
    """N×3×H×W frames, frame k constant at values[k] (ShiftFlow adds a tenth of the step to u)."""
    return torch.stack([torch.full((3, h, w), float(v)) for v in values])


def fake_distribution(root: Path, entry_points: str, name: str = "fakeplug", version: str = "0.1") -> Path:
    """A ``NAME-VERSION.dist-info`` folder with ``entry_points.txt`` under ``root``: what pip leaves behind."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{textwrap.dedent(entry_points)}")
    return root


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install a fake distribution with entry points; returns a fresh PluginRegistry that sees it."""

    def install(entry_points: str, **kwargs) -> PluginRegistry:
        monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "site", entry_points, **kwargs)))
        registry = PluginRegistry(REGISTRY)
        monkeypatch.setattr(models, "MODELS", registry)
        return registry

    return install


# --- import paths -------------------------------------------------------------------------------------------


def test_import_path_class_gets_config_and_runs_through_the_contract():
    model = load_model(SHIFT, u=3.0, v=0.5)
    flow = model(frames_of_values(0)[:1], frames_of_values(20)[:1])  # brightness step 20 → u + 2
    assert type(model).__name__ == "ShiftFlow" and model.model_name == SHIFT and model.config == {"u": 3.0, "v": 0.5}
    assert flow.shape == (1, 2, 12, 20) and flow.dtype == torch.float32
    assert torch.equal(flow[:, 0], torch.full((1, 12, 20), 5.0))
    assert torch.equal(flow[:, 1], torch.full((1, 12, 20), 0.5))
    assert model.checkpoint_sha256 == "" and not model.training


def test_import_path_factory():
    model = load_model("tests.plugin_models:make_shift", v=2.0)
    assert type(model).__name__ == "ShiftFlow" and model.base.tolist() == [1.5, 2.0]
    assert models.MODELS.origin("tests.plugin_models:make_shift") == "import path"
    assert models.get_spec("tests.plugin_models:make_shift").description == "A factory: ShiftFlow(u, v)."


def test_predict_only_plugin_works_through_pairs():
    """The default predict_pairs gathers the pairs and calls the default predict_bidirectional → predict."""
    model = load_model(SHIFT)
    out = model.pairs(frames_of_values(0, 10, 40), torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2]))
    steps = torch.tensor([1.0, 3.0, 4.0]).view(3, 1, 1)
    assert out.confidence is None and out.forward.shape == out.backward.shape == (3, 2, 12, 20)
    torch.testing.assert_close(out.forward[:, 0], (1.5 + steps).expand(3, 12, 20))
    torch.testing.assert_close(out.backward[:, 0], (1.5 - steps).expand(3, 12, 20))  # predict(frame1, frame0)
    assert (out.forward[:, 1] == -0.25).all() and (out.backward[:, 1] == -0.25).all()


def test_predict_bidirectional_plugin_works_through_pairs():
    model = load_model("tests.plugin_models:BidirectionalShift")
    out = model.pairs(frames_of_values(0, 10, 40), torch.tensor([0, 1]), torch.tensor([1, 2]))
    torch.testing.assert_close(out.forward[:, 0], torch.tensor([2.5, 4.5]).view(2, 1, 1).expand(2, 12, 20))
    torch.testing.assert_close(out.backward, -out.forward)  # its own backward, not predict(frame1, frame0)


def test_plugin_checkpoint_loads_strictly_with_sha256(tmp_path):
    path = tmp_path / "shift.pt"
    torch.save({"scale": torch.tensor(2.0), "base": torch.tensor([1.5, -0.25])}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = load_model(SHIFT, checkpoint=str(path), checkpoint_sha256=digest)
    assert model.checkpoint_sha256 == digest and model.scale.item() == 2.0
    assert (model(frames_of_values(0)[:1], frames_of_values(0)[:1])[:, 0] == 3.0).all()
    with pytest.raises(CheckpointError, match=f"expected sha256 {'0' * 64}, got {digest}"):
        load_model(SHIFT, checkpoint=str(path), checkpoint_sha256="0" * 64)
    torch.save({"scale": torch.tensor(2.0), "base": torch.zeros(2), "extra": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="unexpected keys: extra"):
        load_model(SHIFT, checkpoint=str(path))
    torch.save({"scale": torch.tensor(2.0)}, path)
    with pytest.raises(CheckpointError, match="missing keys: base"):
        load_model(SHIFT, checkpoint=str(path))


# --- bad plugins: each error says what is wrong ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path, message",
    [
        ("no_such_pkg.flows:Net", "cannot import module 'no_such_pkg.flows': no module named 'no_such_pkg'"),
        (
            "tests.no_such_module:Net",
            "cannot import module 'tests.no_such_module': no module named 'tests.no_such_module'",
        ),
        ("tests.plugin_models:Nope", r"module 'tests.plugin_models' \(.*plugin_models.py\) has no attribute 'Nope'"),
        ("tests.plugin_models:ShiftFlow.nope", "'tests.plugin_models:ShiftFlow' has no attribute 'nope'"),
        ("tests.plugin_models:", "expected an import path package.module:Name"),
        (
            "tests.plugin_models:PlainModule",
            "is class tests.plugin_models.PlainModule, not a FlowModel subclass "
            r"\(its bases: torch.nn.modules.module.Module\)",
        ),
        ("tests.plugin_models:NUMBER", "is int 3; expected a subclass of models.FlowModel or a factory"),
        ("tests.plugin_models:make_text", "the factory returned str 'not a model', expected a models.FlowModel"),
        (
            "tests.plugin_models:Downsampled",
            r"predict_pairs forward flow: expected shape \(1, 2, 32, 48\), got \(1, 2, 4, 6\)",
        ),
        ("tests.plugin_models:IntegerFlow", "forward flow: expected a float tensor .*, got torch.int64"),
        ("tests.plugin_models:NanFlow", "forward flow: expected finite values, got 3072 non-finite of 3072"),
    ],
)
def test_bad_plugin_is_refused_with_the_reason(path, message):
    with pytest.raises(PluginError, match=message):
        load_model(path)


def test_plugin_whose_dependency_is_missing(tmp_path, monkeypatch):
    (tmp_path / "needs_dep.py").write_text("import flowlabel_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError,
        match="importing module 'needs_dep' failed: No module named "
        "'flowlabel_missing_dependency' .a dependency of the plugin is missing",
    ):
        load_model("needs_dep:Net")


def test_wrong_config_names_the_plugin():
    with pytest.raises(PluginError, match=f"model '{SHIFT}': calling it with config {{'iters': 3}} raised TypeError"):
        load_model(SHIFT, iters=3)


def test_probe_respects_pad_multiple():
    model = load_model("tests.plugin_models:Needs64")  # raises inside predict unless H, W are multiples of 64
    assert probe_shape(model) == (64, 128) and probe_shape(load_model(SHIFT)) == (32, 48)


def test_builtin_models_are_not_probed(monkeypatch):
    monkeypatch.setattr("models.factory.check_contract", lambda *a: pytest.fail("probed a built-in model"))
    assert isinstance(load_model("dis"), FlowModel)


def test_label_job_refuses_a_broken_plugin_before_reading(tmp_path):
    from jobs.label import LabelJob, run_label
    from pipeline.label.labeler import LabelerConfig
    from pipeline.write.sinks import SinkOptions

    job = LabelJob(
        inputs=(str(tmp_path / "missing.mp4"),),
        sink=SinkOptions(str(tmp_path / "out")),
        labeler=LabelerConfig(model="tests.plugin_models:Downsampled"),
    )
    with pytest.raises(PluginError, match="expected shape"):
        run_label(job)
    assert not (tmp_path / "out").exists()  # nothing listed, planned or written


# --- entry points ----------------------------------------------------------------------------------------------


def test_entry_points_are_read_only_for_names_not_built_in(installed):
    """A broken entry point shows only when the registry must read them: an unknown name or the listing."""
    registry = installed("broken = tests.plugin_models:MISSING\n")
    assert registry["raft_small"] is REGISTRY["raft_small"]
    assert registry[SHIFT].name == SHIFT
    with pytest.raises(
        PluginError,
        match=r"entry point fakeplug 0.1 \(broken = tests.plugin_models:MISSING, "
        r"group flowlabel.models\) failed to load: AttributeError",
    ):
        registry["fake_shift"]
    with pytest.raises(PluginError, match="failed to load"):
        sorted(registry)


def test_entry_point_models_load_like_builtins(installed, tmp_path):
    registry = installed("specs = tests.plugin_models:SPECS\ncalled = tests.plugin_models:specs\n", version="1.2")
    origins = models.model_origins()
    assert {k: v for k, v in origins.items() if v != "builtin"} == {
        "fake_shift": "entry point fakeplug 1.2",
        "fake_weighted": "entry point fakeplug 1.2",
        "fake_called": "entry point fakeplug 1.2",
    }
    assert set(origins) == set(REGISTRY) | {"fake_shift", "fake_weighted", "fake_called"}
    assert load_model("fake_shift").base.tolist() == [2.0, -0.25]  # the record's default_config
    assert load_model("fake_called", u=0.0).base.tolist() == [0.0, -0.25]
    with pytest.raises(ValueError, match="fake_weighted needs a checkpoint"):
        load_model("fake_weighted")
    path = tmp_path / "w.pt"
    torch.save({"scale": torch.tensor(0.5), "base": torch.tensor([4.0, 2.0])}, path)
    model = factory_load_model(registry, "fake_weighted", str(path))
    assert model.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and model.scale.item() == 0.5


def test_entry_point_clash_with_a_builtin_names_both(installed):
    registry = installed("clash = tests.plugin_models:CLASH\n", name="clashing", version="2.0")
    assert registry["dis"] is REGISTRY["dis"]  # a built-in lookup never reads the entry points
    with pytest.raises(
        PluginError, match="model name 'dis' from entry point clashing 2.0 clashes with the builtin model 'dis'"
    ):
        sorted(registry)


def test_entry_point_of_the_wrong_kind(installed):
    registry = installed("bad = tests.plugin_models:NUMBER\n")
    with pytest.raises(
        PluginError,
        match=r"entry point fakeplug 0.1 \(bad = tests.plugin_models:NUMBER.*\) "
        "gave int 3; expected a ModelSpec, a sequence of them, or a callable "
        "returning either",
    ):
        registry["anything"]


def test_cli_lists_models_with_their_origin(installed, capsys):
    installed("specs = tests.plugin_models:SPECS\n")
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("fake_shift ") and "[entry point fakeplug 0.1]" in line for line in lines)
    assert any(line.startswith("raft_small ") and "[builtin]" in line for line in lines)
    assert main(["models", SHIFT]) == 0
    assert capsys.readouterr().out.startswith(f"{SHIFT} [import path] Implements ``predict`` only")
    assert main(["models", "tests.plugin_models:PlainModule"]) == 1


# --- Ray workers -----------------------------------------------------------------------------------------------


def _labeled_flow(out: Path) -> tuple[np.ndarray, list[str]]:
    table = pq.read_table(out)
    return arrays_from_table(table)["flow"].astype(np.float32), table["model"].to_pylist()


@pytest.mark.slow
def test_plugin_in_the_test_package_labels_through_ray(ray_local, tmp_path):
    from jobs.label import LabelJob, run_label
    from pipeline.label.labeler import LabelerConfig
    from pipeline.write.sinks import SinkOptions

    (tmp_path / "in").mkdir()
    write_translating_video(tmp_path / "in" / "clip.mp4", 48, 64, 4, Motion(2.0, 1.0))
    job = LabelJob(
        inputs=(str(tmp_path / "in"),),
        sink=SinkOptions(str(tmp_path / "out"), partition=()),
        labeler=LabelerConfig(model=SHIFT, overrides={"v": 0.75}),
    )
    result = run_label(job)
    flow, model_column = _labeled_flow(tmp_path / "out")
    assert result.exit_code == 0 and result.pairs == 3 and flow.shape == (3, 48, 64, 2)
    assert set(model_column) == {SHIFT}
    assert (flow[..., 1] == 0.75).all()  # the plugin's constant, exact in 1/64 px steps
    assert np.abs(flow[..., 0] - 1.5).max() < 0.2  # 1.5 + a tenth of the frames' small brightness change


SHIPPED_PLUGIN = '''
import torch
from models import FlowModel

# True in a Ray worker that got this package from the job's runtime env (unpacked under runtime_resources/).
SHIPPED = "runtime_resources" in __file__


class ConstFlow(FlowModel):
    """u = 3 where this code was shipped by Ray, else 0; v = 0.5."""

    def predict(self, image0, image1):
        b, _, h, w = image0.shape
        flow = torch.zeros(b, 2, h, w)
        flow[:, 0] = 3.0 if SHIPPED else 0.0
        flow[:, 1] = 0.5
        return flow
'''


@pytest.mark.slow
@pytest.mark.parametrize("how", ["py_modules", "working_dir"])
def test_plugin_shipped_to_ray_workers_with_runtime_env(tmp_path, how):
    """`flowlabel label --model pkg.mod:Name --runtime-env env.json` in a fresh process with its own local Ray:
    the package lives only in a temporary folder, which Ray ships to the workers (and the CLI puts on the
    driver's sys.path for its start-up check)."""
    package = tmp_path / "code" / f"shipped_{how}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "flows.py").write_text(SHIPPED_PLUGIN)
    env = {"py_modules": [str(package)]} if how == "py_modules" else {"working_dir": str(package.parent)}
    (tmp_path / "env.json").write_text(json.dumps(env))
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "b.mp4"):  # two windows of one clip each: the runtime env is applied once per run
        write_translating_video(tmp_path / "in" / name, 32, 48, 3, Motion(1.0, 0.0))
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "label",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
        "--partition",
        "none",
        "--model",
        f"{package.name}.flows:ConstFlow",
        "--runtime-env",
        str(tmp_path / "env.json"),
        "--window-units",
        "1",
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    flow, model_column = _labeled_flow(tmp_path / "out")
    assert flow.shape == (4, 32, 48, 2) and set(model_column) == {f"{package.name}.flows:ConstFlow"}
    assert (flow[..., 0] == 3.0).all() and (flow[..., 1] == 0.5).all()  # run from the shipped copy in the workers


def test_runtime_env_option_reads_yaml_json_and_finds_the_local_code(tmp_path):
    from jobs.cluster import local_code_paths, read_runtime_env

    (tmp_path / "pkg").mkdir()
    (tmp_path / "env.yaml").write_text(
        f"py_modules:\n  - {tmp_path / 'pkg'}\n  - s3://bucket/code.zip\n"
        f"working_dir: {tmp_path}\nenv_vars: {{A: '1'}}\n"
    )
    env = read_runtime_env(str(tmp_path / "env.yaml"))
    assert env["env_vars"] == {"A": "1"} and env["py_modules"][1] == "s3://bucket/code.zip"
    assert local_code_paths(env) == [str(tmp_path), str(tmp_path)]  # working_dir; the folder holding pkg/
    assert read_runtime_env('{"py_modules": ["./x"]}') == {"py_modules": ["./x"]}
    with pytest.raises(ValueError, match="expected a JSON/YAML file or a JSON object, got 'missing.yaml'"):
        read_runtime_env("missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="expected a mapping .* got list"):
        read_runtime_env(str(tmp_path / "list.yaml"))
