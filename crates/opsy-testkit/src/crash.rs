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

/// A scenario the crash enumeration runs: its operator's steps (reconciles) from a fresh
/// account and namespace to an end state it can recognise and check.
#[allow(
    async_fn_in_trait,
    reason = "implemented and awaited by the tests of this workspace only"
)]
pub trait Scenario {
    /// The emulator.
    fn moto(&self) -> &Moto;
    /// A fresh account and namespace with the scenario's objects.
    async fn reset(&mut self);
    /// The world's own moves before the next step (kubelets, builds, AWS's refusals).
    async fn between(&mut self);
    /// One step of the operator (a reconcile with a fresh context, as after a restart).
    async fn step(&self);
    /// The operator is down after a crash: AWS ends what it started meanwhile.
    async fn downtime(&mut self);
    /// Whether the scenario reached its end.
    async fn done(&self) -> bool;
    /// What must hold at the end, as violations; the shared invariants included.
    async fn violations(&self) -> Vec<String>;
}

/// Runs `scenario` from a fresh start until it is done, at most `steps` steps, crashing where
/// [`Moto::crash_after`] was set beforehand. Returns the action it crashed at, if it did.
#[allow(
    clippy::panic,
    reason = "an assertion for tests, which fail by panicking"
)]
pub async fn run<S: Scenario>(scenario: &mut S, what: &str, steps: usize) -> Option<String> {
    // Named on stderr, which a failing test shows, for the scenario's own assertions.
    eprintln!("{what}");
    let mut crashed = None;
    for _ in 0..steps {
        scenario.between().await;
        let step = match until_crash(scenario.moto(), Box::pin(scenario.step())).await {
            Ok(step) => step,
            Err(e) => panic!("{what}: the emulator did not answer: {e}"),
        };
        if let Step::Crashed(report) = step {
            crashed = report.action;
            scenario.downtime().await;
        }
        if scenario.done().await {
            let found = scenario.violations().await;
            if !found.is_empty() {
                panic!(
                    "{what} (crashed at {crashed:?}): violated:\n- {}",
                    found.join("\n- ")
                );
            }
            return crashed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} (crashed at {crashed:?}): the scenario did not end in {steps} steps");
}

/// The enumeration: runs `scenario` once without a crash to count its operator's mutating
/// requests M, then once per N in 1..=M with a crash at the N-th (`carried_out` by AWS or lost
/// before AWS saw it). Returns M.
#[allow(
    clippy::panic,
    reason = "an assertion for tests, which fail by panicking"
)]
pub async fn enumerate<S: Scenario>(
    scenario: &mut S,
    name: &str,
    carried_out: bool,
    steps: usize,
) -> u64 {
    let started = std::time::Instant::now();
    scenario.reset().await;
    run(scenario, &format!("{name}, the run without a crash"), steps).await;
    let mutations = match scenario.moto().operator_mutations() {
        Ok(m) => m,
        Err(e) => panic!("{name}: the mutation log could not be read: {e}"),
    };
    let total = mutations.len() as u64;
    let actions: Vec<&str> = mutations.iter().map(|m| m.action.as_str()).collect();
    eprintln!("{name}: its {total} changes: {}", actions.join(", "));
    assert!(total > 0, "{name}: the operator changed nothing on AWS");
    let half = if carried_out { "carried out" } else { "lost" };
    for n in 1..=total {
        scenario.reset().await;
        if let Err(e) = scenario.moto().crash_after(n, carried_out) {
            panic!("{name}: the crash could not be set: {e}");
        }
        let what = format!("{name}, crash at mutation {n} of {total} ({half})");
        let crashed = run(scenario, &what, steps).await;
        assert!(crashed.is_some(), "{what}: no crash happened");
    }
    eprintln!(
        "{name}: M = {total}; {total} crash runs ({half}) and one without, in {:.0?}",
        started.elapsed()
    );
    total
}
