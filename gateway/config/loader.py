"""Loads the gateway file and the policy folder into one validated :class:`Settings`.

Every problem in every file is collected and raised together as one ConfigError, each
naming file, line and field; whatever the files hold, nothing else is raised. The environment is passed in, never read from globals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.config.files import Unreadable, read_limited
from gateway.config.model import CONFIG, POLICY, Config, Policy
from gateway.config.spec import INVALID, Context, Spec, field_name
from gateway.config.yamlread import LineDict, YamlProblem, decode, read_yaml
from gateway.config.problems import ConfigError, Problem

# A config or policy file longer than this is no config (PyYAML reads ~50 KB a second).
MAX_FILE = 256 * 1024


@dataclass(frozen=True)
class Settings:
    """One consistent snapshot: the config and the policies it names, by vendor."""

    config: Config
    policies: Mapping[str, Policy]


@dataclass(frozen=True)
class Overrides:
    """Command-line flags, which win over the config file."""

    policies: str | None = None
    listen: str | None = None
    storage: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class Source:
    """Where a running gateway's settings come from, so that a reload reads them as the start did."""

    config_file: str | None
    environ: Mapping[str, str]
    overrides: Overrides = Overrides()

    def load(self) -> Settings:
        return load_settings(self.config_file, self.environ, self.overrides)


def load_settings(
    config_file: str | None,
    environ: Mapping[str, str],
    overrides: Overrides = Overrides(),
) -> Settings:
    problems: list[Problem] = []
    raw = _read(Path(config_file), problems) if config_file is not None else LineDict()
    if raw is None:  # the config file itself is unreadable: where the policies are is unknown
        raise ConfigError(problems)
    base = Path(config_file).parent if config_file else Path.cwd()
    if overrides.policies:
        folder, origin = Path(overrides.policies), Problem("--policies", 1, "policies", "")
    else:
        configured = raw.get("policies") if isinstance(raw, LineDict) else None
        folder = base / (configured if isinstance(configured, str) else "./policies")
        line = raw.lines.get("policies", 1) if isinstance(raw, LineDict) else 1
        origin = Problem(config_file or "(defaults)", line, "policies", "")
    policies = _load_policies(folder, origin, environ, problems)
    config = _load_config(raw, config_file, base, environ, overrides, folder, frozenset(policies), problems)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.file, p.line)))
    assert config is not None
    return Settings(config=config, policies=policies)


def _load_config(
    raw: Any,
    config_file: str | None,
    base: Path,
    environ: Mapping[str, str],
    overrides: Overrides,
    folder: Path,
    vendors: frozenset[str],
    problems: list[Problem],
) -> Config | None:
    flags = {"listen": overrides.listen, "storage": overrides.storage,
             "workers": overrides.workers}
    if isinstance(raw, LineDict):
        for key, value in flags.items():
            if value is not None:
                raw[key] = value
    ctx = Context(file=config_file or "(flags)", environ=environ, base_dir=base, vendors=vendors)
    config = _build(CONFIG, raw, ctx, problems)
    if not isinstance(config, Config):
        return None
    return replace(config, source=config_file or "", policies=str(folder))


def _load_policies(
    folder: Path, origin: Problem, environ: Mapping[str, str], problems: list[Problem]
) -> dict[str, Policy]:
    """Every policy in ``folder``; ``origin`` says where the folder was named, for problems."""
    if not folder.is_dir():
        reason = "not a directory" if folder.exists() else "no such directory"
        problems.append(replace(origin, message=f"{folder}: {reason}"))
        return {}
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and not p.is_dir())
    except OSError as exc:
        problems.append(replace(origin, message=f"{folder}: cannot list: {exc.strerror or type(exc).__name__}"))
        return {}
    if not files:
        problems.append(replace(origin, message=f"{folder}: no policy files (*.yaml, *.yml)"))
    policies: dict[str, Policy] = {}
    for path in files:
        raw = _read(path, problems)
        if raw is None:
            continue
        policy = _build(POLICY, raw, Context(file=str(path), environ=environ, base_dir=path.parent), problems)
        if policy is INVALID:
            continue
        if policy.vendor in policies:
            line = raw.lines.get("vendor", 1)
            problems.append(
                Problem(str(path), line, "vendor", f"{policy.vendor!r} is also defined in {policies[policy.vendor].source}")
            )
            continue
        policies[policy.vendor] = replace(policy, source=str(path))
    return policies


def _read(path: Path, problems: list[Problem]) -> Any:
    try:
        value, duplicates = read_yaml(decode(read_limited(path, MAX_FILE)))
    except Unreadable as exc:
        problems.append(Problem(str(path), 1, "(file)", f"cannot read: {exc}"))
        return None
    except YamlProblem as exc:
        problems.append(Problem(str(path), exc.line, "(yaml)", exc.message))
        return None
    for line, key in duplicates:
        problems.append(Problem(str(path), line, field_name(key), "duplicate key"))
    if duplicates:
        return None
    if value is None:
        value = LineDict()
    return value


def _build(spec: Spec, raw: Any, ctx: Context, problems: list[Problem]) -> Any:
    try:
        result = spec.build(raw, ctx, "", getattr(raw, "line", 1))
    except RecursionError:
        result = ctx.error(1, "(file)", "nested too deeply")
    problems.extend(ctx.problems)
    return result
