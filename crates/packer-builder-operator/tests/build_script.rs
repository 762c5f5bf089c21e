//! The build container's script, run by `/bin/sh` with a stand-in `packer`: Packer's output
//! reaches the log, its artifact lines the termination message, its exit status the container's;
//! and a SIGTERM to the script (the container's PID 1 when the pod is stopped) reaches Packer,
//! whose cleanup the script waits for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use packer_builder_operator::job::BUILD_SCRIPT;

/// A `packer` that prints an artifact line, then either exits with `exit_code` or (when
/// `exit_code` is `None`) runs until signalled, then records the signal, cleans up for a while
/// and exits 3.
fn stand_in(dir: &Path, exit_code: Option<i32>) {
    let tail = match exit_code {
        Some(code) => format!("exit {code}"),
        // Bounded, so that a failing test leaves nothing running for long.
        None => "i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; exit 9".to_owned(),
    };
    let script = format!(
        r#"#!/bin/sh
mark="$OPSY_TEST_MARK"
trap 'echo "got TERM" >> "$mark"; sleep 1; echo "cleaned up" >> "$mark"; exit 3' TERM
trap 'echo "got INT" >> "$mark"; exit 4' INT
echo "args: $*"
echo "1732000000,amazon-ebs.node,artifact,0,id,us-west-2:ami-0123456789abcdef0"
echo started >> "$mark"
{tail}
"#
    );
    let path = dir.join("packer");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn script(dir: &Path) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(BUILD_SCRIPT)
        .args(["packer", "build", "-var", "x=$(touch pwned)", "."])
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("OPSY_BUILD_DIR", dir)
        .env("OPSY_TERMINATION_LOG", dir.join("termination-log"))
        .env("OPSY_TEST_MARK", dir.join("mark"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn output_artifacts_and_exit_status_pass_through() {
    for code in [0, 7] {
        let dir = tempfile::tempdir().unwrap();
        stand_in(dir.path(), Some(code));
        let output = script(dir.path()).output().unwrap();
        assert_eq!(output.status.code(), Some(code));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("args: build -var x=$(touch pwned) ."),
            "arguments verbatim: {stdout}"
        );
        assert!(!dir.path().join("pwned").exists(), "no argument was run");
        assert_eq!(
            read(&dir.path().join("termination-log")),
            "1732000000,amazon-ebs.node,artifact,0,id,us-west-2:ami-0123456789abcdef0\n"
        );
    }
}

#[test]
fn a_sigterm_reaches_packer_and_its_cleanup_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    stand_in(dir.path(), None);
    let mut child = script(dir.path()).spawn().unwrap();
    let mark = dir.path().join("mark");
    let started = Instant::now();
    while !read(&mark).contains("started") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "packer never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    // The script ended only after Packer's cleanup, with Packer's status.
    assert_eq!(read(&mark), "started\ngot TERM\ncleaned up\n");
    assert_eq!(status.code(), Some(3));
    assert!(
        read(&dir.path().join("termination-log")).contains(",artifact,0,id,"),
        "the output up to the signal is kept"
    );
}
