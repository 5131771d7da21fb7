//! The container image, built and run here: `scripts/image.sh --quick` builds deploy/Dockerfile
//! with podman from the cached Debian base and the binary this test run built (a stripped
//! copy), runs it as production does (read-only root file system, uid/gid 10001, no
//! capabilities, the configuration from a mounted directory, host networking against the
//! local RabbitMQ), and checks `/readyz`, three signed callbacks verified by a receiver on the
//! host, a reload of a changed configuration, and a stop with exit 0 that lets a delivery in
//! flight finish. About 25 s once the base image is cached (the first run here bootstraps it
//! with mmdebstrap, a few minutes). The full run, with the stripped release binary of the
//! Cargo profile `image`, is `scripts/image.sh`.
//!
//! Where podman is missing or cannot run the test passes with the reason printed (never
//! silently); `CALLBACK_DISPATCHER_IMAGE_CHECK=off` skips it the same way.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Straight to the test process's standard error, past the test harness's capture: a skip
/// shows in the suite's output.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[test]
fn the_image_builds_runs_delivers_reloads_and_stops() {
    if std::env::var("CALLBACK_DISPATCHER_IMAGE_CHECK").as_deref() == Ok("off") {
        say("tests/image.rs: SKIPPED: CALLBACK_DISPATCHER_IMAGE_CHECK=off");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([
            "--quick",
            "--binary",
            env!("CARGO_BIN_EXE_callback-dispatcher"),
        ])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => println!("{stdout}"),
        Some(77) => say(&format!(
            "tests/image.rs: {}",
            stdout.trim_end().lines().last().unwrap_or("SKIPPED")
        )),
        _ => panic!(
            "scripts/image.sh --quick failed ({}):\n{stdout}\n{stderr}",
            out.status
        ),
    }
}
