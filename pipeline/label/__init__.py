"""Label: frames → flow, occlusion, confidence and motion summaries of their pairs (and the optional
per-frame and per-clip labelers)."""
