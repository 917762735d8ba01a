"""Shared pieces of the command line: common options and settings loading."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsvc.config import Settings, load_settings
from recsvc.logs import setup_logging

DEFAULT_DEMO_DIR = Path(".recsvc-demo")
PROTOCOLS = ("stratified-item", "stratified-user", "leave-last-n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default: argparse's own where the option has one, else the
    help text says it (an option left unset falls back on a setting, or is searched)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default: RECSVC_CONFIG_FILE, else none: defaults and RECSVC_*)",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: RECSVC_LOG_LEVEL, else INFO)",
    )


def namespace_option(parser: argparse.ArgumentParser) -> None:
    """--namespace, for the commands that address one namespace's stores."""
    parser.add_argument(
        "--namespace",
        help="the namespace (RECSVC_NAMESPACES) whose stores to use; --model-store and "
        "--interaction-store then name the deployment's, under which the namespace's lie "
        "(default: RECSVC_DEFAULT_NAMESPACE, or the only one)",
    )


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings the command line says; for a command with --namespace, that namespace's
    effective settings (Settings.for_namespace)."""
    settings = load_settings(args.config, log_level=args.log_level, **overrides)
    setup_logging(settings.log_level, json_lines=settings.log_format == "json")
    if hasattr(args, "namespace"):
        settings = settings.for_namespace(args.namespace)
    return settings
