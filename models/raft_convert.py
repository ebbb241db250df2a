"""State-dict converters for RAFT: official princeton-vl checkpoints and torchvision's weights.

The model keeps the official module names (``fnet``, ``cnet``, ``update_block`` …), so an
official checkpoint only loses DataParallel's ``module.`` prefix. torchvision's RAFT
(``torchvision.models.optical_flow.raft_large/raft_small``) has the same architecture and
parameter shapes under other names (``feature_encoder.convnormrelu.0.weight`` …); its keys are
renamed one to one. The only structural difference is that torchvision registers each
downsample norm once, where the official blocks register it twice (``normN`` and
``downsample.1``): the converter writes both names, pointing at the same tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .checkpoint import CheckpointError, strip_prefix

StateDict = dict[str, Any]

TORCHVISION_PREFIXES = ("feature_encoder.", "context_encoder.")

# torchvision name (after the top-level module) → official name; first full match wins.
_ENCODER_RULES = (
    (r"convnormrelu\.0\.(\w+)", r"conv1.\1"),
    (r"convnormrelu\.1\.(\w+)", r"norm1.\1"),
    (r"conv\.(\w+)", r"conv2.\1"),
    (r"(layer\d\.\d)\.convnormrelu(\d)\.0\.(\w+)", r"\1.conv\2.\3"),
    (r"(layer\d\.\d)\.convnormrelu(\d)\.1\.(\w+)", r"\1.norm\2.\3"),
    (r"(layer\d\.\d\.downsample\.[01]\.\w+)", r"\1"),
)
_UPDATE_RULES = (
    (r"motion_encoder\.convcorr(\d)\.0\.(\w+)", r"encoder.convc\1.\2"),
    (r"motion_encoder\.convflow(\d)\.0\.(\w+)", r"encoder.convf\1.\2"),
    (r"motion_encoder\.conv\.0\.(\w+)", r"encoder.conv.\1"),
    (r"(flow_head\.conv\d\.\w+)", r"\1"),
)
_MASK_RULES = (
    (r"convrelu\.0\.(\w+)", r"mask.0.\1"),
    (r"conv\.(\w+)", r"mask.2.\1"),
)
# torchvision's two GRUs of the large model are official convX1 / convX2 of one SepConvGRU;
# the small model's single GRU is the official plain ConvGRU (convz, convr, convq).
_GRU = re.compile(r"recurrent_block\.convgru(\d)\.(conv[zrq])\.(\w+)")

_MODULES = {
    "feature_encoder": ("fnet", _ENCODER_RULES),
    "context_encoder": ("cnet", _ENCODER_RULES),
    "update_block": ("update_block", _UPDATE_RULES),
    "mask_predictor": ("update_block", _MASK_RULES),
}


def is_torchvision_state(state: Mapping[str, Any]) -> bool:
    """True when ``state`` uses torchvision's RAFT key names."""
    return any(k.startswith(TORCHVISION_PREFIXES) for k in state)


def _rename(key: str, separable_gru: bool) -> str | None:
    top, _, rest = key.partition(".")
    if top not in _MODULES:
        return None
    name, rules = _MODULES[top]
    if top == "update_block" and (m := _GRU.fullmatch(rest)):
        index, gate, param = m.groups()
        suffix = index if separable_gru else ""
        if not separable_gru and index != "1":
            return None
        return f"{name}.gru.{gate}{suffix}.{param}"
    for pattern, replacement in rules:
        if re.fullmatch(pattern, rest):
            return f"{name}.{re.sub(pattern, replacement, rest)}"
    return None


def convert_torchvision_state(state: Mapping[str, Any]) -> StateDict:
    """torchvision RAFT state_dict → official names; CheckpointError lists keys it cannot place."""
    separable_gru = any(".convgru2." in k for k in state)
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        new = _rename(key, separable_gru)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"expected torchvision RAFT keys, got unknown keys: {', '.join(sorted(unknown))}")
    for key in [k for k in out if ".downsample.1." in k]:
        block, param = key.split(".downsample.1.")
        alias = "norm4" if f"{block}.conv3.weight" in out else "norm3"  # bottleneck blocks have conv3
        out[f"{block}.{alias}.{param}"] = out[key]
    return out


def convert_raft_state(state: Mapping[str, Any]) -> StateDict:
    """Registry converter: an official checkpoint (``module.`` prefix or none) or torchvision's
    weights → this project's (= the official) parameter names."""
    if is_torchvision_state(state):
        return convert_torchvision_state(state)
    return strip_prefix(state, "module.")
