"""Webdataset tar shards, as img2dataset writes them (the form LAION subsets ship in), read as a stream.

A shard ``00042.tar`` holds samples as consecutive members that share a key: ``000420001.jpg``,
``000420001.txt``, ``000420001.json``, ... The key is webdataset's: the member's path up to the first dot of its
base name. A sample's image is its first member with an image extension; samples without one (img2dataset's
failed downloads leave none) are passed over. A tar cut short or damaged on disk raises :class:`ShardError`
naming the shard and the last sample read whole, or, with ``on_error="skip"``, ends that shard there with one
line on stderr (the samples before the damage are kept).
"""

from __future__ import annotations

import re
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ada_utils.data.images import OnError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext


class ShardError(ValueError):
    """A tar shard that cannot be read to its end (truncated, or damaged on disk)."""


def list_shards(items: Sequence[str | Path]) -> list[Path]:
    """The ``.tar`` files named in ``items`` (files, or folders searched non-recursively), sorted by name."""
    shards: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            shards += sorted(item.glob("*.tar"))
        elif item.suffix == ".tar" and item.is_file():
            shards.append(item)
        else:
            raise FileNotFoundError(f"{item}: neither a .tar shard nor a folder of them")
    if not shards:
        raise FileNotFoundError(f"{', '.join(map(str, items))}: no .tar shards found")
    names = [s.stem for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"two shards share a name ({sorted(n for n in names if names.count(n) > 1)[0]}): each output "
                         "shard takes its input's name, so give shards of one collection distinct names")
    return shards


def sample_key(member: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member's name by webdataset's rule, or None for a name without one."""
    found = _KEY.match(member)
    return (found.group(1), found.group(2).lower()) if found else None


def read_shard(path: str | Path, *, on_error: OnError = "raise") -> Iterator[tuple[str, bytes]]:
    """Yield ``(key, image bytes)`` of each sample of one shard, in tar order, streaming (no seek: a shard may be
    read from a pipe). Raises :class:`ShardError` on a damaged tar (``on_error="skip"``: stops there, with a line)."""
    path = Path(path)
    last, count = None, 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            key, image = None, None
            for member in tar:
                parsed = sample_key(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                if parsed[0] != key:
                    if image is not None:
                        yield key, image
                        last, count = key, count + 1
                    key, image = parsed[0], None
                if image is None and parsed[1] in IMAGE_EXTENSIONS:
                    image = tar.extractfile(member).read()
            if image is not None:
                yield key, image
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        where = f"after sample {last!r} ({count} samples read whole)" if last is not None else "before its first sample"
        message = f"{path}: damaged tar shard {where}: {type(err).__name__}: {err}"
        if on_error == "skip":
            print(f"{message}; --on-error skip: the rest of this shard is left out", file=sys.stderr)
            return
        raise ShardError(f"{message}; re-download it, or pass --on-error skip to keep the samples before the damage"
                         ) from err
