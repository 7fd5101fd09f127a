"""`hybrid-vlm convert SRC DST --from KIND`: the subcommand's parser and runner.

Building the parser reads only the kinds table and the defaults (no torch): `hybrid-vlm --help` stays quick; the
converter itself is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import ConversionError
from .options import DEFAULT_MAX_SHARD_SIZE
from .sources import KINDS

__all__ = ["add_convert_subcommand", "run_convert"]


def add_convert_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add `convert SRC DST --from KIND` to the `hybrid-vlm` command's subparsers."""
    parser = subparsers.add_parser(
        "convert", help=f"convert a checkpoint folder ({', '.join(KINDS)}) into a HybridVLM folder",
        description="Convert a local checkpoint folder into a native HybridVLM folder (see docs/converting.md).",
    )
    parser.add_argument("src", help="the source checkpoint folder")
    parser.add_argument("dst", help="the HybridVLM folder to write (must not exist unless --overwrite)")
    parser.add_argument("--from", dest="kind", required=True, choices=KINDS, help="what the source is")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="cast floating weights (default: keep the source's)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST once the new folder is complete")
    parser.add_argument("--allow-unused", action="append", default=[], metavar="REGEX",
                        help="source tensors matching REGEX may be dropped (listed in the report); repeatable")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest weight file (default 5GB)")
    parser.add_argument("--vision-config", default=None,
                        help="LongLLaVA: the vision tower's config.json or folder, if it cannot be derived")
    parser.add_argument("--vision-towers", nargs=2, default=None, metavar=("DINOV2_DIR", "SIGLIP_DIR"),
                        help="Cobra: transformers-format folders of its two (frozen, unsaved) vision encoders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Run the `convert` subcommand; 0 on success, 1 when the source cannot be converted, 2 when unsupported."""
    from .engine import convert  # torch, transformers and the model code: only once the command runs

    try:
        report = convert(
            args.src, args.dst, args.kind, dtype=args.dtype, overwrite=args.overwrite,
            progress=not args.no_progress, allow_unused=args.allow_unused, max_shard_size=args.max_shard_size,
            vision_config=args.vision_config, vision_towers=args.vision_towers,
        )
    except NotImplementedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ConversionError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
