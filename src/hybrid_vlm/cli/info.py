"""`hybrid-vlm env` (versions, compat's probes, compute paths) and `hybrid-vlm presets` (the named presets)."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata
from typing import Any

import torch

from ..compat import feature_report
from ..path_report import compute_paths, format_compute_paths
from ..presets import from_preset, list_presets
from ..ssm import KERNEL_PACKAGES, installed_kernels, mamba_kernels_usable
from ..version import __version__
from .registry import command_help


def add_env_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    return subparsers.add_parser("env", help=command_help("env"))


def add_presets_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    presets = subparsers.add_parser("presets", help=command_help("presets"))
    presets.add_argument("--count", action="store_true", help="print parameter counts (built on the meta device)")
    return presets


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_env(args: argparse.Namespace | None = None) -> int:
    """Print versions, what compat's probes found, and which compute paths would run."""
    rows = [
        ("hybrid_vlm", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
    ]
    rows += [(f"  {name}", value) for name, value in feature_report()]
    rows += [(name, _version(name)) for name in ("trl", "peft", "accelerate", "datasets", "av", "torchvision")]
    cuda = torch.cuda.is_available()
    rows.append(("cuda", torch.cuda.get_device_name(0) if cuda else "not available"))
    for module, package in KERNEL_PACKAGES.items():
        rows.append((package, "installed" if installed_kernels()[module] else "not installed"))
    ssm_path = "mamba-ssm / causal-conv1d kernels" if mamba_kernels_usable() else "pure PyTorch"
    attention = "flash_attention_2 (opt-in) / sdpa" if installed_kernels()["flash_attn"] and cuda else "sdpa"
    rows += [("SSM path", ssm_path), ("attention", attention)]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    _print_compute_paths()
    return 0


# Tiny presets whose modules cover every path choice: our SSMs (visual stream, projector), transformers' SSM LMs,
# self- and cross-attention.
ENV_PATH_PRESETS = ("vamba-tiny", "mambavlm-tiny", "jamba-llava-tiny")


def _print_compute_paths() -> None:
    """Which path each module of a few tiny presets takes here (on CUDA when there is one), and why."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ENV_PATH_PRESETS:
        model, _ = from_preset(name, device=device)
        print(f"\ncompute paths of {name} on {device}:")
        print(format_compute_paths(compute_paths(model)))


def run_presets(args: argparse.Namespace) -> int:
    """List presets; with --count, build each on the meta device and print its parameter count."""
    for name, description in list_presets().items():
        line = f"{name:<20} {description}"
        if args.count:
            model, _ = from_preset(name, device="meta")
            line = f"{name:<20} {_human_count(model.num_parameters()):>8}  {description}"
        print(line)
    return 0


def _human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
