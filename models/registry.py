"""Model registry: one record per model name with its builder, default config and checkpoints.

A record holds everything needed to build a model and load an official checkpoint:
the builder (which only sets hyperparameters), the default inference config, the
released checkpoints with their official evaluation settings and published scores,
and the pure function that converts an official state_dict into this project's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .contract import FlowModel

StateDict = dict[str, Any]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Checkpoint:
    """One released checkpoint of a model.

    ``eval_config`` holds the official evaluation settings of this checkpoint; they are
    applied on top of the model's ``default_config`` when it is loaded. ``benchmark_config``
    maps a benchmark name ("sintel", "kitti", "chairs", …) to the settings the official
    evaluation uses on that benchmark only (e.g. RAFT: iters=24 and KITTI padding on
    KITTI); the scoring job applies them on top of ``eval_config``. ``published`` maps
    a benchmark key (e.g. ``"sintel_clean_epe"``) to the number its authors report, and
    ``source`` says where that number comes from.
    """

    name: str
    filename: str
    url: str
    sha256: str | None = None
    trained_on: str = ""
    eval_config: Mapping[str, Any] = field(default_factory=dict)
    benchmark_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    published: Mapping[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_config", _frozen(self.eval_config))
        object.__setattr__(self, "benchmark_config", _frozen({k: _frozen(v) for k, v in self.benchmark_config.items()}))
        object.__setattr__(self, "published", _frozen(self.published))


# How the released checkpoints were trained, as their ``trained_on`` says it (the papers' abbreviations in
# brackets); shared by the models trained on the same schedule.
C_T = "FlyingChairs → FlyingThings3D (C+T)"
C_T_SKHT = C_T + " → Sintel+KITTI+HD1K+Things mix (C+T+S+K+H)"
C_T_SKHT_K = C_T_SKHT + " → KITTI-2015"


def train_scores(clean: float, final: float, kitti_epe: float, kitti_fl_all: float) -> dict[str, float]:
    """``published`` scores on the training splits: Sintel EPE (clean, final), KITTI-2015 per-image EPE and
    Fl-all (%), as the official evaluate.py scripts report them."""
    return {
        "sintel_train_clean_epe": clean,
        "sintel_train_final_epe": final,
        "kitti_train_epe": kitti_epe,
        "kitti_train_fl_all": kitti_fl_all,
    }


def sintel_test_scores(clean: float, final: float) -> dict[str, float]:
    """``published`` Sintel test (server) EPE, clean and final."""
    return {"sintel_test_clean_epe": clean, "sintel_test_final_epe": final}


def identity(state: StateDict) -> StateDict:
    """Converter for checkpoints whose keys already match the model."""
    return state


# (uri, config, expected sha256 or None, storage options) → (model, sha256 of the weights)
CheckpointLoader = Callable[[str, Mapping[str, Any], "str | None", "Mapping[str, Any] | None"], tuple[FlowModel, str]]


@dataclass(frozen=True)
class ModelSpec:
    """Registry record: ``builder(**config)`` returns a :class:`FlowModel` in eval mode.

    ``load_checkpoint``: for directory checkpoints that carry their own architecture (a HuggingFace
    model directory with config.json), the function that builds the model from the checkpoint with
    ``config``'s settings and loads its weights. Checkpoint files (and every checkpoint of a spec
    without it) go through ``builder(**config)`` and a strict state_dict load through ``convert``.
    """

    name: str
    builder: Callable[..., FlowModel]
    description: str
    default_config: Mapping[str, Any] = field(default_factory=dict)
    checkpoints: tuple[Checkpoint, ...] = ()
    convert: Callable[[StateDict], StateDict] = identity
    needs_weights: bool = True
    load_checkpoint: CheckpointLoader | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_config", _frozen(self.default_config))

    def find_checkpoint(self, uri: str | None = None, sha256: str | None = None) -> Checkpoint | None:
        """The registry record of a checkpoint, matched by sha256 or by file name."""
        for ckpt in self.checkpoints:
            if sha256 and ckpt.sha256 == sha256:
                return ckpt
        if uri:
            basename = uri.rstrip("/").rsplit("/", 1)[-1]
            for ckpt in self.checkpoints:
                if ckpt.filename == basename:
                    return ckpt
        return None


class Registry(Mapping[str, ModelSpec]):
    """Read-only mapping name → :class:`ModelSpec`; names are unique."""

    def __init__(self, specs: Iterable[ModelSpec]):
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"duplicate model name {spec.name!r} in the registry")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; expected one of {sorted(self._specs)}") from None

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)
