//! End-to-end client tests: the official Python SDKs (`openai`, later `anthropic`) drive the
//! real `portcullis` binary through `tests/clients/` with pytest.
//!
//! The interpreter is `$PORTCULLIS_TEST_PYTHON` or `<repo>/.venv/bin/python`; set it up with
//! `python3 -m venv .venv && .venv/bin/pip install -r tests/clients/requirements.txt` (or run
//! `bash .ci/run`, which does that). A missing interpreter or package is a failure, not a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SETUP: &str =
    "python3 -m venv .venv && .venv/bin/pip install -r tests/clients/requirements.txt   (or: bash .ci/run)";

/// The whole suite is meant to take well under a minute; this only stops a wedged run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn python(repo: &Path) -> PathBuf {
    match std::env::var_os("PORTCULLIS_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo.join(".venv/bin/python"),
    }
}

#[test]
fn python_sdk_clients() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = python(repo);
    if !python.exists() {
        panic!(
            "client tests need a Python interpreter with the test requirements at {}, which does not exist.\n\
             Run from {}:\n    {SETUP}\n\
             or point PORTCULLIS_TEST_PYTHON at an interpreter that has them.",
            python.display(),
            repo.display()
        );
    }
    let probe = Command::new(&python)
        .args(["-c", "import openai, pytest, httpx, authlib"])
        .current_dir(repo)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}\nRun from {}:\n    {SETUP}", python.display(), repo.display()));
    if !probe.status.success() {
        panic!(
            "{} cannot import the client-test packages:\n{}\nRun from {}:\n    {SETUP}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim_end(),
            repo.display()
        );
    }

    // pytest's output goes straight to the terminal (live progress on a long run).
    let mut child = Command::new(&python)
        .args(["-m", "pytest", "tests/clients", "-q", "-p", "no:cacheprovider"])
        .current_dir(repo)
        .env("PORTCULLIS_BIN", env!("CARGO_BIN_EXE_portcullis"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start pytest with {}: {e}", python.display()));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for pytest") {
            break status;
        }
        if started.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "client tests did not finish within {SUITE_TIMEOUT:?}: killed pytest (a request or the gateway hangs?)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "client tests failed (pytest {status}); pytest's report is printed above. \
         Re-run alone: PORTCULLIS_BIN={} {} -m pytest tests/clients -q",
        env!("CARGO_BIN_EXE_portcullis"),
        python.display()
    );
}
