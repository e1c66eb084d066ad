"""Finding PEFT adapter directories below the paths a user gives, and the paths passed over with the reason."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tuneguard.adapters.adapter_files import CONFIG_NAME, PICKLE_NAMES, WEIGHTS_NAME
from tuneguard.errors import TuneguardError


@dataclass(frozen=True)
class Skipped:
    """A path found while searching for adapters that is not scanned, and why."""

    path: Path
    reason: str


def discover_adapters(paths: list[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """(adapter directories among ``paths``, paths skipped and why). A path that is an adapter directory, not a
    directory, or missing is returned as is (``read_adapter`` explains what is wrong); others are searched.

    The search lists every directory holding an adapter file, so one with weights but no config is not passed
    over. A symlinked directory is not followed (it may lead anywhere, or in a loop) unless it points straight at an
    adapter directory, which is scanned; otherwise it is skipped. Directories inside hidden ones (temporaries of
    atomic writes, checkpoints) are skipped when they hold an adapter. The same directory found twice is skipped
    the second time.
    """
    found: list[Path] = []
    skipped: list[Skipped] = []
    adapter_files = {CONFIG_NAME, WEIGHTS_NAME, *PICKLE_NAMES}
    for top in map(Path, paths):
        if not top.is_dir() or (top / CONFIG_NAME).is_file():
            found.append(top)
            continue
        before = len(found) + len(skipped)

        def unreadable(exc: OSError) -> None:
            skipped.append(Skipped(Path(exc.filename or top), f"cannot list directory: {exc.strerror}"))

        linked: list[Path] = []  # after the real directories, so a link to one of them is the duplicate
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            dirnames.sort()
            d = Path(dirpath)
            hidden = any(part.startswith(".") for part in d.relative_to(top).parts)
            if adapter_files & set(filenames):
                if hidden:
                    skipped.append(Skipped(d, "inside a hidden directory (an unfinished write or a checkpoint?); "
                                              "pass it explicitly to scan it"))
                else:
                    found.append(d)
            for name in dirnames:
                link = d / name
                if not link.is_symlink() or hidden:
                    continue
                target = os.readlink(link)
                if (link / CONFIG_NAME).is_file():
                    linked.append(link)
                else:
                    skipped.append(Skipped(link, f"symlinked directory (-> {target}), not followed; pass it "
                                                 "explicitly to search it"))
        found += linked
        if len(found) + len(skipped) == before:
            raise TuneguardError(f"{top} holds no adapter directory (no {CONFIG_NAME} below it)")
    unique: dict[str, Path] = {}
    kept = []
    for p in found:
        key = os.path.realpath(p)
        if key in unique:
            if p != unique[key]:
                skipped.append(Skipped(p, f"the same directory as {unique[key]}, scanned once"))
            continue
        unique[key] = p
        kept.append(p)
    return kept, skipped


def find_adapters(paths: list[str | os.PathLike]) -> list[Path]:
    """The adapter directories ``discover_adapters`` finds (without the paths it skips)."""
    return discover_adapters(paths)[0]
