"""The output data contract: one row per frame pair, arrays as flat lists plus height/width.

Plain pyarrow reads it back without flowlabel (see README)::

    t = pq.read_table(path)
    h, w = t["height"][0].as_py(), t["width"][0].as_py()
    flow = t["flow"].combine_chunks().flatten().to_numpy().reshape(-1, h, w, 2)

List columns (not Arrow's fixed-shape tensor type) keep files of different frame sizes
readable as one dataset: every file has the same schema.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

ARRAY_COLUMNS = {
    # name: (numpy dtype, arrow type, trailing shape after H×W)
    "flow": (np.float16, pa.float16(), (2,)),
    "occlusion": (np.uint8, pa.uint8(), ()),
    "confidence": (np.float16, pa.float16(), ()),
}

# Optional columns, present only when their labeler is on (``--frame-labels``), then in every file
# of the run: the top-k classes of frame0, most probable first; null for pairs left unlabeled
# (``--frame-labels-every``). In a batch they are N×k arrays; an unlabeled row has class id −1.
FRAME_LABEL_COLUMNS = {
    "frame_classes": (np.int32, pa.int32()),
    "frame_class_names": (str, pa.string()),
    "frame_class_probs": (np.float32, pa.float32()),
}

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


def output_schema(exclude: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> pa.Schema:
    """Schema of a data file; ``exclude`` drops partition columns (they live in the path);
    ``optional`` names the :data:`FRAME_LABEL_COLUMNS` the run writes."""
    fields = [pa.field(n, t) for n, t in SCALAR_COLUMNS.items() if n not in exclude]
    fields += [pa.field(n, pa.list_(t)) for n, (_, t, _) in ARRAY_COLUMNS.items()]
    fields += [pa.field(n, pa.list_(t)) for n, (_, t) in FRAME_LABEL_COLUMNS.items() if n in optional]
    return pa.schema(fields)


def optional_columns(rows: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The optional columns present in a chunk."""
    return tuple(n for n in FRAME_LABEL_COLUMNS if n in rows)


def _list_column(array: np.ndarray, dtype: np.dtype, arrow_type: pa.DataType) -> pa.ListArray:
    n = array.shape[0]
    flat = np.ascontiguousarray(array, dtype=dtype).reshape(n, -1)
    offsets = np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.reshape(-1), type=arrow_type))


def top_k_column(values: np.ndarray, valid: np.ndarray, arrow_type: pa.DataType) -> pa.ListArray:
    """N×k values → N lists of k, null where ``valid`` is False."""
    n, k = np.shape(values)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    return pa.ListArray.from_arrays(offsets, pa.array(np.asarray(values).reshape(-1), type=arrow_type),
                                    mask=pa.array(~np.asarray(valid, bool)))


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


def to_table(rows: Mapping[str, np.ndarray], exclude: tuple[str, ...] = ()) -> pa.Table:
    """Numpy columns of one chunk (arrays N×H×W[×2]) → an Arrow table with :func:`output_schema`."""
    schema = output_schema(exclude, optional_columns(rows))
    columns = []
    for field in schema:
        if field.name in ARRAY_COLUMNS:
            dtype, arrow_type, _ = ARRAY_COLUMNS[field.name]
            columns.append(_list_column(rows[field.name], dtype, arrow_type))
        elif field.name in FRAME_LABEL_COLUMNS:
            valid = np.asarray(rows["frame_classes"])[:, 0] >= 0
            columns.append(top_k_column(rows[field.name], valid, FRAME_LABEL_COLUMNS[field.name][1]))
        else:
            values = np.asarray(rows[field.name])
            mask = np.isnan(values) if values.dtype.kind == "f" else None
            columns.append(pa.array(values, type=field.type, mask=mask))
    return pa.Table.from_arrays(columns, schema=schema)


def arrays_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """The inverse for files of one frame size: {'flow': N×H×W×2, 'occlusion': N×H×W, …}."""
    h, w = table["height"][0].as_py(), table["width"][0].as_py()
    out = {}
    for name, (_, _, trailing) in ARRAY_COLUMNS.items():
        if name in table.column_names:
            flat = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(table.num_rows, h, w, *trailing)
    return out
