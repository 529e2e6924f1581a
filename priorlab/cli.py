"""`priorlab <command> [args]`: every process and tool of the project behind one command.

Each command hands its arguments to the `main(argv)` of the module that owns it, so the options are
defined once, where they are used (`priorlab colorize --help` is the client's own help). Modules are
imported only when their command runs: `priorlab colorize` never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    prefix: tuple[str, ...] = ()  # arguments put before the user's (the client's sub-command)


_CLIENT = "service.client"
COMMANDS: dict[str, Command] = {
    # the running service
    "stack": Command(
        "service.launch.stack", "Triton + Redis + a worker + the gateway on 127.0.0.1 (`make run`)"
    ),
    "serve": Command("service.gateway.__main__", "the gateway alone, configured by PRIORLAB_* variables"),
    "worker": Command("service.restore.runner", "a Restore worker on a Redis job bus"),
    # the client
    "colorize": Command(_CLIENT, "colorize an image (with hints: SIGGRAPH17)", ("colorize",)),
    "suggest": Command(_CLIENT, "colours SIGGRAPH17 suggests at one pixel", ("suggest",)),
    "restore": Command(_CLIENT, "restore an image by Deep Image Prior (a job; live progress)", ("restore",)),
    "watch": Command(_CLIENT, "re-attach to a Restore job", ("watch",)),
    "cancel": Command(_CLIENT, "cancel a Restore job", ("cancel",)),
    # offline tools
    "export": Command("export.__main__", "checkpoints -> ONNX -> model_repository/ (parity-gated)"),
    "data": Command("colorizers.data", "assemble the colorizers' training photos into .cache/"),
    "train": Command("colorizers.train", "train ECCV16 or SIGGRAPH17 (resumable)"),
    "train-larsson": Command("colorizers.train_larsson", "train Larsson16 (resumable)"),
    "evaluate": Command("colorizers.evaluate", "evaluate a colorizer checkpoint on the validation split"),
    "restore-local": Command("service.restore.cli", "one Deep Image Prior restore in-process, no service"),
    "bench": Command("bench.__main__", "the benchmarks: JSON + markdown + PNG under bench/results/"),
    "chaos": Command("bench.chaos", "kill and hang the stack's processes; detect/recover times, jobs lost"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    return "usage: priorlab <command> [args]   (priorlab <command> --help for its options)\n\ncommands:\n" + (
        "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"priorlab: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    result = importlib.import_module(command.module).main([*command.prefix, *rest])
    return int(result or 0)
