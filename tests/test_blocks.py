"""Ray Data joins the blocks a task yields and cuts a joined block that outgrows its target by rows: no cut
may split a chunk, or the chunk's file is written from part of its rows (jobs.cluster.block_bytes)."""

import numpy as np
import pyarrow.dataset as pads
import pytest

import jobs.cluster
from jobs.cluster import MIN_BLOCK_BYTES, block_bytes
from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, write_translating_video
from pipeline.chunks import CHUNK_PAIRS
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions
from pipeline.write.sinks import SinkOptions, check_whole, write_batch
from tests.test_schema import chunk_rows

H, W, FRAMES = 96, 128, 81
PAIRS_PER_CHUNK = 8


def test_blocks_hold_four_chunks_and_at_least_rays_default():
    assert block_bytes(48 * 2**20) == 192 * 2**20
    assert block_bytes(2**20) == MIN_BLOCK_BYTES == 128 * 2**20


def test_the_writer_refuses_a_cut_chunk(tmp_path):
    rows = chunk_rows(n=4, seed=0)
    rows[CHUNK_PAIRS] = np.full(4, 4, np.int32)
    check_whole(rows)  # whole: accepted
    cut = {name: column[:3] for name, column in rows.items()}
    with pytest.raises(ValueError, match="3 pair rows arrived together, expected all 4"):
        write_batch(cut, SinkOptions(str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_video_of_many_chunks_in_small_blocks_keeps_every_pair(ray_local, tmp_path, monkeypatch):
    """Blocks of 4 chunks: the read task's 10 chunks and the labeler's 10 chunks of labels pass the target,
    so Ray cuts joined blocks by rows. float16 labels (7 bytes a pixel) are not the frames' 6 bytes a pixel
    of a pair, so a cut of labels by bytes falls inside a chunk unless the labeler yields chunk by chunk.
    Every pair is still written, once."""
    monkeypatch.setattr(jobs.cluster, "MIN_BLOCK_BYTES", 0)
    (tmp_path / "v").mkdir()
    write_translating_video(tmp_path / "v" / "long.mp4", H, W, FRAMES, Motion(2.0, 1.0), seed=0)
    read = ReadOptions(chunk_bytes=PAIRS_PER_CHUNK * 2 * H * W * 3)
    job = LabelJob(
        inputs=(str(tmp_path / "v"),),
        sink=SinkOptions(str(tmp_path / "out"), flow_encoding="float16"),
        labeler=LabelerConfig("dis"),
        read=read,
    )
    result = run_label(job)
    table = pads.dataset(str(tmp_path / "out"), format="parquet", partitioning="hive").to_table()
    assert result.exit_code == 0 and result.pairs == FRAMES - 1 and result.chunks == 10
    assert sorted(table["frame0"].to_pylist()) == list(range(FRAMES - 1))
