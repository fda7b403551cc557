//! The Python client (`clients/python`, package `earshot-client`) against this build's binary:
//! runs `clients/python/run_tests.sh`, which creates a venv under target/ (first run only: pip
//! installs httpx, numpy, pytest and anyio from PyPI) and runs its pytest suite, each test starting
//! real `earshot serve` processes. Any failure — no python3, pip unable to install, a failing test —
//! fails this test; nothing is skipped.

use std::process::Command;

#[test]
fn python_client_suite_passes_against_a_real_server() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/clients/python/run_tests.sh"))
        .env("EARSHOT_BIN", env!("CARGO_BIN_EXE_earshot"))
        .output()
        .expect("bash must be installed to run clients/python/run_tests.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "clients/python/run_tests.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // pytest exits 5 when it collects nothing; make sure it really ran the suite.
    assert!(
        stdout.contains(" passed"),
        "no passing tests reported:\n{stdout}"
    );
}
