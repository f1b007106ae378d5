"""Fuzzes the config loader with atheris: whatever the bytes, loading gives settings or
problems (``FILE:LINE: FIELD: message``), never another exception, a hang or a blow-up.

Each input is written once as a policy file (beside a valid gateway.yaml) and once as the
gateway.yaml (beside a valid policy), and loaded as ``gateway check`` loads them. What
the loader accepts must also be usable as ``serve`` uses it: upstream and token URLs
parse in the HTTP client (yarl), the storage URL in redis-py, time zones in zoneinfo. The
folder also holds what references may name: a small file, a file over the 64 KB limit,
a FIFO, a link to /dev/zero and a folder (a scratch folder /tmp/fuzz-loader-*, left
behind: libFuzzer ends the process without Python's exit handlers).

Not collected by pytest (no test_ functions, not a test_ file). Run it by hand:

    /work/venv/bin/pip install atheris
    mkdir -p /tmp/fuzz-corpus /tmp/fuzz-crashes
    PYTHONPATH=$PWD nice -n 19 /work/venv/bin/python tests/fuzz/fuzz_loader.py \\
        -dict=tests/fuzz/loader.dict -max_len=4096 -timeout=20 -rss_limit_mb=2048 \\
        -artifact_prefix=/tmp/fuzz-crashes/ -max_total_time=1800 \\
        /tmp/fuzz-corpus tests/fuzz/seeds policies

The first folder is where the fuzzer adds the inputs it finds (never name tests/fuzz/seeds
first); the others are only read. A crash leaves its input in /tmp/fuzz-crashes/; replay it by passing that file instead
of the folders. Each crash found is kept as a regression test in tests/config/.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from zoneinfo import ZoneInfo

import atheris
from redis.asyncio.connection import parse_url
from yarl import URL

with atheris.instrument_imports():
    import yaml  # noqa: F401  (instrumented so coverage guides the fuzzer through the parser)

    from gateway.config.loader import Overrides, Settings, load_settings
    from gateway.errors import ConfigError

VALID_POLICY = b"vendor: a\nupstream: https://a.example\n"
VALID_CONFIG = b"listen: 127.0.0.1:8080\npolicies: ./policies\n"


class Environment(Mapping[str, str]):
    """Every variable is set (to a value made from its name) except those named UNSET*."""

    def __getitem__(self, name: str) -> str:
        if name.startswith("UNSET"):
            raise KeyError(name)
        return f"value-of-{name}"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _folder() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fuzz-loader-"))
    for place in (root, root / "policies"):
        place.mkdir(exist_ok=True)
        (place / "token.txt").write_text("tok-1\n")
        (place / "big.txt").write_bytes(b"x" * (65 * 1024))
        os.mkfifo(place / "fifo")
        (place / "zero").symlink_to("/dev/zero")
        (place / "dir").mkdir()
    return root


ROOT = _folder()
ENVIRONMENT = Environment()


def _load(config_bytes: bytes, policy_bytes: bytes) -> None:
    config = ROOT / "gateway.yaml"
    config.write_bytes(config_bytes)
    (ROOT / "policies" / "a.yaml").write_bytes(policy_bytes)
    try:
        settings = load_settings(str(config), ENVIRONMENT, Overrides())
    except ConfigError as exc:
        for problem in exc.problems:
            text = str(problem)
            if not isinstance(problem.line, int) or problem.line < 1 or not problem.field or not problem.message:
                raise AssertionError(f"malformed problem: {text!r}") from None
            if not text.startswith(f"{problem.file}:{problem.line}: ") or not text.isprintable():
                raise AssertionError(f"problem not one FILE:LINE: line: {text!r}") from None
        return
    _check_usable(settings)


def _check_usable(settings: Settings) -> None:
    """Raises if serving these settings would trip over a value the loader let through."""
    for policy in settings.policies.values():
        urls = [policy.upstream.origin + policy.upstream.base_path + "/x", getattr(policy.credentials, "token_url", "")]
        for url in filter(None, urls):
            parsed = URL(url, encoded=True)
            assert parsed.host and parsed.raw_host and parsed.port, url
        for budget in policy.budgets:
            if budget.timezone:
                ZoneInfo(budget.timezone)
    if settings.config.storage != "memory":
        parse_url(settings.config.storage)
    assert settings.config.address


def one_input(data: bytes) -> None:
    _load(VALID_CONFIG, data)
    _load(data, VALID_POLICY)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
