"""The ``gateway`` command: serve, check, schema, reload, dead-letters, --version."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from gateway import __version__, admin_cli
from gateway.config.loader import Overrides, Settings, Source
from gateway.config.model import CONFIG, POLICY
from gateway.errors import ConfigError, StorageError

DEFAULT_CONFIG = "gateway.yaml"
CONFIG_HELP = f"config file (default: ./{DEFAULT_CONFIG} if present)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Egress API gateway for third-party SaaS APIs.")
    parser.add_argument("--version", action="version", version=f"gateway {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    _config_flags(serve)
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on")
    serve.add_argument("--storage", metavar="URL", help="memory, redis://... or rediss://...")
    serve.add_argument("--workers", type=int, metavar="N", help="processes sharing the port")

    check = commands.add_parser("check", help="validate the config and every policy")
    _config_flags(check)

    schema = commands.add_parser("schema", help="print the JSON Schema of a policy file")
    schema.add_argument("--config", action="store_true", help="print the schema of gateway.yaml instead")

    admin_cli.add_parser(commands, CONFIG_HELP)
    admin_cli.add_reload_parser(commands, CONFIG_HELP)

    args = parser.parse_args(argv)
    if args.command == "schema":
        return _schema(args.config)
    if args.command == "dead-letters":
        return admin_cli.run(args, _config_file(args))
    if args.command == "reload":
        return admin_cli.reload(args, _config_file(args))
    source = _source(args)
    settings = _load(args, source)
    if settings is None:
        return 1
    if args.command == "check":
        print(f"ok: {len(settings.policies)} vendor polic{'y' if len(settings.policies) == 1 else 'ies'}: "
              + ", ".join(sorted(settings.policies)))
        return 0
    return _serve(settings, source)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--policies", metavar="DIR", help="folder of vendor policy files")


def version() -> str:
    """The installed package's version; the source's own where it is run uninstalled."""
    try:
        return metadata.version("gateway")
    except metadata.PackageNotFoundError:
        return __version__


def _config_file(args: argparse.Namespace) -> str | None:
    if args.config is None and os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    config: str | None = args.config
    return config


def _source(args: argparse.Namespace) -> Source:
    overrides = Overrides(
        policies=args.policies,
        listen=getattr(args, "listen", None),
        storage=getattr(args, "storage", None),
        workers=getattr(args, "workers", None),
    )
    return Source(_config_file(args), os.environ, overrides)


def _load(args: argparse.Namespace, source: Source) -> Settings | None:
    try:
        return source.load()
    except ConfigError as exc:
        # check's findings are its output; serve's are why it did not start.
        out = sys.stdout if args.command == "check" else sys.stderr
        for problem in exc.problems:
            print(problem, file=out)
        return None


def _serve(settings: Settings, source: Source) -> int:
    from gateway import process

    process.configure_logging(settings.config.log_format)
    refusal = process.anonymous_exposure(settings) or _unusable_data_dir(settings)
    if refusal:
        print(f"gateway: {refusal}", file=sys.stderr)
        return 2
    try:
        return process.serve(settings, source)
    except OSError as exc:
        print(f"gateway: cannot listen on {settings.config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # storage failed between the check and the start
        print(f"gateway: storage is unusable: {exc}", file=sys.stderr)
        return 2


def _unusable_data_dir(settings: Settings) -> str | None:
    """Why the embedded mode's data_dir cannot keep its state, or None. Asked before the
    socket is bound: a gateway that cannot keep what it promises to must not start."""
    config = settings.config
    if config.storage != "memory":
        return None
    from gateway.storage.durable import LocalStore

    try:
        LocalStore.check(config.relative(config.data_dir))
    except StorageError as exc:
        return str(exc)
    return None


def _schema(of_config: bool) -> int:
    spec = CONFIG if of_config else POLICY
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gateway configuration" if of_config else "gateway vendor policy",
        **spec.schema(),
    }
    print(json.dumps(document, indent=2))
    return 0
