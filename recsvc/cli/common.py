"""Shared pieces of the command line: common options and settings loading."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsvc.config import Settings, load_settings
from recsvc.logs import setup_logging

DEFAULT_DEMO_DIR = Path(".recsvc-demo")
PROTOCOLS = ("stratified-item", "stratified-user", "leave-last-n")


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (or RECSVC_CONFIG_FILE)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    settings = load_settings(args.config, log_level=args.log_level, **overrides)
    setup_logging(settings.log_level, json_lines=settings.log_format == "json")
    return settings
