"""Listing inputs: URIs, globs and folders → video files and image-sequence folders.

A source is one video file or one folder of image frames. Its ``video_id`` is a hash of its
URI, so output paths never contain (and never escape through) user-chosen names.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.storage import filesystem, full_uri

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg .flv .wmv .ogv .3gp .gif .mxf".split())
IMAGE_EXTENSIONS = frozenset(".png .jpg .jpeg .ppm .pgm .bmp .tif .tiff .webp".split())
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is "video" (``uri`` is the file) or "sequence" (``frames`` are image URIs)."""

    uri: str
    kind: str
    video_id: str
    corpus: str
    frames: tuple[str, ...] = ()
    size: int | None = None


@dataclass(frozen=True)
class ListingError:
    """An input that could not be listed (missing object, access denied, no bucket)."""

    uri: str
    error_type: str
    message: str


def video_id_for(uri: str) -> str:
    """Stable 16-hex-digit id of a source URI."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def natural_key(path: str) -> list[Any]:
    """Sort key that orders frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", posixpath.basename(path))]


def sanitize_partition_value(value: str) -> str:
    """A corpus name safe as one path element: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._") or "corpus"
    return cleaned[:100]


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _root_name(path: str) -> str:
    prefix = _GLOB_CHARS.split(path, maxsplit=1)[0]
    if _GLOB_CHARS.search(path):
        prefix = posixpath.dirname(prefix)
    return posixpath.basename(prefix.rstrip("/")) or "corpus"


def list_sources(
    inputs: Iterable[str], storage_options: Mapping[str, Any] | None = None, corpus: str | None = None
) -> tuple[list[Source], list[ListingError]]:
    """Expand URIs, globs and folders into sources, sorted by URI, without duplicates.

    Files with a video extension (or any file named explicitly) are videos; every folder
    that directly holds image files is one image sequence (frames in natural sort order).
    ``corpus`` defaults to the last path element of each input's root.
    """
    sources: dict[str, Source] = {}
    errors: list[ListingError] = []
    for uri in inputs:
        try:
            fs, path = filesystem(uri, storage_options)
            root = path.rstrip("/")
            if not _GLOB_CHARS.search(root) and fs.isfile(root):
                root = posixpath.dirname(root)  # a single file belongs to its folder's corpus
            name = sanitize_partition_value(corpus or _root_name(root))
            for source in _expand(fs, path, name):
                sources.setdefault(source.uri, source)
        except (FileNotFoundError, PermissionError, OSError, ValueError) as exc:
            errors.append(ListingError(uri, type(exc).__name__, str(exc) or repr(exc)))
    return [sources[k] for k in sorted(sources)], errors


def _expand(fs, path: str, corpus: str) -> list[Source]:
    if _GLOB_CHARS.search(path):
        matches = sorted(fs.glob(path))
        if not matches:
            raise FileNotFoundError(f"no input matches {path!r}")
        found = []
        for match in matches:
            found += _expand(fs, match, corpus)
        return found
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {full_uri(fs, path)}")
    if fs.isfile(path):
        return [_video(fs, path, corpus, fs.size(path))]
    details = fs.find(path, withdirs=False, detail=True)
    files = sorted(details)
    found = [_video(fs, f, corpus, details[f].get("size")) for f in files if _extension(f) in VIDEO_EXTENSIONS]
    images_by_dir: dict[str, list[str]] = {}
    for f in files:
        if _extension(f) in IMAGE_EXTENSIONS:
            images_by_dir.setdefault(posixpath.dirname(f), []).append(f)
    for folder, images in sorted(images_by_dir.items()):
        uri = full_uri(fs, folder)
        frames = tuple(full_uri(fs, f) for f in sorted(images, key=natural_key))
        found.append(Source(uri, "sequence", video_id_for(uri), corpus, frames))
    if not found:
        raise FileNotFoundError(f"no videos or image sequences under {full_uri(fs, path)}")
    return found


def _video(fs, path: str, corpus: str, size: int | None) -> Source:
    uri = full_uri(fs, path)
    return Source(uri, "video", video_id_for(uri), corpus, size=size)
