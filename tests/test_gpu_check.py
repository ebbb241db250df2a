"""make gpu-check, the parts that run without a GPU: comparisons, tolerances, the report and its place in
BENCHMARKS.md, the check functions with the CPU standing in for the GPU, and the no-CUDA exit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jobs import gpu_check
from jobs.bench import KEEP_MARKER
from jobs.gpu_check import BEGIN, END, epe_change_allowed, judge_epe, markdown_section, rel_l2, write_section
from pipeline.evaluate.datasets import list_sintel, load_pair

from .conftest import BENCHMARKS, RAFT_SMALL


def test_rel_l2():
    reference = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert rel_l2(reference, reference) == 0.0
    assert rel_l2(reference * 1.01, reference) == pytest.approx(0.01)
    assert rel_l2(reference + np.array([[0.0, 0.5], [0.0, 0.0]]), reference) == pytest.approx(0.1)
    assert rel_l2(np.zeros(2), np.zeros(2)) == 0.0 and math.isinf(rel_l2(np.ones(2), np.zeros(2)))
    with pytest.raises(ValueError, match=r"one shape, got \(2,\) and \(3,\)"):
        rel_l2(np.zeros(2), np.zeros(3))


def test_epe_tolerances():
    assert epe_change_allowed("bf16", 0.25) == 0.05 and epe_change_allowed("bf16", 8.0) == pytest.approx(0.4)
    assert epe_change_allowed("fp16", 0.25) == 0.02 and epe_change_allowed("fp16", 8.0) == pytest.approx(0.16)
    with pytest.raises(ValueError, match="precision: expected one of"):
        epe_change_allowed("int8", 1.0)
    ok = judge_epe({"epe_fp32": 1.0, "epe_bf16": 1.04, "epe_fp16": 0.99}, ("fp32", "bf16", "fp16"))
    assert ok["passed"] and ok["change_bf16"] == pytest.approx(0.04) and ok["allowed_fp16"] == 0.02
    assert not judge_epe({"epe_fp32": 1.0, "epe_bf16": 1.0, "epe_fp16": 1.03}, ("fp32", "bf16", "fp16"))["passed"]


RESULTS = {
    "gpu": "NVIDIA H200",
    "torch": "2.13.0",
    "finished_at": "2026-12-03T18:00:00+00:00",
    "fp32_input": "a pair",
    "fp32": [
        {"model": "dis", "weights": "none", "rel_l2": 0.0, "max_abs_px": 0.0, "passed": True},
        {"model": "raft_large", "weights": "random init", "rel_l2": 2.5e-3, "max_abs_px": 0.01, "passed": False},
        {"model": "gmflow", "benchmark": "", "error": "RuntimeError: boom", "passed": False},
    ],
    "epe": [
        {
            "model": "raft_small",
            "benchmark": "sintel clean",
            "pairs": 5,
            "epe_fp32": 0.2421,
            "epe_bf16": 0.2502,
            "epe_fp16": 0.2426,
            "change_bf16": 0.0081,
            "change_fp16": 0.0005,
            "passed": True,
        },
        {"model": "raft_small", "benchmark": "chairs", "skipped": "not available: no pairs"},
    ],
}


def test_markdown_section_rows():
    lines = markdown_section(RESULTS).splitlines()
    assert lines[0] == BEGIN and lines[-1] == END
    assert "| dis | none | 0.00e+00 | 0.00e+00 | yes |" in lines
    assert "| raft_large | random init | 2.50e-03 | 1.00e-02 | NO |" in lines
    assert "| gmflow | | | | error: RuntimeError: boom |" in lines
    assert "| raft_small | sintel clean | 5 | 0.242 | 0.250 (+0.008) | 0.243 (+0.001) | yes |" in lines
    assert "| raft_small | chairs | | | | | not available: no pairs |" in lines


def test_section_goes_below_benchs_marker_and_is_replaced_on_rerun(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# tables\n\n{KEEP_MARKER}\n\n## Optimisation log\n\nkept text\n")
    write_section(path, markdown_section(RESULTS))
    first = path.read_text()
    assert first.index(KEEP_MARKER) < first.index(BEGIN) < first.index(END) < first.index("kept text")
    write_section(path, markdown_section({**RESULTS, "gpu": "NVIDIA B200"}))
    second = path.read_text()
    assert second.count(BEGIN) == 1 and "B200" in second and "H200" not in second
    assert second.replace("B200", "H200") == first
    # bench rewrites what is above its marker and keeps the rest: the section survives
    assert BEGIN in second.split(KEEP_MARKER, 1)[1]


def test_section_in_a_new_file(tmp_path):
    path = tmp_path / "new.md"
    write_section(path, markdown_section(RESULTS))
    assert path.read_text().startswith(KEEP_MARKER + "\n\n" + BEGIN)


def test_fp32_row_with_the_cpu_on_both_sides():
    image0, image1, source = gpu_check.real_pair((40, 56), BENCHMARKS)
    assert image0.shape == (1, 3, 40, 56) and source.startswith("Sintel clean alley_1")
    row = gpu_check.fp32_row("raft_small", image0, image1, "cpu", overrides={"iters": 2})
    assert row["weights"] == "random init" and row["size"] == [40, 56] and row["reference_norm"] > 0
    assert row["rel_l2"] == 0.0 and row["max_abs_px"] == 0.0 and row["passed"]  # same weights, same device
    assert gpu_check.fp32_row("dis", image0, image1, "cpu")["weights"] == "none"


def test_epe_rows_reproduce_the_official_raft_small_number_on_cpu():
    """alley_1 1→2 clean: 0.242 with the official code (shared data README); autocast is a no-op on CPU."""
    records = [r for r in list_sintel(str(BENCHMARKS / "Sintel"), pass_name="clean") if r.sequence == "alley_1"][:1]
    samples = {"sintel clean": ("sintel", [load_pair(r) for r in records]), "kitti": "not available: test"}
    rows = gpu_check.epe_rows("raft_small", str(RAFT_SMALL), samples, "cpu", precisions=("fp32", "bf16"))
    assert rows[1] == {"model": "raft_small", "benchmark": "kitti", "skipped": "not available: test"}
    row = rows[0]
    assert row["pairs"] == 1 and round(row["epe_fp32"], 2) == 0.24 and row["change_bf16"] == 0.0 and row["passed"]


def test_without_cuda_it_says_so_and_fails(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(["--results", str(tmp_path / "r.json")]) == gpu_check.EXIT_NO_CUDA
    assert "gpu-check: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_feed_step_is_skipped_with_a_message_without_the_suite(monkeypatch, tmp_path, capsys):
    import argparse

    monkeypatch.setattr(gpu_check, "feed_suite_exists", lambda: False)
    step = gpu_check._feed(argparse.Namespace(results=str(tmp_path / "r.json"), feed_timeout_s=1.0))
    assert step == {"skipped": "flowlabel bench has no feed suite yet", "passed": None}
    assert "no feed suite" in capsys.readouterr().err


def test_run_command_records_failure_and_timeout():
    import sys

    failed = gpu_check.run_command([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], 60)
    assert failed["returncode"] == 3 and not failed["passed"] and "out" in failed["tail"]
    slow = gpu_check.run_command([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert slow["returncode"] is None and not slow["passed"] and slow["tail"].startswith("timed out after 0.5 s")
