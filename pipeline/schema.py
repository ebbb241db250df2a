"""The output data contract: one row per frame pair, arrays as flat lists plus height/width.

Plain pyarrow reads it back without flowlabel (see README); with the default int16 encoding
(:mod:`pipeline.encoding`) each row's flow is stored channel-planar, in 1/flow_scale px::

    t = pq.read_table(path)
    h, w = t["height"][0].as_py(), t["width"][0].as_py()
    stored = t["flow"].combine_chunks().flatten().to_numpy().reshape(-1, 2, h, w).transpose(0, 2, 3, 1)
    flow = stored / t["flow_scale"].to_numpy()[:, None, None, None]   # N×H×W×2 pixels (flow_scale = 64)

and with ``flow_encoding="float16"`` as float16 H×W×2:
``flow = t["flow"].combine_chunks().flatten().to_numpy().reshape(-1, h, w, 2)``.

List columns (not Arrow's fixed-shape tensor type) keep files of different frame sizes
readable as one dataset: every file has the same schema.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from pipeline.encoding import (
    DEFAULT_FLOW_ENCODING,
    SCALE_COLUMN,
    STORED_TYPES,
    check_encoding,
    check_stored,
    decode_labels,
)

# name: trailing shape after H×W; the stored dtype depends on the flow encoding (STORED_TYPES)
ARRAY_COLUMNS = {"flow": (2,), "occlusion": (), "confidence": ()}

# Optional columns, present only when their labeler is on (``--frame-labels``), then in every file
# of the run: the top-k classes of frame0, most probable first; null for pairs left unlabeled
# (``--frame-labels-every``). In a batch they are N×k arrays; an unlabeled row has class id −1.
FRAME_LABEL_COLUMNS = {
    "frame_classes": (np.int32, pa.int32()),
    "frame_class_names": (str, pa.string()),
    "frame_class_probs": (np.float32, pa.float32()),
}

# Carried columns (``--manifest … --carry``), present only when the run carries them, then in every file of
# the run: the chosen columns of each source's manifest row, as text (null stays null; sources not from the
# manifest get nulls). Text because one run's files must share one schema whatever each manifest row holds.
CARRIED_TYPE = pa.string()

SCALAR_COLUMNS = {
    "video_id": pa.string(),
    "source": pa.string(),
    "corpus": pa.string(),
    "frame0": pa.int32(),
    "frame1": pa.int32(),
    "t0": pa.float64(),
    "t1": pa.float64(),
    "height": pa.int32(),
    "width": pa.int32(),
    "source_height": pa.int32(),
    "source_width": pa.int32(),
    "model": pa.string(),
    "checkpoint": pa.string(),
}

# Per-pair motion summaries (pipeline.label.motion.pair_motion; definitions in the README, "Motion summaries"),
# in every row the labeler makes; NaN (null in Parquet) where a value is undefined, e.g. no valid pixel.
MOTION_COLUMNS = {
    name: pa.float32()
    for name in (
        "flow_mean",
        "flow_median",
        "flow_p95",
        "occluded_fraction",
        "confidence_mean",
        "camera_tx",
        "camera_ty",
        "camera_a11",
        "camera_a12",
        "camera_a21",
        "camera_a22",
        "camera_scale",
        "camera_rotation",
        "camera_flow_mean",
        "camera_inlier_fraction",
        "residual_mean",
        "residual_p95",
    )
}

# What a data file holds (``--store``): "dense", the label arrays and every scalar column; "summary", the
# scalar and motion columns only (no arrays), the curation mode.
STORES = ("dense", "summary")


def check_store(store: str) -> str:
    if store not in STORES:
        raise ValueError(f"store: expected one of {STORES}, got {store!r}")
    return store


def output_schema(
    exclude: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    flow_encoding: str = DEFAULT_FLOW_ENCODING,
    store: str = "dense",
    carried: tuple[str, ...] = (),
) -> pa.Schema:
    """Schema of a data file; ``exclude`` drops partition columns (they live in the path);
    ``optional`` names the :data:`MOTION_COLUMNS` and :data:`FRAME_LABEL_COLUMNS` the run writes;
    ``flow_encoding`` the array types (int16 adds the per-row ``flow_scale``); ``store`` "summary"
    leaves the arrays out and needs every motion column; ``carried`` the manifest columns, last."""
    fields = [pa.field(n, t) for n, t in SCALAR_COLUMNS.items() if n not in exclude]
    fields += [pa.field(n, t) for n, t in MOTION_COLUMNS.items() if n in optional]
    if check_store(store) == "dense":
        fields += _array_fields(check_encoding(flow_encoding))
    elif set(MOTION_COLUMNS) - set(optional):
        raise ValueError(
            f"store='summary': expected every motion column, missing {[n for n in MOTION_COLUMNS if n not in optional]}"
        )
    fields += [pa.field(n, pa.list_(t)) for n, (_, t) in FRAME_LABEL_COLUMNS.items() if n in optional]
    taken = [n for n in carried if n in {f.name for f in fields} | set(exclude)]
    if taken:
        raise ValueError(f"carried columns {taken} clash with output columns; expected other names")
    fields += [pa.field(n, CARRIED_TYPE) for n in carried]
    return pa.schema(fields)


def _array_fields(flow_encoding: str) -> list[pa.Field]:
    """The label arrays of a dense file (int16 adds the per-row ``flow_scale``)."""
    types = STORED_TYPES[flow_encoding]
    fields = [pa.field(SCALE_COLUMN, pa.int32())] if flow_encoding == "int16" else []
    layout = "2×H×W" if flow_encoding == "int16" else "H×W×2"
    return fields + [
        pa.field(
            n,
            pa.list_(types[n][1]),
            metadata={"flowlabel.encoding": flow_encoding, "flowlabel.layout": layout} if n == "flow" else None,
        )
        for n in ARRAY_COLUMNS
    ]


def optional_columns(rows: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The optional columns present in a chunk: motion columns (rows the labeler made), frame labels."""
    return tuple(n for n in (*MOTION_COLUMNS, *FRAME_LABEL_COLUMNS) if n in rows)


