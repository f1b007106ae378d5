import textwrap
from pathlib import Path

import pytest

from gateway.config.loader import Overrides, load_settings
from gateway.config.model import ApiKey
from gateway.errors import ConfigError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems(tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env or {}, Overrides(policies=str(tmp_path / "policies")))
    return [str(p) for p in info.value.problems]


def test_every_problem_in_every_file_is_reported_with_file_line_and_field(tmp_path):
    a = write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://api.a.example
        timeout: soon
        budgets:
          - name: burst
            limit: 0
            per: 10s
            colour: red
    """)
    b = write(tmp_path, "policies/b.yml", """
        vendor: b
        upstream: ftp://b.example
        retry: {attempts: 2, on: [503, sometimes]}
    """)
    assert problems(tmp_path) == [
        f"{a}:3: timeout: expected a duration such as 250ms, 10s, 5m, 1h, 1d or seconds, got 'soon'",
        f"{a}:6: budgets[0].limit: must be at least 1, got 0",
        f"{a}:8: budgets[0].colour: unknown field (expected one of: name, limit, per, window, reset, "
        "timezone, match, cost, key, reserve, shadow, follow)",
        f"{b}:2: upstream: 'ftp://b.example' is not an http:// or https:// URL with a host",
        f"{b}:3: retry.on[1]: must be a status from 400 to 599, timeout or connect, got 'sometimes'",
    ]


def test_a_literal_secret_is_refused_without_echoing_it(tmp_path):
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://api.a.example
        credentials: {type: bearer, token: sk-live-123456}
    """)
    [problem] = problems(tmp_path)
    assert "credentials.token: a secret must be a reference" in problem
    assert "sk-live" not in problem


def test_a_missing_variable_is_named_and_references_resolve(tmp_path):
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://api.a.example
        credentials: {type: api_key, header: X-Api-Key, value: "${A_KEY}"}
    """)
    assert problems(tmp_path) == [f"{tmp_path}/policies/a.yaml:3: credentials.value: environment variable A_KEY is not set"]
    settings = load_settings(None, {"A_KEY": "k-1"}, Overrides(policies=str(tmp_path / "policies")))
    credentials = settings.policies["a"].credentials
    assert isinstance(credentials, ApiKey) and credentials.value.reveal() == "k-1"
    assert "k-1" not in repr(settings)


def test_file_references_are_read_trimmed_and_relative_to_the_policy(tmp_path):
    write(tmp_path, "policies/token.txt", "tok-1\n")
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://api.a.example
        credentials: {type: bearer, token: "${file:token.txt}"}
    """)
    write(tmp_path, "policies/b.yaml", """
        vendor: b
        upstream: https://api.b.example
        credentials: {type: bearer, token: "${file:/nonexistent/token}"}
    """)
    [problem] = problems(tmp_path)
    assert "b.yaml:3: credentials.token: cannot read referenced file '/nonexistent/token'" in problem
    (tmp_path / "policies/b.yaml").unlink()
    settings = load_settings(None, {}, Overrides(policies=str(tmp_path / "policies")))
    assert settings.policies["a"].credentials.token.reveal() == "tok-1"  # type: ignore[union-attr]


def test_yaml_syntax_errors_and_duplicate_keys_name_their_line(tmp_path):
    write(tmp_path, "policies/a.yaml", "vendor: a\nupstream: [unclosed\n")
    write(tmp_path, "policies/b.yaml", "vendor: b\nupstream: https://b.example\nvendor: c\n")
    found = problems(tmp_path)
    assert any(p.startswith(f"{tmp_path}/policies/a.yaml:") and "(yaml): invalid YAML" in p for p in found)
    assert f"{tmp_path}/policies/b.yaml:3: vendor: duplicate key" in found


