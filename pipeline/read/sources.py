"""Listing inputs: URIs, globs and folders → video files and image-sequence folders.

A source is one video file or one folder of image frames. Its ``video_id`` is a hash of its
URI (and span), so output paths never contain (and never escape through) user-chosen names.
Manifest rows (:mod:`pipeline.read.manifest`) and ``http(s)://`` inputs are videos taken as
named: the driver does not open them; a missing or refused one fails in its read task.
"""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.keyset import KeySet
from pipeline.read.manifest import ManifestOptions, ManifestRow, read_manifest_rows
from pipeline.storage import GLOB_CHARS, filesystem, full_uri

VIDEO_EXTENSIONS = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".mpg",
        ".mpeg",
        ".flv",
        ".wmv",
        ".ogv",
        ".3gp",
        ".gif",
        ".mxf",
    ]
)
IMAGE_EXTENSIONS = frozenset([".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"])


@dataclass(frozen=True, slots=True)
class Source:
    """One input: ``kind`` is "video" (``uri`` is the file) or "sequence" (``frames`` are image URIs).

    ``start`` / ``end``: label only the frames with start ≤ time < end (seconds; None: no bound);
    ``carry``: (column, text or None) pairs of its manifest row, copied into each of its output rows.
    """

    uri: str
    kind: str
    video_id: str
    corpus: str
    frames: tuple[str, ...] = ()
    size: int | None = None
    start: float | None = None
    end: float | None = None
    carry: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class ListingError:
    """An input that could not be listed (missing object, access denied, no bucket)."""

    uri: str
    error_type: str
    message: str


def video_id_for(uri: str, start: float | None = None, end: float | None = None) -> str:
    """Stable 16-hex-digit id of a source URI, and of its span when it has one (a media fragment
    ``#t=start,end`` is hashed with the URI), so two spans of one video are two sources."""
    if start is not None or end is not None:
        uri += f"#t={'' if start is None else repr(float(start))},{'' if end is None else repr(float(end))}"
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def natural_key(path: str) -> list[Any]:
    """Sort key that orders frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", posixpath.basename(path))]


def sanitize_partition_value(value: str) -> str:
    """A corpus name safe as one path element: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._") or "corpus"
    return cleaned[:100]


def _is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _root_name(path: str) -> str:
    prefix = GLOB_CHARS.split(path, maxsplit=1)[0]
    if GLOB_CHARS.search(path):
        prefix = posixpath.dirname(prefix)
    return posixpath.basename(prefix.rstrip("/")) or "corpus"


def list_sources(
    inputs: Iterable[str],
    storage_options: Mapping[str, Any] | None = None,
    corpus: str | None = None,
    manifest: ManifestOptions | None = None,
) -> tuple[list[Source], list[ListingError]]:
    """:func:`iter_sources` collected: (sources, listing errors)."""
    sources, errors = [], []
    for item in iter_sources(inputs, storage_options, corpus, manifest):
        (sources if isinstance(item, Source) else errors).append(item)
    return sources, errors


def iter_sources(
    inputs: Iterable[str],
    storage_options: Mapping[str, Any] | None = None,
    corpus: str | None = None,
    manifest: ManifestOptions | None = None,
) -> Iterator[Source | ListingError]:
    """The rows of ``manifest`` in its order, as they are read, then ``inputs`` expanded into sources as they
    are listed, without duplicates (same URI and span: the first is kept, manifest rows first); a listing
    error in the place of what could not be listed.

    Files with a video extension (or any file named explicitly) are videos; every folder
    that directly holds image files is one image sequence (frames in natural sort order). A folder is
    listed a directory at a time, in name order: a directory's videos and its image sequence, then its
    subdirectories. ``corpus`` defaults to the last path element of each input's root, and for manifest
    rows to the manifest's file name without extension. A bad manifest row is a listing error whose
    ``uri`` is ``<manifest>#row=<n>``; a manifest without its URI column raises ValueError before any row.
    Nothing is held whole: the driver keeps 8 bytes per source it has seen (:class:`KeySet`) and one
    directory's listing at a time.
    """
    seen = KeySet()
    rows = iter_manifest_sources(manifest, storage_options, corpus) if manifest is not None else ()
    for item in itertools.chain(rows, _iter_inputs(inputs, storage_options, corpus)):
        if isinstance(item, ListingError) or seen.add(item.video_id):
            yield item


