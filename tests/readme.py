"""The README's client command lines, as a test reads them (they are run or parsed, never copied)."""

from __future__ import annotations

import re
from pathlib import Path

CLIENT = ".venv/bin/priorlab"  # the client's commands; other priorlab commands are skipped
CLIENT_COMMANDS = ("colorize", "suggest", "restore", "watch", "cancel")
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def client_commands(readme: Path, section: str | None = None) -> list[str]:
    """Every line of a ```bash block that runs the client; only under `## <section>` when given."""
    text = readme.read_text()
    if section is not None:
        found = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        if found is None:
            raise LookupError(f"{readme} has no section '## {section}'")
        text = found.group(1)
    return [
        line.strip()
        for block in _BLOCK.findall(text)
        for line in block.splitlines()
        if line.strip().startswith(CLIENT) and line.split()[1:2] and line.split()[1] in CLIENT_COMMANDS
    ]
