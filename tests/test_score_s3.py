"""``flowlabel score`` with the benchmark and the outputs on S3 (SeaweedFS on loopback): the same
numbers as from the local copy, outputs written through fsspec."""

from __future__ import annotations

import json
import uuid

import pytest
import s3fs

from jobs.score_model import ScoreJob, run_score
from pipeline.label.labeler import LabelerConfig

from .conftest import BENCHMARKS

PAIRS = ("0", "1", "2")


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_score_from_s3_gives_the_local_numbers(ray_local, local_s3):
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **local_s3.storage_options)
    prefix = f"{local_s3.bucket}/score-{uuid.uuid4().hex[:8]}"
    local_root = BENCHMARKS / "FlyingChairs_release"
    for n in PAIRS:
        for suffix in ("img1.ppm", "img2.ppm", "flow.flo"):
            name = f"{int(n):05d}_{suffix}"
            fs.put_file(str(local_root / "data" / name), f"{prefix}/FlyingChairs_release/data/{name}")

    labeler = LabelerConfig("dis", batch_size=2)
    remote = run_score(
        ScoreJob(
            "chairs",
            f"s3://{prefix}/FlyingChairs_release",
            split="all",
            labeler=labeler,
            out=f"s3://{prefix}/scores",
            save_flow=True,
            storage_options=local_s3.storage_options,
        )
    )
    local = run_score(ScoreJob("chairs", str(local_root), split="all", pairs=PAIRS, labeler=labeler))

    (r,), (loc,) = remote.scores, local.scores
    assert r["num_pairs"] == loc["num_pairs"] == 3
    for key in ("epe", "epe_image_mean", "fl_all", "px1", "px3", "px5", "ause", "per_pair"):
        assert r[key] == loc[key], key  # identical, not merely close: same bytes, same order of sums
    assert r["root"].startswith("s3://")

    document = json.loads(fs.cat_file(f"{prefix}/scores/scores.json"))
    assert document["scores"][0]["epe"] == pytest.approx(loc["epe"])
    assert local_s3.secret_key not in json.dumps(document)  # credentials never land in outputs
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{prefix}/scores/flow")) == [
        "00000_flow.flo",
        "00001_flow.flo",
        "00002_flow.flo",
    ]
