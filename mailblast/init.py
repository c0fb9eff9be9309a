"""`mailblast init`: write a working starter campaign (settings, recipients, a template) into a folder.

The files ship inside the package (mailblast/starter/), so this works from a plain pip install.
"""

from __future__ import annotations

import os
import shlex
from importlib import resources
from pathlib import Path

from rich.console import Console

from mailblast.errors import ConfigError

FORMATS = ("md", "html", "txt")
CONFIG = "mailblast.toml"
RECIPIENTS = "recipients.csv"


def starter_text(name: str) -> str:
    """One of the starter files, as shipped in the package."""
    return (resources.files("mailblast") / "starter" / name).read_text(encoding="utf-8")


def starter_files(template_format: str) -> dict[str, str]:
    """File name -> contents of the starter with a template of this format."""
    if template_format not in FORMATS:
        raise ConfigError(
            f"--format {template_format}: not a template format", f"choose one of {', '.join(FORMATS)}"
        )
    template = f"message.{template_format}.j2"
    return {
        CONFIG: starter_text(CONFIG).replace("{template}", template),
        RECIPIENTS: starter_text(RECIPIENTS),
        template: starter_text(template),
    }


def run_init(folder: Path, template_format: str, console: Console) -> int:
    files = starter_files(template_format)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder", "name a new or existing folder")
    # lexists: a dangling symlink is taken too (open "x" would refuse it halfway through)
    taken = [name for name in files if os.path.lexists(folder / name)]
    if taken:
        names = taken[0] if len(taken) == 1 else f"{', '.join(taken[:-1])} and {taken[-1]}"
        verb = "exists" if len(taken) == 1 else "exist"
        raise ConfigError(
            f"{names} {verb} already in {folder.resolve()}; nothing was written",
            "run mailblast init in a new folder (mailblast init NAME), or move those files away",
        )
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            with (folder / name).open("x", encoding="utf-8", newline="") as f:  # "x": never overwrite
                written.append(folder / name)
                f.write(text)
    except OSError as e:
        for path in written:  # all of the starter or none of it
            path.unlink(missing_ok=True)
        raise ConfigError(f"{folder}: cannot write the starter: {e.strerror}; nothing was kept") from None
    where = "" if folder == Path() else f"cd {shlex.quote(str(folder))} && "
    console.print(f"wrote {', '.join(files)} in {folder}/", soft_wrap=True)
    console.print(
        f"next: {where}mailblast check {RECIPIENTS}, then mailblast send {RECIPIENTS}, which delivers "
        "into ./outbox until you name a server in [smtp] url",
        soft_wrap=True,
    )
    return 0
