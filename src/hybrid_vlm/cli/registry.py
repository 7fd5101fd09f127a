"""The `hybrid-vlm` subcommands, one row each: its name, its one-line help, and the module that implements it.

`hybrid-vlm --help` is printed from this table alone, so it imports neither torch nor any command's module; a
command's module is imported only when that command runs (or prints its own `--help`). To add a command, write a
module with `add_<name>_subcommand(subparsers)` (registers the sub-parser and its options, `help=command_help(name)`)
and `run_<name>(args) -> exit code`, and add its row here. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One subcommand. `add(subparsers)` registers the sub-parser named `name`; `run(args)` runs it (both are
    functions of `module`, looked up by name when the command is used)."""

    name: str
    help: str
    module: str
    add: str
    run: str


COMMANDS: tuple[Command, ...] = (
    Command("demo", "tiny preset: chat turn on a generated image, save, reload, compare",
            "hybrid_vlm.cli.demo", "add_demo_subcommand", "run_demo"),
    Command("generate", "answer a prompt about an image or a video with a saved model",
            "hybrid_vlm.cli.generate", "add_generate_subcommand", "run_generate"),
    Command("train", "fine-tune on a JSONL chat dataset (TRL vision format) with TRL's SFTTrainer",
            "hybrid_vlm.training.cli", "add_train_subcommand", "run_train"),
    Command("convert",
            "convert a checkpoint folder (llava, llava-next, llava-onevision, longllava, vamba, cobra) into a "
            "HybridVLM folder",
            "hybrid_vlm.convert.cli", "add_convert_subcommand", "run_convert"),
    Command("bench", "hybrids vs the transformer baseline: prefill, decode, memory, training vs visual tokens",
            "hybrid_vlm.benchmark.cli", "add_bench_subcommand", "run_bench"),
    Command("env", "versions and which kernel paths are available / used",
            "hybrid_vlm.cli.info", "add_env_subcommand", "run_env"),
    Command("presets", "list the named presets", "hybrid_vlm.cli.info", "add_presets_subcommand", "run_presets"),
)


def find_command(name: str) -> Command | None:
    return next((command for command in COMMANDS if command.name == name), None)


def command_help(name: str) -> str:
    """The one-line help of a registered command (what its module passes to `add_parser`)."""
    command = find_command(name)
    if command is None:
        raise KeyError(f"No hybrid-vlm command {name!r}; registered: {', '.join(c.name for c in COMMANDS)}.")
    return command.help