def iter_manifest_sources(
    manifest: ManifestOptions, storage_options: Mapping[str, Any] | None = None, corpus: str | None = None
) -> Iterator[Source | ListingError]:
    """One video source per good manifest row, in order (duplicates kept); one error per bad row."""
    name = sanitize_partition_value(corpus or posixpath.splitext(posixpath.basename(manifest.uri.split("?")[0]))[0])
    for row in read_manifest_rows(manifest, storage_options):
        if isinstance(row, ManifestRow):
            yield Source(
                row.uri,
                "video",
                video_id_for(row.uri, row.start, row.end),
                name,
                start=row.start,
                end=row.end,
                carry=row.carry,
            )
        else:
            yield ListingError(
                f"{manifest.uri}#row={row.number}",
                "ManifestRowError",
                f"row {row.number} ({row.uri or 'no URI'}): {row.message}",
            )


def _iter_inputs(
    inputs: Iterable[str], storage_options: Mapping[str, Any] | None, corpus: str | None
) -> Iterator[Source | ListingError]:
    for uri in inputs:
        if _is_http(uri):  # no listing over HTTP: the URI is one video, read (or refused) by its read task
            name = sanitize_partition_value(corpus or _root_name(posixpath.dirname(uri.split("?")[0])))
            yield Source(uri, "video", video_id_for(uri), name)
            continue
        try:
            fs, path = filesystem(uri, storage_options)
            root = path.rstrip("/")
            if not GLOB_CHARS.search(root) and fs.isfile(root):
                root = posixpath.dirname(root)  # a single file belongs to its folder's corpus
            name = sanitize_partition_value(corpus or _root_name(root))
            yield from _expand(fs, path, name)
        except (FileNotFoundError, PermissionError, OSError, ValueError) as exc:
            yield ListingError(uri, type(exc).__name__, str(exc) or repr(exc))


def _expand(fs, path: str, corpus: str) -> Iterator[Source | ListingError]:
    if GLOB_CHARS.search(path):
        matches = sorted(fs.glob(path))
        if not matches:
            raise FileNotFoundError(f"no input matches {path!r}")
        for match in matches:
            yield from _expand(fs, match, corpus)
        return
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {full_uri(fs, path)}")
    if fs.isfile(path):
        yield _video(fs, path, corpus, fs.size(path))
        return
    found = False
    for files in _walk(fs, path):
        if isinstance(files, ListingError):  # a folder below could not be listed; its siblings still are
            found = True
            yield files
            continue
        for f in files:
            if _extension(f["name"]) in VIDEO_EXTENSIONS:
                found = True
                yield _video(fs, f["name"], corpus, f.get("size"))
        images = sorted((f["name"] for f in files if _extension(f["name"]) in IMAGE_EXTENSIONS), key=natural_key)
        if images:
            found = True
            uri = full_uri(fs, posixpath.dirname(images[0]))  # the folder as its files name it
            yield Source(uri, "sequence", video_id_for(uri), corpus, tuple(full_uri(fs, f) for f in images))
    if not found:
        raise FileNotFoundError(f"no videos or image sequences under {full_uri(fs, path)}")


def _walk(fs, path: str) -> Iterator[list[dict[str, Any]] | ListingError]:
    """The file infos of ``path`` and of every directory below it, a directory at a time, depth first in name
    order: one listing each, dropped from the filesystem's listing cache once read, so a corpus in many
    directories is never held whole. A directory below ``path`` that cannot be listed (unreadable, or
    deleted meanwhile) is a ListingError in its place; ``path`` itself raises."""
    entries = fs.ls(path, detail=True)
    fs.invalidate_cache(path)
    own = path.rstrip("/")
    # Whatever is not a directory is a file, as fs.find has it: a local symlink is of type "other".
    files = sorted((e for e in entries if e["type"] != "directory"), key=lambda e: e["name"])
    folders = sorted(e["name"] for e in entries if e["type"] == "directory" and e["name"].rstrip("/") != own)
    del entries  # the subdirectories are walked holding only their names
    yield files
    del files
    for folder in folders:
        try:
            yield from _walk(fs, folder)
        except OSError as exc:  # raised by the folder's own listing: each folder below catches its own
            yield ListingError(full_uri(fs, folder), type(exc).__name__, str(exc) or repr(exc))


def _video(fs, path: str, corpus: str, size: int | None) -> Source:
    uri = full_uri(fs, path)
    return Source(uri, "video", video_id_for(uri), corpus, size=size)
