"""Models from outside the project: import paths and installed packages' entry points.

A model name is a registry name (``raft_small``), a name an installed package registers under
the ``flowlabel.models`` entry-point group, or an import path ``package.module:Name`` of a
:class:`FlowModel` subclass or of a factory returning one. :class:`PluginRegistry` resolves all
three to a :class:`ModelSpec`, so loading, checkpoints and sha256 work the same for each.

Plugin models are probed once when loaded (:func:`check_contract`): a model that breaks the
contract fails at start-up, with what was expected and what came back, not on the first chunk.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .contract import FlowModel, PairFlows
from .registry import ModelSpec, Registry

ENTRY_POINT_GROUP = "flowlabel.models"
BUILTIN = "builtin"
PROBE_SIZE = (32, 48)  # (H, W) of the probe frames before rounding up to pad_multiple; H ≠ W catches transposes


class PluginError(ValueError):
    """A plugin model that cannot be used: unresolvable import path, not a FlowModel, or broken output."""


def is_import_path(name: str) -> bool:
    """True for ``package.module:Name`` (registry names never hold a colon)."""
    return ":" in name


def resolve(path: str) -> Any:
    """The object at ``package.module:Name`` (``Name`` may be dotted: ``module:Outer.make``)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise PluginError(f"model {path!r}: expected an import path package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PluginError(
                f"model {path!r}: cannot import module {module_name!r}: no module named {exc.name!r} "
                "on this machine's sys.path (install the package, or ship the code to the workers "
                "with --runtime-env)"
            ) from exc
        raise PluginError(
            f"model {path!r}: importing module {module_name!r} failed: {exc} (a dependency of the plugin is missing)"
        ) from exc
    except Exception as exc:  # the plugin's own import-time error
        raise PluginError(
            f"model {path!r}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = (
                f"module {module_name!r} ({getattr(module, '__file__', None) or 'no file'})"
                if i == 0
                else repr(f"{module_name}:{'.'.join(parts[:i])}")
            )
            raise PluginError(f"model {path!r}: {owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def describe(obj: Any) -> str:
    """What ``obj`` is, for error messages: 'class torch.nn.Linear', 'int 3', 'FlowModel instance of …'."""
    if inspect.isclass(obj):
        return f"class {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, nn.Module):
        return f"an instance of {type(obj).__module__}.{type(obj).__qualname__}"
    text = repr(obj)
    return f"{type(obj).__name__} {text[:60] + '…' if len(text) > 60 else text}"


def builder_for(path: str, obj: Any) -> Callable[..., FlowModel]:
    """``builder(**config)`` for a FlowModel subclass or a factory; PluginError for anything else."""
    if inspect.isclass(obj):
        if not issubclass(obj, FlowModel):
            bases = ", ".join(f"{b.__module__}.{b.__qualname__}" for b in obj.__mro__[1:-1]) or "object"
            raise PluginError(
                f"model {path!r} is {describe(obj)}, not a FlowModel subclass (its bases: {bases}); "
                "expected a subclass of models.FlowModel or a factory returning one"
            )
    elif isinstance(obj, nn.Module) or not callable(obj):
        raise PluginError(
            f"model {path!r} is {describe(obj)}; expected a subclass of models.FlowModel "
            "or a factory (callable) returning one"
        )

    def build(**config: Any) -> FlowModel:
        try:
            model = obj(**config)
        except Exception as exc:
            raise PluginError(
                f"model {path!r}: calling it with config {config} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(model, FlowModel):
            raise PluginError(f"model {path!r}: the factory returned {describe(model)}, expected a models.FlowModel")
        return model

    return build


def spec_for_import_path(path: str) -> ModelSpec:
    """A ModelSpec built on the fly: the object's builder, no default config, weights optional."""
    obj = resolve(path)
    doc = (inspect.getdoc(obj) or "").strip().splitlines()
    return ModelSpec(
        name=path, builder=builder_for(path, obj), description=doc[0] if doc else path, needs_weights=False
    )


def entry_point_origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return f"entry point {dist.name} {dist.version}" if dist is not None else f"entry point {entry_point.value}"


def specs_of_entry_point(entry_point: importlib.metadata.EntryPoint) -> list[ModelSpec]:
    """The ModelSpec records an entry point gives: a ModelSpec, a sequence of them, or a callable returning either."""
    where = f"{entry_point_origin(entry_point)} ({entry_point.name} = {entry_point.value}, group {ENTRY_POINT_GROUP})"
    try:
        value = entry_point.load()
        if callable(value) and not isinstance(value, ModelSpec):
            value = value()
    except Exception as exc:
        raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
    specs = [value] if isinstance(value, ModelSpec) else value
    if not isinstance(specs, Sequence) or isinstance(specs, str) or not all(isinstance(s, ModelSpec) for s in specs):
        raise PluginError(
            f"{where} gave {describe(value)}; expected a ModelSpec, a sequence of them, or a callable returning either"
        )
    return list(specs)


class PluginRegistry(Mapping[str, ModelSpec]):
    """The built-in :class:`Registry` plus entry-point models (read when first needed) and import paths.

    Iterating lists built-in and entry-point models (import paths cannot be listed); ``origin(name)``
    says where a model comes from: "builtin", "entry point DIST VERSION" or "import path".
    """

    def __init__(self, builtin: Registry, group: str = ENTRY_POINT_GROUP):
        self._builtin = builtin
        self._group = group
        self._entry_points: dict[str, tuple[ModelSpec, str]] | None = None
        self._import_paths: dict[str, ModelSpec] = {}

    def _plugins(self) -> dict[str, tuple[ModelSpec, str]]:
        if self._entry_points is None:
            found: dict[str, tuple[ModelSpec, str]] = {}
            for entry_point in importlib.metadata.entry_points(group=self._group):
                origin = entry_point_origin(entry_point)
                for spec in specs_of_entry_point(entry_point):
                    self._check_new_name(spec.name, origin, found)
                    found[spec.name] = (spec, origin)
            self._entry_points = found
        return self._entry_points

    def _check_new_name(self, name: str, origin: str, found: Mapping[str, tuple[ModelSpec, str]]) -> None:
        if is_import_path(name):
            raise PluginError(f"model name {name!r} from {origin}: expected a name without ':'")
        if name in self._builtin or name in found:
            other = BUILTIN if name in self._builtin else found[name][1]
            raise PluginError(
                f"model name {name!r} from {origin} clashes with the {other} model {name!r}; "
                "one of them must be renamed or uninstalled"
            )

    def __getitem__(self, name: str) -> ModelSpec:
        if name in self._builtin:
            return self._builtin[name]
        if is_import_path(name):
            if name not in self._import_paths:
                self._import_paths[name] = spec_for_import_path(name)
            return self._import_paths[name]
        plugins = self._plugins()
        if name in plugins:
            return plugins[name][0]
        raise KeyError(
            f"unknown model {name!r}; expected one of {sorted(self)} or an import path "
            "package.module:Name of a FlowModel subclass or factory"
        )

    def __iter__(self) -> Iterator[str]:
        yield from self._builtin
        yield from self._plugins()

    def __len__(self) -> int:
        return len(self._builtin) + len(self._plugins())

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: "builtin", "entry point DIST VERSION" or "import path"."""
        if name in self._builtin:
            return BUILTIN
        self[name]  # resolves it, or raises why not
        return "import path" if is_import_path(name) else self._plugins()[name][1]


def probe_shape(model: FlowModel) -> tuple[int, int]:
    """(H, W) of the probe frames: :data:`PROBE_SIZE` rounded up to the model's ``pad_multiple``."""
    m = max(1, int(model.pad_multiple))
    h = -(-PROBE_SIZE[0] // m) * m
    w = -(-PROBE_SIZE[1] // m) * m
    return h, (w if w != h else h + m)


def _expect_flow(name: str, what: str, value: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(value, torch.Tensor):
        raise PluginError(f"model {name!r}: {what}: expected a tensor of shape {shape}, got {describe(value)}")
    if tuple(value.shape) != shape:
        raise PluginError(f"model {name!r}: {what}: expected shape {shape}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise PluginError(
            f"model {name!r}: {what}: expected a float tensor (float32 flow in pixels), got {value.dtype}"
        )


def check_contract(model: FlowModel, name: str) -> FlowModel:
    """Run two random H×W frames (H, W multiples of ``pad_multiple``) through ``model.pairs`` on its
    device and check what the hook ``predict_pairs`` returns and what ``pairs`` hands on: forward
    and backward flow 1×2×H×W float, confidence None or 1×H×W. Returns ``model``; PluginError otherwise."""
    h, w = probe_shape(model)
    device = next(iter(model.parameters()), torch.empty(0)).device
    frames = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)).mul(255).to(device)
    index0, index1 = torch.tensor([0], device=device), torch.tensor([1], device=device)
    with torch.inference_mode():
        try:
            raw = model.predict_pairs(frames, index0, index1)
            if not isinstance(raw, PairFlows):
                raise PluginError(f"model {name!r}: predict_pairs: expected a models.PairFlows, got {describe(raw)}")
            _expect_flow(name, "predict_pairs forward flow", raw.forward, (1, 2, h, w))
            _expect_flow(name, "predict_pairs backward flow", raw.backward, (1, 2, h, w))
            if raw.confidence is not None:
                _expect_flow(name, "predict_pairs confidence", raw.confidence, (1, h, w))
            out = model.pairs(frames, index0, index1)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"model {name!r} failed on two probe frames 3×{h}×{w}: {type(exc).__name__}: {exc}"
            ) from exc
    for what, value in (("forward", out.forward), ("backward", out.backward)):
        if not torch.isfinite(value).all():
            raise PluginError(
                f"model {name!r}: {what} flow: expected finite values, got "
                f"{int((~torch.isfinite(value)).sum())} non-finite of {value.numel()}"
            )
    return model
