"""`portcullis check-config`: every error of a broken config in one run, each with its key path."""

import subprocess

import support


def check(tmp_path, text):
    path = tmp_path / "portcullis.toml"
    path.write_text(text)
    return subprocess.run([str(support.gateway_binary()), "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_check_config_lists_every_error_with_its_path(tmp_path):
    r = check(tmp_path, """
[server]
threads = "two"
[providers.a]
kind = "openai"
base_ur = "https://api.openai.com/v1"
[pricing]
"a:*" = { input = "cheap", output = 1.0 }
[[auth.virtual_keys]]
name = "k"
key_sha256 = "abc"
providers = ["a"]
limits = [{ window = "week", requests = 1 }]
""")
    assert r.returncode == 2, r
    for path in ["server.threads", "providers.a.base_ur", 'pricing.a:*.input', "auth.virtual_keys[0].limits[0].window"]:
        assert f"config error: {path}:" in r.stderr, (path, r.stderr)


def test_check_config_accepts_the_shipped_config():
    r = subprocess.run([str(support.gateway_binary()), "check-config", "--config", str(support.REPO / "conf/portcullis.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
