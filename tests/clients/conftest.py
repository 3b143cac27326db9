"""Session fixtures: one mock OpenAI upstream and one gateway process shared by every test.

Run: `cargo test --test clients` (builds the binary, sets PORTCULLIS_BIN), or directly
`.venv/bin/python -m pytest tests/clients -q` after `cargo build` (uses target/debug/portcullis).
On a failure the report shows the gateway log lines written during that test and the last
requests the upstream received.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import tempfile

import pytest

import support
from mock_anthropic import MockAnthropic
from mock_bedrock import MockBedrock
from mock_cohere import MockCohere
from mock_gemini import MockGemini
from mock_openai import MockUpstream, closed_port
from support import Gateway, sha256_hex

_GATEWAYS: list[Gateway] = []
_UPSTREAMS: list[MockUpstream] = []
_KEEP_WORKDIR: list[bool] = []


@contextlib.contextmanager
def dedicated_gateway(name: str, workdir: pathlib.Path, render, env: dict | None = None):
    """A test module's own gateway, started, its log in failure reports, stopped at the end."""
    g = Gateway(name, workdir, render, env)
    _GATEWAYS.append(g)
    try:
        g.start()
        yield g
    finally:
        g.stop()
        _GATEWAYS.remove(g)


def render_config(upstream_port: int, down_port: int, native: dict):
    """`native`: provider name -> port of that provider's mock upstream."""

    def render(port: int, admin_port: int, workdir: pathlib.Path) -> str:
        mock = f"http://127.0.0.1:{upstream_port}"
        return f"""# Written by tests/clients/conftest.py for one test session.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
public_url = "http://127.0.0.1:{port}"
threads = 2
max_body_bytes = 8388608
graceful_shutdown_seconds = 1
pid_file = "{workdir}/portcullis.pid"
upgrade_sock = "{workdir}/upgrade.sock"

[audit]
path = "{workdir}/audit.jsonl"

[upstream]
connect_timeout_ms = 2000
first_byte_timeout_ms = 30000
idle_timeout_ms = 30000

[egress]
allow_hosts = ["127.0.0.1", "localhost"]

[providers.openai]
kind = "openai"
base_url = "{mock}/v1"
api_key = "{support.OPENAI_UPSTREAM_KEY}"
models = ["gpt-4o-mini"]

[providers.groq]
kind = "openai_compatible"
preset = "groq"
base_url = "{mock}/groq/openai/v1"
api_key = "{support.GROQ_UPSTREAM_KEY}"
models = ["llama-3.1-8b-instant"]

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:{down_port}/v1"
api_key = "x"

[providers.blocked]
kind = "openai"
base_url = "http://blocked.example.com/v1"
api_key = "x"

[providers.mock]
kind = "mock"
models = ["echo"]

[providers.azure]
kind = "azure"
base_url = "{mock}"
api_key = "{support.AZURE_UPSTREAM_KEY}"
api_version = "2024-10-21"
azure_deployments = {{ "gpt-4o" = "gpt4o-deploy" }}

[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:{native['anthropic']}"
api_key = "test-anthropic-key"
models = ["claude-sonnet-4-5"]

[providers.gemini]
kind = "gemini"
base_url = "http://127.0.0.1:{native['gemini']}"
api_key = "test-gemini-key"
models = ["gemini-2.5-flash"]

[providers.bedrock]
kind = "bedrock"
base_url = "http://127.0.0.1:{native['bedrock']}"
region = "us-east-1"
aws_access_key_id = "AKIDTESTBEDROCK"
aws_secret_access_key = "test-bedrock-secret"
models = ["us.anthropic.claude-sonnet-4-20250514-v1:0"]

[providers.cohere]
kind = "cohere"
base_url = "http://127.0.0.1:{native['cohere']}"
api_key = "test-cohere-key"
models = ["command-a-03-2025"]

[routing.tiers]
simple = ["openai:tier-simple"]
medium = ["openai:tier-medium"]
complex = ["openai:tier-complex"]
reasoning = ["openai:tier-reasoning", "anthropic:tier-reasoning-2"]

[groups.interns]
description = "capped at the medium tier"
policy = {{ max_tier = "medium" }}

[proxies.fallback]
providers = ["down", "openai", "mock"]
tiers = {{ simple = ["down:dead-model", "openai:fallback-simple"], medium = ["openai:fallback-medium"] }}

[proxies.default]
passthrough_provider_keys = true

[proxies.team-a]
providers = ["openai", "mock"]
tiers = {{}}  # no `auto` here

[aliases]
echo = "mock:echo"

[[auth.virtual_keys]]
name = "test-all"
key_sha256 = "{sha256_hex(support.KEY_ALL)}"
proxies = ["default", "team-a", "fallback"]
providers = ["openai", "groq", "down", "blocked", "mock", "azure", "anthropic", "gemini", "bedrock", "cohere"]

[[auth.virtual_keys]]
name = "test-capped"
key_sha256 = "{sha256_hex(support.KEY_CAPPED)}"
proxies = ["default"]
providers = ["openai", "anthropic", "mock"]
groups = ["interns"]

[[auth.virtual_keys]]
name = "test-openai-only-models"
key_sha256 = "{sha256_hex(support.KEY_OPENAI_MODELS)}"
proxies = ["default"]
providers = ["openai", "mock"]
policy = {{ allowed_models = ["openai:*"] }}

[[auth.virtual_keys]]
name = "test-openai-mini"
key_sha256 = "{sha256_hex(support.KEY_OPENAI_MINI)}"
proxies = ["default"]
providers = ["openai", "mock"]
policy = {{ allowed_models = ["openai:gpt-4o-mini"] }}

[[auth.virtual_keys]]
name = "test-mockonly"
key_sha256 = "{sha256_hex(support.KEY_MOCKONLY)}"
proxies = ["default"]
providers = ["mock"]

# Metering (test_metering.py): one key per behaviour, so counters never mix between tests.
[pricing]
"openai:gpt-4o-mini" = {{ input = 10.0, output = 20.0 }}
"mock:*" = {{ input = 1.0, output = 2.0 }}

[groups.metered-team]
limits = [{{ window = "minute", requests = 3 }}]

[[auth.virtual_keys]]
name = "test-rate-limited"
key_sha256 = "{sha256_hex(support.KEY_RATE_LIMITED)}"
providers = ["openai", "mock"]
limits = [{{ window = "minute", requests = 3 }}]

[[auth.virtual_keys]]
name = "test-token-limited"
key_sha256 = "{sha256_hex(support.KEY_TOKEN_LIMITED)}"
providers = ["openai", "mock"]
limits = [{{ window = "minute", tokens = 300 }}]

[[auth.virtual_keys]]
name = "test-budget"
key_sha256 = "{sha256_hex(support.KEY_BUDGET)}"
providers = ["openai", "mock"]
limits = [{{ window = "day", cost_usd = 0.03 }}]

[[auth.virtual_keys]]
name = "test-team-a"
key_sha256 = "{sha256_hex(support.KEY_TEAM_A)}"
providers = ["openai", "mock"]
groups = ["metered-team"]

[[auth.virtual_keys]]
name = "test-team-b"
key_sha256 = "{sha256_hex(support.KEY_TEAM_B)}"
providers = ["openai", "mock"]
groups = ["metered-team"]

[[auth.virtual_keys]]
name = "test-usage"
key_sha256 = "{sha256_hex(support.KEY_USAGE)}"
providers = ["openai", "mock", "anthropic"]
limits = [{{ window = "month", cost_usd = 5.0 }}]
"""

    return render


