//! Which rollout transitions one reconcile notifies, decided from what it saw: pure, so every
//! combination has a row in the table test below.

use opsy_notify::Event;

/// What one reconcile saw of the rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The target AMIs (every lane's), joined: part of each key.
    pub target: &'a str,
    /// A target this reconcile took that the last one did not have.
    pub new_target: bool,
    /// Groups this reconcile starts.
    pub starting: bool,
    /// Groups that reached the target through the health gate in this reconcile.
    pub finished: &'a [String],
    /// The rollout is halted.
    pub halted: bool,
    /// This reconcile is the one that halted it (its Degraded condition turned to it).
    pub newly_halted: bool,
    /// The object's generation (a halt is notified once per generation at most).
    pub generation: i64,
    /// Every group is on the target now, and was not at the last reconcile.
    pub became_ready: bool,
    /// The next wave waits for an approval and nothing is in flight.
    pub awaiting_approval: bool,
}

/// The transitions to notify, in the order they happened, each with the key that dedupes it
/// (`<event>:<subject>`). A halt is notified when the rollout enters it, not while it lasts:
/// groups in flight may finish after it. Awaiting approval comes last, so the next reconcile
/// finds its key in `lastNotified` and does not queue it again.
pub fn decide(seen: &Seen) -> Vec<(String, Event)> {
    let target = seen.target;
    let mut out = Vec::new();
    if seen.new_target && seen.starting {
        out.push((format!("RolloutStarted:{target}"), Event::RolloutStarted));
    }
    if !seen.finished.is_empty() {
        out.push((
            format!("NodeGroupUpdated:{target}:{}", seen.finished.join(",")),
            Event::NodeGroupUpdated,
        ));
    }
    if seen.halted {
        if seen.newly_halted {
            out.push((
                format!("RolloutHalted:{target}:{}", seen.generation),
                Event::RolloutHalted,
            ));
        }
    } else if seen.became_ready {
        out.push((
            format!("RolloutSucceeded:{target}"),
            Event::RolloutSucceeded,
        ));
    } else if seen.awaiting_approval {
        out.push((
            format!("RolloutAwaitingApproval:{target}"),
            Event::RolloutAwaitingApproval,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_notifies_what_happened_in_order() {
        let a = ["a".to_owned()];
        let ab = ["a".to_owned(), "b".to_owned()];
        let base = Seen {
            target: "ami-1",
            generation: 3,
            ..Seen::default()
        };
        let rows: Vec<(&str, Seen, Vec<&str>)> = vec![
            ("nothing happened", base.clone(), vec![]),
            (
                "a new target starts groups",
                Seen {
                    new_target: true,
                    starting: true,
                    ..base.clone()
                },
                vec!["RolloutStarted:ami-1"],
            ),
            (
                "a new target that starts nothing (a window is closed) is not a start",
                Seen {
                    new_target: true,
                    ..base.clone()
                },
                vec![],
            ),
            (
                "a later wave of the same target is not a start",
                Seen {
                    starting: true,
                    ..base.clone()
                },
                vec![],
            ),
            (
                "groups finish",
                Seen {
                    finished: &ab,
                    ..base.clone()
                },
                vec!["NodeGroupUpdated:ami-1:a,b"],
            ),
            (
                "the last groups finish: both, groups first",
                Seen {
                    finished: &ab,
                    became_ready: true,
                    ..base.clone()
                },
                vec!["NodeGroupUpdated:ami-1:a,b", "RolloutSucceeded:ami-1"],
            ),
            (
                "the rollout halts",
                Seen {
                    halted: true,
                    newly_halted: true,
                    ..base.clone()
                },
                vec!["RolloutHalted:ami-1:3"],
            ),
            (
                "a group finishes while the halt lasts: the group, not the halt again",
                Seen {
                    finished: &a,
                    halted: true,
                    ..base.clone()
                },
                vec!["NodeGroupUpdated:ami-1:a"],
            ),
            (
                "one group finishes as another halts the rollout",
                Seen {
                    finished: &a,
                    halted: true,
                    newly_halted: true,
                    ..base.clone()
                },
                vec!["NodeGroupUpdated:ami-1:a", "RolloutHalted:ami-1:3"],
            ),
            (
                "a halted rollout is neither succeeded nor awaiting approval",
                Seen {
                    halted: true,
                    became_ready: true,
                    awaiting_approval: true,
                    ..base.clone()
                },
                vec![],
            ),
            (
                "a wave finishes and the next awaits approval",
                Seen {
                    finished: &a,
                    awaiting_approval: true,
                    ..base.clone()
                },
                vec!["NodeGroupUpdated:ami-1:a", "RolloutAwaitingApproval:ami-1"],
            ),
            (
                "start, finish and success in one reconcile (groups already verified)",
                Seen {
                    new_target: true,
                    starting: true,
                    finished: &a,
                    became_ready: true,
                    ..base.clone()
                },
                vec![
                    "RolloutStarted:ami-1",
                    "NodeGroupUpdated:ami-1:a",
                    "RolloutSucceeded:ami-1",
                ],
            ),
        ];
        for (name, seen, want) in rows {
            let got: Vec<String> = decide(&seen).into_iter().map(|(key, _)| key).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn each_key_names_its_event() {
        let a = ["a".to_owned()];
        let seen = Seen {
            target: "ami-1",
            new_target: true,
            starting: true,
            finished: &a,
            halted: true,
            newly_halted: true,
            ..Seen::default()
        };
        for (key, event) in decide(&seen) {
            assert!(key.starts_with(&format!("{}:", event.as_str())), "{key}");
        }
    }
}