def test_retry_on_and_yes_no_stay_strings_as_in_yaml_1_2(tmp_path):
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://api.a.example
        retry: {attempts: 3, on: [503, timeout]}
        dead_letter: yes
    """)
    assert problems(tmp_path) == [f"{tmp_path}/policies/a.yaml:4: dead_letter: expected true or false, got the string 'yes'"]


def test_cross_field_rules(tmp_path):
    write(tmp_path, "policies/a.yaml", """
        vendor: a
        upstream: https://api.a.example
        credentials: {type: api_key, value: "${K}"}
        budgets:
          - {name: x, limit: 5, per: 1s, reset: "03:00"}
          - {name: x, limit: 5, per: 1d, window: fixed, reset: "25:00", timezone: Mars/Base, cost: 9}
          - {name: y, limit: 10, per: 1s, cost: 3, reserve: 80%}
          - {name: z, limit: 2, per: 1s, cost: 3}
          - {name: w, limit: 2, per: 36h, window: fixed}
        cache:
          - {match: {methods: [DELETE]}, ttl: 1m}
    """)
    found = problems(tmp_path, {"K": "v"})
    text = "\n".join(found)
    assert "a.yaml:3: credentials: api_key needs exactly one of header or query" in text
    assert "a.yaml:5: budgets[0].reset: only applies with window: fixed" in text
    assert "budgets[1].reset: '25:00' does not match" in text
    assert "budgets[1].timezone: unknown time zone 'Mars/Base'" in text
    assert "budgets[3].cost: cost 3 is more than the limit 2: no request could ever pass" in text
    assert "budgets[2].reserve: a reserve of 80% leaves less than one request's cost to callers below priority high" in text
    assert "budgets[4].per: a fixed window longer than a day is a whole number of days (7d, 30d)" in text
    assert "a.yaml:11: cache[0].match: only GET, HEAD and POST lookups are cached, not DELETE" in text


def test_reserved_and_duplicate_vendor_names(tmp_path):
    write(tmp_path, "policies/a.yaml", "vendor: metrics\nupstream: https://a.example\n")
    write(tmp_path, "policies/b.yaml", "vendor: _admin\nupstream: https://a.example\n")
    write(tmp_path, "policies/c.yaml", "vendor: same\nupstream: https://a.example\n")
    write(tmp_path, "policies/d.yaml", "vendor: same\nupstream: https://a.example\n")
    found = problems(tmp_path)
    assert f"{tmp_path}/policies/a.yaml:1: vendor: 'metrics' is reserved for the gateway's own endpoints" in found
    assert any("b.yaml:1: vendor: '_admin' does not match" in p for p in found)
    assert f"{tmp_path}/policies/d.yaml:1: vendor: 'same' is also defined in {tmp_path}/policies/c.yaml" in found


def test_config_file_problems_and_callers(tmp_path):
    write(tmp_path, "policies/a.yaml", "vendor: a\nupstream: https://a.example\n")
    config = write(tmp_path, "gateway.yaml", """
        listen: nowhere
        storage: mysql://x
        max_body: lots
        callers:
          - {name: one, key: "${ONE}", vendors: [a, ghost]}
          - {name: two, key: "${ONE}", priority: urgent}
    """)
    with pytest.raises(ConfigError) as info:
        load_settings(str(config), {"ONE": "k"}, Overrides())
    found = [str(p) for p in info.value.problems]
    assert found == [
        f"{config}:1: listen: expected HOST:PORT (IPv6 as [::1]:8080), got 'nowhere'",
        f"{config}:2: storage: expected memory, redis://[:password@]host:port/db or rediss://...",
        f"{config}:3: max_body: expected a size such as 512KB or 10MB (at most 1TB), got 'lots'",
        f"{config}:6: callers[1].priority: must be one of high, normal, low, got 'urgent'",
    ]
    config.write_text(config.read_text().replace("priority: urgent", "priority: high").replace(
        "listen: nowhere\nstorage: mysql://x\nmax_body: lots\n", ""))
    found = [str(p) for p in pytest.raises(ConfigError, load_settings, str(config), {"ONE": "k"}, Overrides()).value.problems]
    assert found == [
        f"{config}:2: callers[0].vendors: no policy for vendor 'ghost'",
        f"{config}:3: callers[1].key: caller 'two' has the same key as another caller",
    ]


def test_a_missing_policy_folder_is_reported_where_it_was_named(tmp_path):
    config = write(tmp_path, "gateway.yaml", "listen: 127.0.0.1:1\npolicies: ./nope\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(config), {}, Overrides())
    assert [str(p) for p in info.value.problems] == [f"{config}:2: policies: {tmp_path}/nope: no such directory"]


def test_defaults_and_flag_overrides(tmp_path):
    write(tmp_path, "policies/a.yaml", "vendor: a\nupstream: https://a.example/base/\n")
    config = write(tmp_path, "gateway.yaml", "listen: 127.0.0.1:1\nworkers: 2\n")
    settings = load_settings(str(config), {}, Overrides(listen="[::1]:9000", workers=3, storage="redis://h:6379/1"))
    assert settings.config.address == ("::1", 9000)
    assert (settings.config.workers, settings.config.storage) == (3, "redis://h:6379/1")
    policy = settings.policies["a"]
    assert (policy.timeout, policy.retry.attempts, policy.dead_letter, policy.credentials.type) == (30.0, 1, False, "none")
    assert (policy.upstream.origin, policy.upstream.base_path) == ("https://a.example", "/base")
    assert settings.config.max_body == 10 * 1024 * 1024


def test_hostile_values_are_problems_not_crashes(tmp_path):
    write(tmp_path, "policies/a.yaml", f"""
        vendor: a
        upstream: https://a.example
        timeout: {"9" * 400}
        credentials: {{type: [bearer]}}
        retry: {{backoff: {{multiplier: {"9" * 400}}}}}
        budgets: {"[" * 300}{"]" * 300}
    """)
    write(tmp_path, "policies/b.yaml", """
        vendor: b
        upstream: https://b.example
        credentials: {type: bearer, token: "${file:/a\\0b}"}
        budgets:
          - {name: x, limit: 1, per: 1d, window: fixed, reset: 12:30}
    """)
    found = problems(tmp_path)
    assert found and all(": " in p for p in found)
    assert not any("b.yaml:5" in p for p in found)  # 12:30 is a string in YAML 1.2


def test_an_unreadable_config_file_is_the_only_problem_reported(tmp_path):
    config = write(tmp_path, "gateway.yaml", "listen: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(config), {}, Overrides())
    assert len(info.value.problems) == 1 and "(yaml): invalid YAML" in str(info.value.problems[0])