@pytest.fixture(scope="session")
def workdir(request):
    """Config and logs; kept after a failing session so the log can be read."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="portcullis-clients-"))
    yield d
    if request.session.testsfailed == 0 and not _KEEP_WORKDIR:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"\ngateway config and logs kept in {d}")


@pytest.fixture(scope="session")
def upstream():
    m = MockUpstream().start()
    _UPSTREAMS.append(m)
    yield m
    m.stop()


@pytest.fixture(scope="session")
def natives():
    """One mock upstream per native (translated) provider, by provider name."""
    mocks = {"anthropic": MockAnthropic(), "gemini": MockGemini(), "bedrock": MockBedrock(), "cohere": MockCohere()}
    for m in mocks.values():
        m.start()
        _UPSTREAMS.append(m)
    yield mocks
    for m in mocks.values():
        m.stop()


@pytest.fixture(scope="session")
def gateway(upstream, natives, workdir):
    ports = {name: m.port for name, m in natives.items()}
    gw = Gateway("main", workdir / "main", render_config(upstream.port, closed_port(), ports))
    _GATEWAYS.append(gw)
    try:
        gw.start()
    except RuntimeError as e:
        _KEEP_WORKDIR.append(True)
        # One clear message instead of the same error repeated for every test.
        pytest.exit(f"cannot start the gateway under test:\n{e}", returncode=1)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def client(gateway):
    """SDK on /v1 with the all-providers virtual key."""
    return support.sdk(gateway.base + "/v1")


@pytest.fixture(scope="session")
def mockonly_client(gateway):
    return support.sdk(gateway.base + "/v1", api_key=support.KEY_MOCKONLY)


@pytest.fixture(scope="session")
def http(gateway):
    import httpx

    with httpx.Client(base_url=gateway.base, timeout=support.TIMEOUT) as c:
        yield c


# -- failure reports: the gateway log of the failing test and the upstream's last requests ------

_LOG_OFFSETS = pytest.StashKey[dict]()
_UPSTREAM_SEEN = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_LOG_OFFSETS] = {gw.name: gw.log_size() for gw in _GATEWAYS}
    item.stash[_UPSTREAM_SEEN] = [len(up.requests) for up in _UPSTREAMS]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    offsets = item.stash.get(_LOG_OFFSETS, {})
    for gw in _GATEWAYS:
        state = "running" if gw.alive() else f"EXITED with {gw.proc.returncode if gw.proc else '?'}"
        rep.sections.append(
            (f"gateway `{gw.name}` log during this test ({state}; full log {gw.log_path})", gw.log_tail(60, offsets.get(gw.name, 0)))
        )
    seen = item.stash.get(_UPSTREAM_SEEN, [])
    for i, up in enumerate(_UPSTREAMS):
        new = up.requests[seen[i] if i < len(seen) else 0 :]
        text = "\n".join("  " + r.summary() for r in new[-4:]) or "  (none during this test)"
        more = f" (last 4 of {len(new)})" if len(new) > 4 else ""
        rep.sections.append((f"mock upstream: requests received during this test{more}", text))
