import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from gateway.config.yamlread import read_yaml

REPO = Path(__file__).resolve().parents[2]


def schema(*flags: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "gateway", "schema", *flags], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_shipped_policies_validate_against_the_printed_schema():
    policy_schema = schema()
    jsonschema.Draft202012Validator.check_schema(policy_schema)
    files = sorted((REPO / "policies").glob("*.yaml"))
    assert files
    for path in files:
        # Read as YAML 1.2, as editors' YAML support does: `on:` is a key, not true.
        document, _ = read_yaml(path.read_text())
        jsonschema.validate(document, policy_schema)


def test_the_schema_refuses_what_the_loader_refuses():
    policy_schema = schema()
    validator = jsonschema.Draft202012Validator(policy_schema)
    bad = [
        {"vendor": "a", "upstream": "https://a.example", "colour": "red"},
        {"vendor": "a"},
        {"vendor": "a", "upstream": "https://a.example", "credentials": {"type": "bearer", "token": "literal"}},
        {"vendor": "a", "upstream": "https://a.example", "timeout": "soon"},
        {"vendor": "a", "upstream": "https://a.example", "budgets": [{"name": "b", "limit": 1}]},
    ]
    for document in bad:
        assert not validator.is_valid(document), document
    assert validator.is_valid(
        {"vendor": "a", "upstream": "https://a.example", "credentials": {"type": "bearer", "token": "${T}"},
         "budgets": [{"name": "b", "limit": 1, "per": "1s", "reserve": "20%"}], "retry": {"on": [503, "timeout"]}}
    )


def test_the_config_schema_is_printed_too():
    config_schema = schema("--config")
    assert "callers" in config_schema["properties"]
    jsonschema.Draft202012Validator.check_schema(config_schema)


def test_the_config_schema_takes_a_star_for_every_vendor_as_the_loader_does():
    validator = jsonschema.Draft202012Validator(schema("--config"))

    def config(vendors: object) -> dict:
        return {"callers": [{"name": "c", "key": "${C}", "vendors": vendors}]}

    for vendors in ("*", ["*"], ["hubspot", "clearbit"]):
        assert validator.is_valid(config(vendors)), vendors
    for vendors in ("hubspot", [], ["Not A Vendor"], 5):
        assert not validator.is_valid(config(vendors)), vendors