def carried_column(rows: Mapping[str, np.ndarray], name: str) -> pa.Array:
    """A carried column of a chunk as text (None: null); all null when the chunk lacks it. Values are text
    or None; anything else is null too (Ray Data turns a column of None into float NaN on the way)."""
    values = rows[name].tolist() if name in rows else []
    return pa.array(
        [v if isinstance(v, str) else None for v in values] or [None] * len(rows["frame0"]), type=CARRIED_TYPE
    )


def _list_column(array: np.ndarray, dtype: np.dtype, arrow_type: pa.DataType) -> pa.ListArray:
    n = array.shape[0]
    flat = np.ascontiguousarray(array, dtype=dtype).reshape(n, -1)
    offsets = np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.reshape(-1), type=arrow_type))


def top_k_column(values: np.ndarray, valid: np.ndarray, arrow_type: pa.DataType) -> pa.ListArray:
    """N×k values → N lists of k, null where ``valid`` is False."""
    n, k = np.shape(values)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    return pa.ListArray.from_arrays(
        offsets, pa.array(np.asarray(values).reshape(-1), type=arrow_type), mask=pa.array(~np.asarray(valid, bool))
    )


# The clip table (``--clip-labels``), one row per clip, under ``<out>/_clips/``: frame indices and
# presentation times of the clip's first and last frame; top-k classes, most probable first; mean
# squared reconstruction errors of the video (RGB in [0, 1]) and the audio (samples in [−1, 1]).
CLIP_COLUMNS = {
    "video_id": pa.string(),
    "source": pa.string(),
    "corpus": pa.string(),
    "clip": pa.int32(),
    "frame_first": pa.int32(),
    "frame_last": pa.int32(),
    "t0": pa.float64(),
    "t1": pa.float64(),
    "has_audio": pa.bool_(),
    "classes": pa.list_(pa.int32()),
    "class_names": pa.list_(pa.string()),
    "class_probs": pa.list_(pa.float32()),
    "video_mse": pa.float32(),
    "audio_mse": pa.float32(),
    "model": pa.string(),
    "checkpoint": pa.string(),
}


def clip_table(rows: Mapping[str, np.ndarray], exclude: tuple[str, ...] = ()) -> pa.Table:
    """Numpy columns of one chunk of clips (top-k columns N×k) → an Arrow table of :data:`CLIP_COLUMNS`."""
    schema = pa.schema([pa.field(n, t) for n, t in CLIP_COLUMNS.items() if n not in exclude])
    columns = []
    for field in schema:
        if pa.types.is_list(field.type):
            columns.append(top_k_column(rows[field.name], np.ones(len(rows[field.name]), bool), field.type.value_type))
        else:
            columns.append(pa.array(np.asarray(rows[field.name]), type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def to_table(
    rows: Mapping[str, np.ndarray],
    exclude: tuple[str, ...] = (),
    flow_encoding: str = DEFAULT_FLOW_ENCODING,
    store: str = "dense",
    carried: tuple[str, ...] = (),
) -> pa.Table:
    """Numpy columns of one chunk (arrays N×H×W[×2], stored in ``flow_encoding``: see
    :func:`pipeline.encoding.encode_labels`; none for ``store="summary"``) → an Arrow table with
    :func:`output_schema`; a ``carried`` column the chunk lacks (a source not from the manifest) is all null."""
    schema = output_schema(exclude, optional_columns(rows), flow_encoding, store, carried)
    if store == "dense":
        check_stored(rows, flow_encoding)
    columns = []
    for field in schema:
        if field.name in ARRAY_COLUMNS:
            dtype, arrow_type = STORED_TYPES[flow_encoding][field.name]
            values = rows[field.name]
            if field.name == "flow" and flow_encoding == "int16":
                values = np.moveaxis(values, -1, 1)  # channel planes: each is smooth, so deltas stay small
            columns.append(_list_column(values, dtype, arrow_type))
        elif field.name in carried:
            columns.append(carried_column(rows, field.name))
        elif field.name in FRAME_LABEL_COLUMNS:
            valid = np.asarray(rows["frame_classes"])[:, 0] >= 0
            columns.append(top_k_column(rows[field.name], valid, FRAME_LABEL_COLUMNS[field.name][1]))
        else:
            values = np.asarray(rows[field.name])
            mask = np.isnan(values) if values.dtype.kind == "f" else None
            columns.append(pa.array(values, type=field.type, mask=mask))
    return pa.Table.from_arrays(columns, schema=schema)


def arrays_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """The inverse for files of one frame size, decoded: {'flow': N×H×W×2 pixels (float32 from
    int16, float16 as stored), 'occlusion': N×H×W uint8, 'confidence': N×H×W in [0, 1]}."""
    h, w = table["height"][0].as_py(), table["width"][0].as_py()
    stored: dict[str, np.ndarray] = {}
    for name, trailing in ARRAY_COLUMNS.items():
        if name in table.column_names:
            flat = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            if name == "flow" and pa.types.is_int16(table.schema.field(name).type.value_type):
                stored[name] = flat.reshape(table.num_rows, 2, h, w).transpose(0, 2, 3, 1)
            else:
                stored[name] = flat.reshape(table.num_rows, h, w, *trailing)
    if SCALE_COLUMN in table.column_names:
        stored[SCALE_COLUMN] = table[SCALE_COLUMN].to_numpy()
    return decode_labels(stored)
