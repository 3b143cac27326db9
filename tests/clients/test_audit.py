"""The hash-chained audit trail: refused credentials, denied access and the gateway's own limit
refusals are appended as they happen, and `portcullis audit verify` finds any edit."""

import json
import subprocess
import time

import httpx
import openai
import pytest

import support


def trail(gateway) -> list[dict]:
    path = gateway.dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def records_for(gateway, request_ids, timeout=5.0):
    """Appends run off the request path: poll until every id is in."""
    deadline = time.monotonic() + timeout
    while True:
        found = {r["record"]["request_id"]: r["record"] for r in trail(gateway) if r["record"].get("request_id") in request_ids}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def verify(config_path):
    return subprocess.run([str(support.gateway_binary()), "audit", "verify", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=30)


def test_security_decisions_are_chained_and_verified(gateway, tmp_path):
    ids = {}
    r = httpx.post(gateway.base + "/v1/chat/completions", headers=support.auth("pc-not-a-key"),
                   json={"model": "mock:echo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
    ids[r.headers["x-request-id"]] = "auth_failed"
    r = httpx.post(gateway.base + "/v1/model-router/team-a/chat/completions", headers=support.auth(support.KEY_CAPPED),
                   json={"model": "mock:echo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403
    ids[r.headers["x-request-id"]] = "access_denied"
    limited = support.sdk(gateway.base + "/v1", api_key=support.KEY_TOKEN_LIMITED)
    with pytest.raises(openai.RateLimitError) as e:
        limited.chat.completions.create(model="openai:gpt-4o-mini", max_tokens=100_000,
                                        messages=[{"role": "user", "content": "x"}])
    ids[e.value.response.headers["x-request-id"]] = "limit_exceeded"

    found = records_for(gateway, set(ids))
    assert {rid: rec["event"] for rid, rec in found.items()} == ids
    denied = next(rec for rec in found.values() if rec["event"] == "access_denied")
    assert denied["principal"] == "test-capped" and denied["code"] == "proxy_not_allowed"
    assert all(rec["client"].startswith("127.0.0.1") for rec in found.values())
    assert "pc-not-a-key" not in (gateway.dir / "audit.jsonl").read_text(), "a presented secret in the trail"

    r = verify(gateway.config_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "intact" in r.stdout

    # Tamper with a copy: change one record, and the verifier names its line.
    lines = (gateway.dir / "audit.jsonl").read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if json.loads(line)["record"].get("event") == "access_denied")
    lines[target] = lines[target].replace('"access_denied"', '"ok"')
    copy = tmp_path / "audit.jsonl"
    copy.write_text("\n".join(lines) + "\n")
    config = tmp_path / "portcullis.toml"
    config.write_text(f'[audit]\npath = "{copy}"\n')
    r = verify(config)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"broken at line {target + 1}" in r.stdout, r.stdout
