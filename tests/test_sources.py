from pathlib import Path

import pytest

from jobs.synthetic import texture, write_image_sequence
from pipeline.read.sources import list_sources, natural_key, sanitize_partition_value, video_id_for

from .conftest import BENCHMARKS, VIDEOS


@pytest.mark.usefixtures("shared_data")
def test_folder_of_videos_lists_every_video_with_stable_ids():
    sources, errors = list_sources([str(VIDEOS)])
    assert errors == []
    names = sorted(Path(s.uri).name for s in sources)
    assert names == sorted(p.name for p in VIDEOS.iterdir() if p.suffix.lower() not in (".md", ".json"))
    assert all(s.kind == "video" and s.corpus == "videos" for s in sources)
    assert all(s.video_id == video_id_for(s.uri) and len(s.video_id) == 16 for s in sources)
    assert len({s.video_id for s in sources}) == len(sources)


def test_image_folder_is_one_sequence_in_natural_order(tmp_path):
    frames = [texture(8, 8, seed=i) for i in range(11)]
    write_image_sequence(tmp_path / "seq", frames, pattern="f{}.png", first=1)
    (sources, errors) = list_sources([str(tmp_path)])
    assert errors == []
    [seq] = sources
    assert seq.kind == "sequence" and seq.uri == str(tmp_path / "seq")
    assert [Path(f).name for f in seq.frames] == [f"f{i}.png" for i in range(1, 12)]  # f2 before f10


@pytest.mark.usefixtures("shared_data")
def test_sintel_scene_folder_and_globs():
    scene = BENCHMARKS / "Sintel" / "training" / "clean" / "alley_1"
    [seq], _ = list_sources([str(scene)])
    assert seq.corpus == "alley_1" and len(seq.frames) == 4
    videos, _ = list_sources([str(VIDEOS / "*.webm")])
    assert sorted(Path(s.uri).name for s in videos) == sorted(p.name for p in VIDEOS.glob("*.webm"))
    assert {s.corpus for s in videos} == {"videos"}


@pytest.mark.usefixtures("shared_data")
def test_single_file_takes_its_folder_as_corpus_and_explicit_corpus_wins():
    [src], _ = list_sources([str(VIDEOS / "fire2.mp4")])
    assert src.corpus == "videos"
    [src], _ = list_sources([str(VIDEOS / "fire2.mp4")], corpus="../../etc/x y")
    assert src.corpus == "etc_x_y"


@pytest.mark.usefixtures("shared_data")
def test_missing_inputs_are_reported_not_raised(tmp_path):
    sources, errors = list_sources([str(tmp_path / "nope.mp4"), str(VIDEOS / "fire2.mp4"), str(tmp_path / "*.mkv")])
    assert [Path(s.uri).name for s in sources] == ["fire2.mp4"]
    assert [e.error_type for e in errors] == ["FileNotFoundError", "FileNotFoundError"]
    assert "nope.mp4" in errors[0].message


@pytest.mark.parametrize("value, expected", [("my corpus", "my_corpus"), ("a/../../b", "a_.._.._b"), ("..", "corpus")])
def test_partition_values_cannot_escape(value, expected):
    assert sanitize_partition_value(value) == expected


def test_natural_key():
    assert sorted(["frame10.png", "frame2.png", "frame1.png"], key=natural_key) == [
        "frame1.png",
        "frame2.png",
        "frame10.png",
    ]
