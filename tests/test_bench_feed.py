"""The feed benchmark's arithmetic on constructed traces, and the stand-in accelerator itself."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.bench_feed import StandIn, busy_in, feed_row, read_traces, steady_window
from pipeline.label.labeler import label_frames

ROOT = Path(__file__).resolve().parents[1]


def test_steady_window_spans_the_middle_pairs():
    # 10 calls of 1 pair, 1 s each, back to back from t = 0: pairs 1..9 of 10 are the middle 80 %.
    calls = [(float(i), i + 1.0, 1, 0.0) for i in range(10)]
    assert steady_window([calls]) == (1.0, 9.0)


def test_busy_counts_only_the_held_time_inside_the_window():
    # Held 0.5 s of every second: busy 0.5; a call half inside counts half its pairs.
    calls = [(float(i), i + 0.5, 2, 0.0) for i in range(10)]
    held, pairs = busy_in(calls, 1.25, 9.0)
    assert held == pytest.approx(0.25 + 7 * 0.5) and pairs == pytest.approx(1 + 7 * 2)


def test_feed_row_from_traces_and_stage_stats():
    # Two stand-ins, each busy 80 % of the time at 100 ms per pair; 200 pairs; 1080p frames.
    traces = [[(i * 0.5 + k * 0.01, i * 0.5 + 0.4 + k * 0.01, 4, 0.1 * i) for i in range(25)] for k in range(2)]
    stats = {
        "pairs": 200,
        "seconds": 14.0,
        "stages": [
            {"stage": "read", "cpu_seconds": 4.0, "bytes_out": 200 * 1080 * 1920 * 3 * 1.05},
            {"stage": "label", "cpu_seconds": 9.0, "bytes_out": 200 * 1000},
            {"stage": "write", "cpu_seconds": 6.0, "bytes_out": 100},
        ],
    }
    row = feed_row(traces, stats, ms=100.0, gpus=2, size=(1080, 1920), cores=2)
    assert row["busy"] == pytest.approx(0.8, abs=0.02)
    assert row["pairs_per_s"] == pytest.approx(2 * 4 / 0.5, rel=0.03) and row["ideal_pairs_per_s"] == 20
    assert row["cpu_s_per_pair"]["read"] == pytest.approx(0.02) and row["cpu_s_per_pair"]["write"] == 0.03
    assert row["cpu_s_per_pair"]["label"] == pytest.approx(2 * 2.4 / 192)  # CPU between first and last call
    assert row["read_frames_per_pair"] == pytest.approx(1.05)
    # (0.02 + 0.025 + 0.03) CPU-s/pair × 20 pairs/s = 1.5 cores: the 2 cores suffice
    assert row["cores_needed"] == pytest.approx(1.5) and row["cores_suffice"]


def test_standin_holds_the_device_and_computes_nothing(tmp_path):
    """Through the labeler: the pairs' frames go to the meta device, T ms per pair is held and
    logged, and zeros of the stored shapes come back."""
    model = StandIn(ms_per_pair=30, trace=str(tmp_path))
    model.checkpoint_sha256 = ""
    assert model.to("cpu").device_anchor.device.type == "meta"
    frames = np.zeros((5, 24, 32, 3), np.uint8)
    stored = label_frames(model, frames, np.arange(4), np.arange(1, 5), batch_size=3)
    assert stored["flow"].shape == (4, 24, 32, 2) and not stored["flow"].any()
    [calls] = read_traces(tmp_path)
    assert [c[2] for c in calls] == [3, 1]
    assert calls[0][1] - calls[0][0] >= 0.09 and calls[1][1] - calls[1][0] >= 0.03  # held T per pair
    flow = model(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))  # a plain call: zeros on the CPU
    assert flow.shape == (2, 2, 8, 8) and flow.device.type == "cpu"
    with pytest.raises(ValueError, match="ms_per_pair: expected ≥ 0"):
        StandIn(ms_per_pair=-1)


@pytest.mark.slow
def test_feed_suite_through_ray_with_a_fake_gpu(tmp_path):
    """The whole suite, small: a local Ray declaring one fake GPU, the stand-in loaded through the
    plugin path, 2 videos of 60 pairs. Frames cross the object store once: a video's one chunk of
    60 pairs carries 61 frames (the reader sent 2 per pair before). In a process of its own: the
    suite starts and stops its own Ray, which must not be the test session's."""
    code = (
        "import json, sys; from pathlib import Path; from jobs.bench_feed import feed_suite; "
        "t = Path(sys.argv[1]); print(json.dumps(feed_suite(t / 'cache', t / 'work', quick=True, "
        "sizes=((96, 128),), ms_list=(20.0,), gpus_list=(1,), pairs=120)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [row] = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["pairs"] == 120 and row["gpus"] == 1 and row["ideal_pairs_per_s"] == 50
    assert 0 < row["busy"] <= 1 and 0 < row["pairs_per_s"] <= 50 * 1.05
    assert row["read_frames_per_pair"] == pytest.approx(61 / 60, rel=0.02)
    assert row["cpu_s_per_pair"]["read"] > 0 and row["cpu_s_per_pair"]["write"] > 0
