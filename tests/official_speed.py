"""Our learned models against their official code: the same weights and input, outputs compared
and forward passes timed, CPU float32. A measuring script for BENCHMARKS.md, like the
*_reference.py scripts beside it (it needs the official checkouts, never committed):

    .venv/bin/python -m tests.official_speed raft /path/to/princeton-vl/RAFT
    .venv/bin/python -m tests.official_speed gmflow /path/to/haofeixu/gmflow
    .venv/bin/python -m tests.official_speed deqflow /path/to/locuslab/deq-flow
    PYTHONPATH=<scipy stub> .venv/bin/python -m tests.official_speed searaft /path/to/princeton-vl/SEA-RAFT

(SEA-RAFT's official code needs the stand-ins described in tests/searaft_reference.py.)
    .venv/bin/python -m tests.official_speed unimatch /path/to/autonomousvision/unimatch

One family per process: the official repositories each have top-level modules named ``utils``,
``update``, ``corr``. Input: the shared Sintel clean alley_1 frames 1 → 2 cropped to 432×1024
(a multiple of 8, so RAFT and DEQ-Flow need no padding; the GMFlow and UniMatch codes pad it the same way).
Weights: the real raft-small checkpoint, else the seeded weights of the reference scripts in the
official key format. One forward direction, the official evaluation settings of the registry.
Timings: wall clock of one forward pass, ``--threads`` torch threads, a warm-up run of each,
then ``--repeats`` rounds alternating ours and theirs; the minimum is reported.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models import load_model
from models.checkpoint import load_strict

CROP = (slice(2, 434), slice(0, 1024))  # 436×1024 → 432×1024


def sintel_pair() -> tuple[torch.Tensor, torch.Tensor]:
    from tests.raft_reference import SINTEL_CLEAN, read_rgb

    return tuple(read_rgb(SINTEL_CLEAN / f"frame_000{i}.png")[..., CROP[0], CROP[1]].contiguous() for i in (1, 2))


def raft_cases(checkout: Path) -> dict[str, tuple[Callable, Callable]]:
    from tests.raft_reference import RAFT_SMALL, _official_raft, seeded_state

    RAFT, InputPadder = _official_raft(checkout)
    cases = {}
    for name, small in (("raft_small", True), ("raft_large", False)):
        iters = 32  # the official Sintel evaluation (evaluate.py validate_sintel)
        if small:
            ours = load_model(name, checkpoint=str(RAFT_SMALL), iters=iters)
            official_file = torch.load(RAFT_SMALL, map_location="cpu", weights_only=True)
            state = {k.removeprefix("module."): v for k, v in official_file.items()}
        else:
            ours = load_model(name, random_init=True, iters=iters)
            state = seeded_state(ours)
            load_strict(ours, state)
        official = RAFT(argparse.Namespace(small=small, mixed_precision=False, alternate_corr=False))
        official.load_state_dict(state, strict=True)
        official.eval()

        def theirs(a, b, official=official, iters=iters):
            padder = InputPadder(a.shape, mode="sintel")
            return padder.unpad(official(*padder.pad(a, b), iters=iters, test_mode=True)[1])

        cases[name] = (ours.eval(), theirs)
    return cases


def gmflow_cases(checkout: Path) -> dict[str, tuple[Callable, Callable]]:
    from tests.gmflow_reference import official_gmflow

    return _gmflow_family_cases(official_gmflow(str(checkout)))


def unimatch_cases(checkout: Path) -> dict[str, tuple[Callable, Callable]]:
    from tests.unimatch_reference import official_unimatch

    return _gmflow_family_cases(official_unimatch(str(checkout)))


def _gmflow_family_cases(officials: dict) -> dict[str, tuple[Callable, Callable]]:
    """Ours with the reference scripts' seeded weights beside each official GMFlow / UniMatch model."""
    from tests.gmflow_reference import seeded_state_dict

    cases = {}
    for name, official in officials.items():
        ours = load_model(name, random_init=True)
        load_strict(ours, seeded_state_dict(ours.state_dict()))
        cases[name] = (ours.eval(), official.flow)
    return cases


def deqflow_cases(checkout: Path) -> dict[str, tuple[Callable, Callable]]:
    from models.deqflow import convert_official
    from tests.deqflow_reference import CASES, _official_model, _stub_imports, seeded_state

    _stub_imports()
    cases = {}
    for case in ("t_anderson", "b_anderson"):
        name, overrides, version, size, solver = CASES[case]
        ours = load_model(name, random_init=True, **overrides)
        state = seeded_state(ours)
        load_strict(ours, convert_official(state))
        official = _official_model(checkout.resolve(), version, size, solver, overrides["f_thres"])
        official.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
        official.eval()
        cases[f"{name} ({solver}, {overrides['f_thres']} steps)"] = (ours.eval(), lambda a, b, o=official: o(a, b)[1])
    return cases


def searaft_cases(checkout: Path) -> dict[str, tuple[Callable, Callable]]:
    from tests.searaft_reference import _official, official_args, official_calc_flow, seeded_state

    RAFT = _official(checkout.resolve())
    calc_flow = official_calc_flow(checkout.resolve())
    cases = {}
    # Full widths; the Sintel settings (scale 0) and the Spring ones (scale -1, the network at 216×512).
    for name, config_file in (
        ("searaft_s", "sintel-S.json"),
        ("searaft_m", "sintel-M.json"),
        ("searaft_l", "sintel-L.json"),
        ("searaft_m", "spring-M.json"),
    ):
        args = official_args(checkout, config_file, full_width=True)
        ours = load_model(name, random_init=True, iters=args.iters, scale=args.scale)
        load_strict(ours, seeded_state(ours.state_dict()))
        official = RAFT(args).eval()
        official.load_state_dict(seeded_state(official.state_dict()), strict=True)
        cases[f"{name} (scale {args.scale})"] = (
            ours.eval(),
            lambda a, b, o=official, args=args: calc_flow(args, o, a, b)[0],
        )
    return cases


FAMILIES = {
    "raft": raft_cases,
    "gmflow": gmflow_cases,
    "deqflow": deqflow_cases,
    "searaft": searaft_cases,
    "unimatch": unimatch_cases,
}


@torch.no_grad()
def compare(
    ours: Callable, theirs: Callable, image0: torch.Tensor, image1: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Max and relative L2 difference of the flows; best wall-clock seconds of each."""
    times: dict[str, list[float]] = {"ours": [], "official": []}
    flows = {}
    for round_ in range(repeats + 1):  # round 0 warms up
        for who, fn in (("ours", ours), ("official", theirs)):
            start = time.perf_counter()
            flows[who] = fn(image0, image1)
            if round_:
                times[who].append(time.perf_counter() - start)
    diff = flows["ours"] - flows["official"]
    return {
        "ours_s": min(times["ours"]),
        "official_s": min(times["official"]),
        "max_abs_diff_px": float(diff.abs().max()),
        "rel_l2": float(diff.norm() / flows["official"].norm()),
        "max_abs_flow_px": float(flows["official"].abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("checkout", type=Path, help="the official repository's checkout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image0, image1 = sintel_pair()
    for name, (ours, theirs) in FAMILIES[args.family](args.checkout).items():
        row = {
            "model": name,
            "size": "432×1024",
            "threads": args.threads,
            **compare(ours, theirs, image0, image1, args.repeats),
        }
        print(json.dumps(row), flush=True)
        print(
            f"| {name} | {row['official_s']:.2f} | {row['ours_s']:.2f} | {row['official_s'] / row['ours_s']:.2f}× "
            f"| {row['max_abs_diff_px']:.1e} | {row['rel_l2']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
