//! Crash enumeration: run a step of an operator until it ends or the emulator reports the
//! crash set with [`Moto::crash_after`]; then the step is dropped where it stands — no code of
//! it runs after the crashing request, as with a process killed by SIGKILL — and the next step
//! runs with a fresh context, as a restarted process would (every operator keeps its state in
//! the cluster and on AWS only).

use std::{future::Future, time::Duration};

use crate::{Moto, MotoError};

/// How a step ended.
#[derive(Debug)]
pub enum Step<T> {
    /// It ran to its end.
    Finished(T),
    /// The operator crashed during it, at the request the report names.
    Crashed(crate::moto::CrashReport),
}

/// Runs `step` until it ends or the emulator reports the operator crashed; a crashed step is
/// dropped mid-flight and the crash cleared (the held requests are dropped unanswered).
pub async fn until_crash<F: Future>(moto: &Moto, step: F) -> Result<Step<F::Output>, MotoError> {
    let mut step = std::pin::pin!(step);
    loop {
        tokio::select! {
            out = &mut step => return Ok(Step::Finished(out)),
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                let report = moto.crash_report()?;
                // Held: the crashing request (and whatever followed) waits for an answer.
                if report.crashed && report.held > 0 {
                    moto.clear_crash()?;
                    return Ok(Step::Crashed(report));
                }
            }
        }
    }
}
