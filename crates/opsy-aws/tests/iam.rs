//! Every AWS operation this crate can call is allowed by one of the operators' IAM policies in
//! `deploy/iam/` (the operator tests check, call by call, that each operator's own policy
//! covers what it called).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// `(service, operation)` of every `self.call("<service>", OP, …)` whose `const OP` names the
/// operation, in this crate's sources.
fn operations() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        // Each function declares its OP, then calls with it: pair them in order.
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("const OP: &str = \"") {
                current = rest.split('"').next().map(str::to_owned);
            }
            let service = line
                .split("self.call(\"")
                .nth(1)
                .and_then(|rest| rest.split_once("\", OP"))
                .map(|(service, _)| service.to_owned());
            if let (Some(service), Some(operation)) = (service, current.as_ref()) {
                found.push((service, operation.clone()));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_operation_of_the_aws_layer_is_in_an_operator_policy() {
    let operations = operations();
    // The AWS layer's calls: a floor that catches the scan silently finding nothing.
    assert!(operations.len() >= 15, "found only {operations:?}");
    let pairs = operations.iter().map(|(s, o)| (s.as_str(), o.as_str()));
    let builder =
        opsy_testkit::iam::missing_from_policy("packer-builder-operator", pairs.clone()).unwrap();
    let refresher = opsy_testkit::iam::missing_from_policy("ami-refresh-operator", pairs).unwrap();
    let in_neither: Vec<_> = builder.iter().filter(|a| refresher.contains(a)).collect();
    assert!(
        in_neither.is_empty(),
        "allowed by no policy in deploy/iam/: {in_neither:?}"
    );
}

#[test]
fn the_builder_may_write_exactly_the_contract_tags() {
    use opsy_aws::managed::{BuildFacts, BuildIdentity};
    let identity = BuildIdentity {
        cluster_name: "c".into(),
        created_by: "pb".into(),
        namespace: "ns".into(),
        packer_repo: "https://example.com/r".into(),
        packer_repo_branch: "main".into(),
    };
    let written: std::collections::BTreeSet<String> = identity
        .tags(&BuildFacts {
            created: "2024-11-19T00:00:00Z".parse().unwrap(),
            base_ami: Some("ami-base".into()),
            build_id: "b".into(),
            job_id: "j".into(),
            kubernetes_version: Some("1.31".into()),
            architecture: Some("arm64".into()),
            variant: Some("nvidia".into()),
            os_family: Some("al2023".into()),
        })
        .into_keys()
        // A copy in another region also says where it came from; a quarantine spread from a
        // copy to its source writes the reason.
        .chain(
            [
                opsy_api::tags::SOURCE_AMI,
                opsy_api::tags::SOURCE_REGION,
                opsy_api::tags::QUARANTINE_REASON,
            ]
            .map(str::to_owned),
        )
        .collect();
    let path = opsy_testkit::iam::policy_path("packer-builder-operator");
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let allowed: std::collections::BTreeSet<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Action"] == serde_json::json!(["ec2:CreateTags"]))
        .flat_map(|s| {
            s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        allowed, written,
        "the policy's aws:TagKeys and the tag contract differ"
    );
}

/// The build role (`deploy/iam/packer-job.json`) runs code its author chose. What a Packer
/// `amazon-ebs` build of the sample project asks of IAM is allowed; what a hostile build would
/// use it for is not: snapshotting or imaging what it did not launch and sharing it out,
/// writing the contract's tags on its own AMI (forging `brought-to-you-by`, `status=active`,
/// a far-future `create-timestamp`, `healthy-on/…`), or tagging, deregistering or changing the
/// operator's managed AMIs and their snapshots.
mod build_role {
    use std::collections::BTreeMap;

    use opsy_testkit::iam::{Call, refuses};

    const POLICY: &str = "packer-job";
    const IMAGE: &str = "arn:aws:ec2:us-west-2::image/ami-0build";
    const SNAPSHOT: &str = "arn:aws:ec2:us-west-2::snapshot/snap-0build";
    const INSTANCE: &str = "arn:aws:ec2:us-west-2:111122223333:instance/i-0build";
    const VOLUME: &str = "arn:aws:ec2:us-west-2:111122223333:volume/vol-0build";
    const FOREIGN_VOLUME: &str = "arn:aws:ec2:us-west-2:111122223333:volume/vol-0prod";
    const VPC: &str = "arn:aws:ec2:us-west-2:111122223333:vpc/vpc-0main";
    const GROUP: &str = "arn:aws:ec2:us-west-2:111122223333:security-group/sg-0build";
    const FOREIGN_GROUP: &str = "arn:aws:ec2:us-west-2:111122223333:security-group/sg-0prod";
    const KEY_PAIR: &str = "arn:aws:ec2:us-west-2:111122223333:key-pair/key-0build";
    const MANAGED: &str = "arn:aws:ec2:us-west-2::image/ami-0managed";
    const MANAGED_SNAPSHOT: &str = "arn:aws:ec2:us-west-2::snapshot/snap-0managed";

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// `action` on `resources`, each carrying the tags given for it (none: untagged).
    fn call(action: &str, resources: &[(&str, &[(&str, &str)])]) -> Call {
        Call {
            access_key: "AKIABUILD".into(),
            role: None,
            action: action.into(),
            resources: resources.iter().map(|(r, _)| (*r).to_owned()).collect(),
            request_tags: BTreeMap::new(),
            resource_tags: resources
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(r, t)| ((*r).to_owned(), tags(t)))
                .collect(),
            context: BTreeMap::new(),
            principal_tags: BTreeMap::new(),
        }
    }

    fn tagging(resource: &str, on_it: &[(&str, &str)], writes: &[(&str, &str)]) -> Call {
        Call {
            request_tags: tags(writes),
            ..call("ec2:CreateTags", &[(resource, on_it)])
        }
    }

    const BUILD: &[(&str, &str)] = &[("opsy-packer-build", "true")];
    const MANAGED_TAGS: &[(&str, &str)] = &[
        ("brought-to-you-by", "opsy-the-ami-operator"),
        ("status", "active"),
        // A build that tagged a managed AMI as its own still may not touch it.
        ("opsy-packer-build", "true"),
    ];

    #[test]
    fn what_the_sample_build_asks_is_allowed() {
        let launch = Call {
            request_tags: tags(&[("Name", "packer-x"), ("opsy-packer-build", "true")]),
            ..call(
                "ec2:RunInstances",
                &[
                    (INSTANCE, &[]),
                    (VOLUME, &[]),
                    ("arn:aws:ec2:us-west-2::image/ami-0base", &[]),
                ],
            )
        };
        let tag_on_launch = Call {
            context: BTreeMap::from([("ec2:CreateAction".to_owned(), "RunInstances".to_owned())]),
            ..tagging(INSTANCE, &[], &[("opsy-packer-build", "true")])
        };
        let allowed = [
            launch,
            tag_on_launch,
            call(
                "ec2:CreateImage",
                &[(INSTANCE, BUILD), (IMAGE, &[]), (SNAPSHOT, &[])],
            ),
            call("ec2:CreateSnapshot", &[(VOLUME, BUILD), (SNAPSHOT, &[])]),
            tagging(
                IMAGE,
                &[],
                &[
                    ("opsy-build-base-ami", "ami-0base"),
                    ("opsy-packer-build", "true"),
                ],
            ),
            tagging(SNAPSHOT, &[], &[("opsy-packer-build", "true")]),
            call("ec2:ModifyImageAttribute", &[(IMAGE, BUILD)]),
            call("ec2:StopInstances", &[(INSTANCE, BUILD)]),
            call("ec2:TerminateInstances", &[(INSTANCE, BUILD)]),
            // force_deregister of an earlier build's AMI of the same name, on error cleanup.
            call("ec2:DeregisterImage", &[(IMAGE, BUILD)]),
            call("ec2:DeleteSnapshot", &[(SNAPSHOT, BUILD)]),
            // The temporary key pair and security group, tagged with run_tags at creation.
            Call {
                request_tags: tags(BUILD),
                ..call("ec2:CreateSecurityGroup", &[(VPC, &[]), (GROUP, &[])])
            },
            Call {
                context: BTreeMap::from([(
                    "ec2:CreateAction".to_owned(),
                    "CreateSecurityGroup".to_owned(),
                )]),
                ..tagging(GROUP, &[], BUILD)
            },
            Call {
                request_tags: tags(BUILD),
                ..call("ec2:CreateKeyPair", &[(KEY_PAIR, &[])])
            },
            Call {
                context: BTreeMap::from([(
                    "ec2:CreateAction".to_owned(),
                    "CreateKeyPair".to_owned(),
                )]),
                ..tagging(KEY_PAIR, &[], BUILD)
            },
            call("ec2:AuthorizeSecurityGroupIngress", &[(GROUP, BUILD)]),
            call("ec2:DeleteSecurityGroup", &[(GROUP, BUILD)]),
            call("ec2:DeleteKeyPair", &[(KEY_PAIR, BUILD)]),
        ];
        for c in &allowed {
            assert_eq!(refuses(POLICY, c).unwrap(), None, "{c:?}");
        }
    }

    #[test]
    fn a_build_cannot_snapshot_what_it_did_not_launch_nor_share_a_snapshot() {
        // The exfiltration sequence: snapshot a production volume, tag it as a build's, share it.
        let snapshot = call(
            "ec2:CreateSnapshot",
            &[(FOREIGN_VOLUME, &[("Name", "prod-db")]), (SNAPSHOT, &[])],
        );
        assert!(refuses(POLICY, &snapshot).unwrap().is_some());
        let image = call(
            "ec2:CreateImage",
            &[
                (
                    "arn:aws:ec2:us-west-2:111122223333:instance/i-0prod",
                    &[("Name", "prod")],
                ),
                (IMAGE, &[]),
            ],
        );
        assert!(refuses(POLICY, &image).unwrap().is_some());
        // A volume cannot be made to look like the build's after its launch.
        let retag = tagging(FOREIGN_VOLUME, &[], &[("opsy-packer-build", "true")]);
        assert!(refuses(POLICY, &retag).unwrap().is_some());
        // No snapshot is shared by the build, not even its own; nor are AMIs copied in.
        for action in ["ec2:ModifySnapshotAttribute", "ec2:CopyImage"] {
            let c = call(action, &[(SNAPSHOT, BUILD)]);
            assert!(refuses(POLICY, &c).unwrap().is_some(), "{action}");
        }
    }

    #[test]
    fn a_build_cannot_forge_the_contract_on_its_own_ami() {
        let mut keys: Vec<&str> = opsy_api::tags::CONTRACT_KEYS.to_vec();
        keys.push("healthy-on/prod");
        for key in keys {
            let forged = tagging(IMAGE, BUILD, &[("opsy-packer-build", "true"), (key, "x")]);
            assert!(
                refuses(POLICY, &forged).unwrap().is_some(),
                "the build may write {key}"
            );
        }
    }

    #[test]
    fn a_build_opens_and_removes_only_its_own_security_group_and_key_pair() {
        let denied = [
            // Open production's group to the world, or delete it.
            call(
                "ec2:AuthorizeSecurityGroupIngress",
                &[(FOREIGN_GROUP, &[("Name", "prod-db")])],
            ),
            call("ec2:DeleteSecurityGroup", &[(FOREIGN_GROUP, &[])]),
            call("ec2:DeleteKeyPair", &[(KEY_PAIR, &[])]),
            // Make it look like the build's: only at creation.
            tagging(FOREIGN_GROUP, &[], BUILD),
            // A group or key pair not tagged as the build's at creation.
            call("ec2:CreateSecurityGroup", &[(VPC, &[]), (GROUP, &[])]),
            call("ec2:CreateKeyPair", &[(KEY_PAIR, &[])]),
        ];
        for c in &denied {
            assert!(refuses(POLICY, c).unwrap().is_some(), "allowed: {c:?}");
        }
    }

    #[test]
    fn a_build_cannot_touch_a_managed_ami_or_its_snapshots() {
        let touching = [
            tagging(MANAGED, MANAGED_TAGS, &[("Name", "mine")]),
            tagging(MANAGED_SNAPSHOT, MANAGED_TAGS, &[("Name", "mine")]),
            call("ec2:DeregisterImage", &[(MANAGED, MANAGED_TAGS)]),
            call("ec2:DeleteSnapshot", &[(MANAGED_SNAPSHOT, MANAGED_TAGS)]),
            call("ec2:ModifyImageAttribute", &[(MANAGED, MANAGED_TAGS)]),
        ];
        for c in &touching {
            assert!(refuses(POLICY, c).unwrap().is_some(), "{c:?}");
        }
    }
}

/// The builder operator writes the contract's tags only on the AMI a build registered (tagged
/// `opsy-packer-build=true` by the build), on AMIs already managed, and on copies as they are
/// made: never on an arbitrary AMI of the account, which would make it managed — deletable by
/// retention and trusted by every AMIRefresher.
#[test]
fn the_builder_writes_the_contract_only_on_builds_managed_amis_and_copies() {
    use std::collections::BTreeMap;

    use opsy_testkit::iam::{Call, refuses};

    let image = "arn:aws:ec2:us-west-2::image/ami-0x";
    let tagging = |on_it: &[(&str, &str)], context: &[(&str, &str)]| Call {
        access_key: "AKIAOPERATOR".into(),
        role: None,
        action: "ec2:CreateTags".into(),
        resources: vec![image.into()],
        request_tags: BTreeMap::from([
            (
                "brought-to-you-by".to_owned(),
                "opsy-the-ami-operator".to_owned(),
            ),
            ("status".to_owned(), "active".to_owned()),
        ]),
        resource_tags: BTreeMap::from([(
            image.to_owned(),
            on_it
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )]),
        context: context
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        principal_tags: BTreeMap::new(),
    };
    let policy = "packer-builder-operator";
    let build = tagging(&[("opsy-packer-build", "true")], &[]);
    let managed = tagging(&[("brought-to-you-by", "opsy-the-ami-operator")], &[]);
    let copy = tagging(&[], &[("ec2:CreateAction", "CopyImage")]);
    for allowed in [build, managed, copy] {
        assert_eq!(refuses(policy, &allowed).unwrap(), None, "{allowed:?}");
    }
    let arbitrary = tagging(&[("Name", "someone-elses")], &[]);
    assert!(refuses(policy, &arbitrary).unwrap().is_some());
}
