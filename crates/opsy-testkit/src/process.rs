//! A child process that never outlives its test or benchmark.

use std::process::Child;

/// Kills and reaps the child when dropped, also when the test panics.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
