"""The recipes and DeepSpeed / accelerate configs shipped inside the package.

Their one home is package data (`xdlm_tune/recipes/`, `xdlm_tune/deepspeed_configs/`); the
checkout's `recipes/` and `deepspeed_configs/` are links to them, so README commands run from the
checkout read the same files. A path that does not exist from the working directory but names a
shipped file (`recipes/NAME.yaml`, `NAME.yaml` or `NAME`; `deepspeed_configs/NAME.json`, ...)
is read from the package, so the same commands work after `pip install` from any folder.

    xdlm-tune recipes                       # every shipped file with its path
    xdlm-tune recipes accelerate_multi_gpu  # one path: accelerate launch --config_file "$(...)"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
FOLDERS = {"recipes": PACKAGE / "recipes", "deepspeed_configs": PACKAGE / "deepspeed_configs"}
SUFFIXES = (".yaml", ".json")


def shipped_files(folder: str) -> list[Path]:
    """The files of one shipped folder ("recipes" or "deepspeed_configs"), sorted by name."""
    return sorted(p for p in FOLDERS[folder].iterdir() if p.suffix in SUFFIXES)


def find_file(path: str | Path, folder: str) -> Path | None:
    """`path` when it exists, else the shipped file it names (only a bare name or `<folder>/name`,
    so a path the user meant elsewhere is never replaced), else None."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_absolute() or path.parent not in (Path("."), Path(folder)):
        return None
    for name in (path.name, *(path.name + s for s in SUFFIXES)):
        candidate = FOLDERS[folder] / name
        if candidate.is_file():
            return candidate
    return None


def names(folder: str) -> str:
    return ", ".join(p.name for p in shipped_files(folder))


def recipes_main(argv: list[str] | None = None) -> int:
    """`xdlm-tune recipes [NAME]`: list the shipped recipes and configs, or print one's path."""
    ap = argparse.ArgumentParser(
        prog="xdlm-tune recipes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("name", nargs="?", help="a shipped recipe or config (with or without .yaml/.json): print its path")
    args = ap.parse_args(argv)
    if args.name:
        name = Path(args.name).name
        for folder in FOLDERS.values():
            for candidate in (folder / name, *(folder / (name + s) for s in SUFFIXES)):
                if candidate.is_file():
                    print(candidate)
                    return 0
        print(
            f"xdlm-tune recipes: no shipped file named {args.name!r}; recipes: {names('recipes')}; "
            f"configs: {names('deepspeed_configs')}",
            file=sys.stderr,
        )
        return 2
    for folder in FOLDERS:
        print(f"{folder}/ ({FOLDERS[folder]}):")
        for path in shipped_files(folder):
            print(f"  {path.name}")
    return 0
