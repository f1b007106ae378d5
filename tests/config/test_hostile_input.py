"""Whatever bytes, URLs, references or sizes a config or policy holds, loading it gives
settings or `FILE:LINE: FIELD: message` problems: never a traceback, a hang or a blow-up.
Each case here once crashed the loader (by hand or under tests/fuzz/fuzz_loader.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.loader import Overrides, Settings, load_settings
from gateway.errors import ConfigError

POLICY = "vendor: a\nupstream: https://a.example\n"


def load(tmp_path: Path, policy: bytes | str, env: dict[str, str] | None = None) -> Settings | list[str]:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "a.yaml").write_bytes(policy if isinstance(policy, bytes) else policy.encode())
    try:
        return load_settings(None, env or {}, Overrides(policies=str(folder)))
    except ConfigError as exc:
        return [str(p).replace(f"{folder}/", "") for p in exc.problems]


def problems(tmp_path: Path, policy: bytes | str, env: dict[str, str] | None = None) -> list[str]:
    found = load(tmp_path, policy, env)
    assert isinstance(found, list), "expected problems, the policy was accepted"
    assert all("\n" not in p for p in found)
    return found


def accepted(tmp_path: Path, policy: bytes | str, env: dict[str, str] | None = None) -> Settings:
    found = load(tmp_path, policy, env)
    assert isinstance(found, Settings), found
    return found


def test_bytes_yaml_refuses_are_named_at_their_line(tmp_path):
    assert problems(tmp_path, POLICY.encode() + b"x: \x00\n") == [
        "a.yaml:3: (yaml): character U+0000 is not allowed in YAML (column 4)"
    ]
    assert problems(tmp_path, POLICY.encode() + b"dead_letter: \xff\xfe\n") == [
        "a.yaml:3: (yaml): not UTF-8 text: byte 0xff at column 14"
    ]
    assert problems(tmp_path, "vendor: a\n\tupstream: https://a.example\n") == [
        "a.yaml:2: (yaml): invalid YAML: found character '\\t' that cannot start any token"
    ]
    assert accepted(tmp_path, b"\xef\xbb\xbf" + POLICY.encode()).policies["a"].vendor == "a"


def test_broken_urls_are_problems(tmp_path):
    assert problems(tmp_path, 'vendor: a\nupstream: "http://127.[0.0.1:9104"\n') == [
        "a.yaml:2: upstream: 'http://127.[0.0.1:9104' is not a valid URL "
        "(a broken [IPv6] host or a port that is no number from 1 to 65535)"
    ]
    for upstream, message in [
        ("https://a.example:99999", "is not a valid URL"),
        ("https://a.example:0", "has an empty or zero port"),
        ("https://[::g]/", "is not a valid URL"),
        ("https://[v1.fe]/", "has an invalid IPv6 address"),
        ("https://a b.example", "must be ASCII without spaces"),
        ("https://a.exa\\tmple", "must not contain control characters"),  # urlsplit would drop the tab
        ("https://bücher.example", "must be ASCII"),
        ("https://a..example", "has an invalid host name"),
        ("https://xn--a.example", "has an invalid punycode (xn--) host name"),
        ("https://@a.example", "must not carry user:password"),
        ("https://a.example/v1?", "must not carry a query or fragment"),
        ("https://a.example/%zz", "'%' that is not followed by two hex digits"),
    ]:
        [found] = problems(tmp_path, f'vendor: a\nupstream: "{upstream}"\n')
        assert found.startswith("a.yaml:2: upstream: ") and message in found, (upstream, found)


@pytest.mark.parametrize("base", ["/x/../y", "/x/..", "/.", "/x/./y", "/x/%2e%2E/y", "/x/%2E", "/x/%252e%252e/y", "/x/.%2e/"])
def test_an_upstream_base_path_with_dot_segments_is_refused(tmp_path, base):
    assert problems(tmp_path, f"vendor: a\nupstream: https://a.example{base}\n") == [
        "a.yaml:2: upstream: base path must not contain '.' or '..' segments (percent-encoded ones included)"
    ]


def test_an_upstream_base_path_without_dot_segments_is_kept(tmp_path):
    upstream = accepted(tmp_path, "vendor: a\nupstream: https://a.example/v1/..data/.well/%40x/\n").policies["a"].upstream
    assert (upstream.origin, upstream.base_path) == ("https://a.example", "/v1/..data/.well/%40x")


def test_a_broken_storage_url_is_a_problem_that_never_shows_the_password(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies/a.yaml").write_text(POLICY)
    config = tmp_path / "gateway.yaml"
    for storage, message in [
        ("redis://[::1", "expected memory, redis://[:password@]host:port/db or rediss://..."),
        ("redis://:hunter2@[::1", "expected memory, redis://"),
        ("redis://:hunter2@h:123456/0", "expected memory, redis://"),
        ("redis://:hunter2@h:6379/zero", "the database is a number after the port"),
        ("redis://:hunter2@h/0?socket_timeout=x", "must not carry a query or fragment"),
        ("redis://:hun ter2@h/0", "without spaces"),
    ]:
        config.write_text(f'storage: "{storage}"\n')
        with pytest.raises(ConfigError) as info:
            load_settings(str(config), {}, Overrides())
        [found] = [str(p) for p in info.value.problems]
        assert found.startswith(f"{config}:1: storage: ") and message in found, (storage, found)
        assert "hunter2" not in found and "hun ter2" not in found


def test_file_references_are_read_with_a_bound_and_only_from_regular_files(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies/exact.txt").write_bytes(b"k" * 64 * 1024)
    (tmp_path / "policies/long.txt").write_bytes(b"k" * (64 * 1024 + 1))
    (tmp_path / "policies/latin1.txt").write_bytes(b"caf\xe9")
    os.mkfifo(tmp_path / "policies/fifo")
    token = 'vendor: a\nupstream: https://a.example\ncredentials: {{type: bearer, token: "${{file:{}}}"}}\n'
    assert accepted(tmp_path, token.format("exact.txt")).policies["a"].credentials.token.reveal() == "k" * 65536  # type: ignore[union-attr]
    for target, reason in [
        ("/dev/zero", "not a regular file"),
        ("fifo", "not a regular file"),
        (str(tmp_path), "not a regular file"),
        ("long.txt", "longer than 64 KB"),
        ("latin1.txt", "not UTF-8 text"),
        ("/a\\0b", "not a usable file path"),
    ]:
        [found] = problems(tmp_path, token.format(target))
        assert found.startswith("a.yaml:3: credentials.token: cannot read referenced file ") and found.endswith(reason), found


def test_secrets_and_strings_with_control_characters_are_problems(tmp_path):
    [found] = problems(tmp_path, POLICY + 'credentials: {type: bearer, token: "${T}"}\n', {"T": "tok\r\nX-Evil: 1"})
    assert found == "a.yaml:3: credentials.token: ${T} resolves to a value that must not contain control characters (U+000D at character 4)"
    [found] = problems(tmp_path, POLICY + 'credentials: {type: api_key, header: X-Key, prefix: "a\\nb", value: "${T}"}\n', {"T": "t"})
    assert found == "a.yaml:3: credentials.prefix: must not contain control characters (U+000A at character 2)"
    [found] = problems(tmp_path, POLICY + 'credentials: {type: basic, username: "\\ud800", password: "${T}"}\n', {"T": "t"})
    assert "credentials.username: must not contain lone surrogates (U+D800" in found
    [found] = problems(tmp_path, POLICY + 'credentials: {type: basic, username: "a:b", password: "${T}"}\n', {"T": "t"})
    assert found == "a.yaml:3: credentials.username: a Basic username cannot contain ':' (RFC 7617)"
    jwt = POLICY + ("credentials: {type: jwt_bearer, token_url: https://a.example/t, issuer: i, audience: a,"
                    ' private_key: "${K}"}\n')
    pem = "-----BEGIN PRIVATE KEY-----\r\nMIIB\n-----END PRIVATE KEY-----"
    assert accepted(tmp_path, jwt, {"K": pem}).policies["a"].credentials.private_key.reveal() == pem  # type: ignore[union-attr]


def test_nesting_and_alias_bombs_are_bounded(tmp_path):
    assert problems(tmp_path, POLICY + "budgets: " + "[" * 5000 + "]" * 5000 + "\n") == [
        "a.yaml:3: (yaml): nested more than 40 levels deep"
    ]
    laughs = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    assert problems(tmp_path, POLICY + "l0: &l0 [lol]\n" + laughs) == [
        "a.yaml:8: (yaml): expands to more than 100000 values (anchors and aliases counted each time they are used)"
    ]
    chain = "".join(f"c{i}: &c{i} [*c{i - 1}]\n" for i in range(1, 60))
    assert problems(tmp_path, POLICY + "c0: &c0 [x]\n" + chain) == [
        "a.yaml:42: (yaml): nested more than 40 levels deep (through aliases)"
    ]
    assert problems(tmp_path, "a: &a [*a]\n") == ["a.yaml:1: (yaml): invalid YAML: found unconstructable recursive node"]


def test_huge_and_odd_numbers_are_problems(tmp_path):
    def budget(limit: str, extra: str = "") -> str:
        return POLICY + f"budgets:\n  - {{name: b, limit: {limit}, per: 1s{extra}}}\n"

    assert problems(tmp_path, budget("99999999999999999999999")) == [
        "a.yaml:4: budgets[0].limit: must be at most 1000000000000000, got 99999999999999999999999"
    ]
    [found] = problems(tmp_path, budget("9" * 5000))
    assert found.startswith("a.yaml:4: (yaml): '99999") and found.endswith("... is not a whole number (or has too many digits)")
    assert accepted(tmp_path, budget("09")).policies["a"].budgets[0].limit == 9  # YAML 1.2: not octal
    [found] = problems(tmp_path, budget("5", ", reserve: " + "9" * 400))
    assert found.startswith("a.yaml:4: budgets[0].reserve: expected a share from 0% to below 100%, got 99999") and len(found) < 200
    assert problems(tmp_path, POLICY + "retry: {backoff: {multiplier: .inf}}\ncircuit_breaker: {failure_ratio: .nan}\n") == [
        "a.yaml:3: retry.backoff.multiplier: must be a finite number, got inf",
        "a.yaml:4: circuit_breaker.failure_ratio: must be a finite number, got nan",
    ]


def test_keys_tags_and_time_zones_that_python_refuses_are_problems(tmp_path):
    assert problems(tmp_path, POLICY + "? [x]\n: 1\n") == ["a.yaml:3: (yaml): keys must be strings, got ['x']"]
    assert problems(tmp_path, POLICY + "dead_letter: !!timestamp 2024-13-45\n") == [
        "a.yaml:3: (yaml): cannot read this timestamp value: ValueError"
    ]
    assert problems(tmp_path, POLICY + "dead_letter: !!bool maybe\n") == ["a.yaml:3: (yaml): cannot read this bool value: KeyError"]
    assert problems(tmp_path, POLICY + '"dead\\nletter": 1\n') == [
        "a.yaml:3: 'dead\\nletter': unknown field (expected one of: vendor, upstream, timeout, credentials, budgets, "
        "when_exhausted, retry, circuit_breaker, cache, dead_letter, auth_failures, refund_on)"
    ]
    fixed = POLICY + "budgets:\n  - {{name: b, limit: 5, per: 1d, window: fixed, reset: '03:00', timezone: {}}}\n"
    for zone in ("America", "a" * 5000, "../../etc/passwd", "Europe/Paris/", "zone.tab"):
        [found] = problems(tmp_path, fixed.format(zone))
        assert found.startswith("a.yaml:4: budgets[0].timezone: unknown time zone '") and len(found) < 120, found
    assert accepted(tmp_path, fixed.format("America/Argentina/Buenos_Aires")).policies["a"].budgets[0].timezone


def test_long_values_are_cut_short_in_problems(tmp_path):
    [found] = problems(tmp_path, POLICY + f"timeout: {'x' * 100_000}\n")
    assert found.startswith("a.yaml:3: timeout: expected a duration") and len(found) < 200
    [found] = problems(tmp_path, POLICY + f"? {'k' * 100_000}\n: 1\n")
    assert found.startswith("a.yaml:3: 'kkkk") and len(found) < 300


def test_globs_that_could_never_match_a_request_path_are_refused(tmp_path):
    cache = POLICY + 'cache: [{{match: {{path: "{}"}}, ttl: 1m}}]\n'
    for glob in ("/search?q=*", "/a#b", "/caf\u00e9/*"):
        assert problems(tmp_path, cache.format(glob)) == [
            "a.yaml:3: cache[0].match.path: a path glob is ASCII (percent-encoded as requests are) and has no query or fragment"
        ]
    assert accepted(tmp_path, cache.format("/a/[b](c)+/*")).policies["a"].cache[0].match.fits("GET", "/a/[b](c)+/x")


def test_files_that_are_no_config_are_problems(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies/a.yaml").write_text(POLICY)
    (tmp_path / "policies/zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "policies/gone.yml").symlink_to(tmp_path / "nowhere")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 300_000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(big), {}, Overrides(policies=str(tmp_path / "policies")))
    assert [str(p) for p in info.value.problems] == [f"{big}:1: (file): cannot read: longer than 256 KB"]
    with pytest.raises(ConfigError) as info:
        load_settings(None, {}, Overrides(policies=str(tmp_path / "policies")))
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path}/policies/gone.yml:1: (file): cannot read: No such file or directory",
        f"{tmp_path}/policies/zero.yaml:1: (file): cannot read: not a regular file",
    ]
    with pytest.raises(ConfigError) as info:
        load_settings(None, {}, Overrides(policies="/dev/zero"))
    assert [str(p) for p in info.value.problems] == ["--policies:1: policies: /dev/zero: not a directory"]


def run_gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_check_and_serve_report_every_malformed_file_as_file_line_problems_without_a_traceback(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    os.mkfifo(policies / "token.fifo")
    (policies / "nul.yaml").write_bytes(POLICY.replace("a", "n", 1).encode() + b"x: \x00\n")
    (policies / "ipv6.yaml").write_text('vendor: b\nupstream: "http://127.[0.0.1:9104"\n')
    (policies / "zero.yaml").write_text('vendor: c\nupstream: https://c.example\ncredentials: {type: bearer, token: "${file:/dev/zero}"}\n')
    (policies / "fifo.yaml").write_text('vendor: d\nupstream: https://d.example\ncredentials: {type: bearer, token: "${file:token.fifo}"}\n')
    (policies / "dots.yaml").write_text("vendor: e\nupstream: http://127.0.0.1:9104/api/%2e%2e/admin\n")
    (policies / "bomb.yaml").write_text(
        POLICY.replace("a", "f", 1) + "l0: &l0 [lol]\n"
        + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    )
    config = tmp_path / "gateway.yaml"
    config.write_text('storage: "redis://[::1"\npolicies: ./policies\n')
    expected = [
        f"{policies}/bomb.yaml:8: (yaml): expands to more than 100000 values (anchors and aliases counted each time they are used)",
        f"{policies}/dots.yaml:2: upstream: base path must not contain '.' or '..' segments (percent-encoded ones included)",
        f"{policies}/fifo.yaml:3: credentials.token: cannot read referenced file '{policies}/token.fifo': not a regular file",
        f"{policies}/ipv6.yaml:2: upstream: 'http://127.[0.0.1:9104' is not a valid URL (a broken [IPv6] host or a port that is no number from 1 to 65535)",
        f"{policies}/nul.yaml:3: (yaml): character U+0000 is not allowed in YAML (column 4)",
        f"{policies}/zero.yaml:3: credentials.token: cannot read referenced file '/dev/zero': not a regular file",
        f"{config}:1: storage: expected memory, redis://[:password@]host:port/db or rediss://...",
    ]
    check = run_gateway("check", "--config", str(config), cwd=tmp_path)
    assert (check.returncode, check.stderr) == (1, "")
    assert sorted(check.stdout.splitlines()) == sorted(expected)
    serve = run_gateway("serve", "--config", str(config), "--listen", "127.0.0.1:1", cwd=tmp_path)
    assert serve.returncode == 1 and "Traceback" not in serve.stderr
    assert sorted(serve.stderr.splitlines()) == sorted(expected)


def test_check_refuses_a_config_file_that_is_a_device_or_a_fifo_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "gateway.fifo")
    for config in ("/dev/zero", str(tmp_path / "gateway.fifo")):
        check = run_gateway("check", "--config", config, cwd=tmp_path)
        assert (check.returncode, check.stdout, check.stderr) == (1, f"{config}:1: (file): cannot read: not a regular file\n", "")
