from pathlib import Path

import fsspec
import pytest

from jobs.synthetic import texture, write_image_sequence
from pipeline.read.sources import iter_sources, list_sources, natural_key, sanitize_partition_value, video_id_for

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


def test_a_folder_is_listed_a_directory_at_a_time_depth_first_in_name_order(memory_root):
    fs = fsspec.filesystem("memory")
    for name in ("z.mp4", "a.mp4", "notes.txt", "sub2/c.mkv", "sub1/b.mp4", "sub1/seq/f2.png", "sub1/seq/f10.png"):
        fs.pipe_file(f"{memory_root}/corpus/{name}", b"x")
    items = iter_sources([f"{memory_root}/corpus"])
    first = next(items)
    fs.pipe_file(f"{memory_root}/corpus/sub2/d.mp4", b"x")  # sub2 is listed only when its turn comes
    names = [first, *items]
    assert [s.uri.split("/corpus/")[1] for s in names] == [
        "a.mp4",
        "z.mp4",
        "sub1/b.mp4",
        "sub1/seq",
        "sub2/c.mkv",
        "sub2/d.mp4",
    ]
    assert [s.kind for s in names] == ["video"] * 3 + ["sequence"] + ["video"] * 2
    assert [f.rsplit("/", 1)[1] for f in names[3].frames] == ["f2.png", "f10.png"]
    assert {s.corpus for s in names} == {"corpus"} and all(s.size == 1 for s in names if s.kind == "video")
    again, _ = list_sources([f"{memory_root}/corpus/sub1", f"{memory_root}/corpus"])  # a video listed twice: once
    assert [s.uri.split("/corpus/")[1] for s in again][:3] == ["sub1/b.mp4", "sub1/seq", "a.mp4"] and len(again) == 6


def test_symlinked_videos_and_frames_are_listed(tmp_path):
    # A corpus of links into a shared store: fsspec lists a local symlink as type "other", not "file".
    store, corpus = tmp_path / "store", tmp_path / "corpus"
    write_image_sequence(store / "seq", [texture(8, 8, seed=i) for i in range(3)], pattern="f{}.png")
    (store / "v.mp4").write_bytes(b"x" * 7)
    (corpus / "seq").mkdir(parents=True)
    (corpus / "a.mp4").symlink_to(store / "v.mp4")
    (corpus / "b.mp4").write_bytes(b"y")
    for frame in (store / "seq").iterdir():
        (corpus / "seq" / frame.name).symlink_to(frame)
    sources, errors = list_sources([str(corpus)])
    assert errors == []
    assert [(Path(s.uri).name, s.kind, s.size) for s in sources] == [
        ("a.mp4", "video", 7),  # the size of the file it links to
        ("b.mp4", "video", 1),
        ("seq", "sequence", None),
    ]
    assert [Path(f).name for f in sources[2].frames] == ["f1.png", "f2.png", "f3.png"]


def test_a_folder_gone_during_the_walk_is_an_error_and_its_siblings_are_listed(tmp_path):
    for name in ("a/1.mp4", "a/b/2.mp4", "a/b/deep/3.mp4", "a/c/4.mp4", "a/d/5.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = iter_sources([str(tmp_path / "a")])
    first = next(items)  # a's own listing is read: b, c and d are walked when their turn comes
    for path in sorted((tmp_path / "a" / "b").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "a" / "b").rmdir()
    rest = list(items)
    assert [first.uri, *(item.uri for item in rest)] == [
        str(tmp_path / name) for name in ("a/1.mp4", "a/b", "a/c/4.mp4", "a/d/5.mp4")
    ]
    assert [type(item).__name__ for item in rest] == ["ListingError", "Source", "Source"]
    assert rest[0].error_type == "FileNotFoundError"


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
