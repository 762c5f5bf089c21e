//! The README's first command stays true: the sandbox runs to the end and shows every step.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn the_sandbox_runs_every_step_and_exits_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_opsy-sandbox"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "AMIRefresher before any build: nothing eligible yet",
        "not tagged status=active",
        "PackerBuilder: find the base AMI, start a build",
        "tagged status=active, base-ami=ami-0a130202410240000",
        "1 Job(s) in total",
        "legacy-asg   SelfManaged Succeeded",
        "workers-b    Managed     Succeeded",
        "ingress-dev  Managed     Excluded",
        "the base AMI moved on from ami-0a130202410240000 to ami-0a130202412050000",
        "status=deprecated",
        "rollout done: 3/3 on target",
        "Summary",
        "2 builds",
        "(SoakOn): healthy on ibeify-gitops since",
        "soaking 72h; promotable",
        "prod-b       Managed     Succeeded",
        "now also carries healthy-on/123456789012/ibeify-prod=",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // The fleet gauges agree with the status they are read from.
    let gauge = |metric: &str, name: &str| -> f64 {
        let prefix = format!("{metric}{{namespace=\"default\",name=\"{name}\",");
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {metric} for {name} in:\n{stdout}"))
    };
    let mut compared = 0;
    for line in stdout.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("AMIRefresher ") else {
            continue;
        };
        let Some((name, nodes)) = rest.split_once(": status.nodesOnTarget ") else {
            continue;
        };
        let (on, of) = nodes.split_once(' ').unwrap().0.split_once('/').unwrap();
        assert_eq!(
            gauge("opsy_amirefresher_nodes_on_target", name),
            on.parse::<f64>().unwrap()
        );
        assert_eq!(
            gauge("opsy_amirefresher_nodes", name),
            of.parse::<f64>().unwrap()
        );
        compared += 1;
    }
    assert_eq!(compared, 2, "{stdout}");
    // Each group's AMI age: the creation time of the AMI it runs, as status records it.
    let mut groups = 0;
    for line in stdout.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("AMIRefresher ") else {
            continue;
        };
        let Some((who, created)) = rest.split_once(": status.nodeGroups[].imageCreated ") else {
            continue;
        };
        let (name, group) = who.split_once(" group ").unwrap();
        let seconds: f64 = created
            .rsplit_once('(')
            .and_then(|(_, s)| s.strip_suffix(" s)"))
            .and_then(|s| s.parse().ok())
            .unwrap();
        let prefix = format!(
            "opsy_nodegroup_ami_created_timestamp_seconds{{namespace=\"default\",name=\"{name}\","
        );
        let exported: f64 = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix) && l.contains(&format!("group=\"{group}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no AMI age of {name}/{group} in:\n{stdout}"));
        assert_eq!(exported, seconds, "{name}/{group}");
        groups += 1;
    }
    assert!(groups >= 4, "{stdout}");
}
