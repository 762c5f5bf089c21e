//! The AMI a build produced, from Packer's machine-readable `artifact` lines.
//!
//! `packer build -machine-readable` prints `timestamp,target,type,data…`; the id of an AMI
//! artifact is `…,artifact,<n>,id,<region>:<ami>[,<region>:<ami>…]` with commas inside data
//! written as `%!(PACKER_COMMA)`. The build container copies these lines into its termination
//! message.

use jiff::{SignedDuration, Timestamp};
use opsy_api::tags;
use opsy_aws::{images::Image, managed::BuildIdentity};

/// How much earlier than its Job an AMI may seem to be created (clock skew between the
/// Kubernetes control plane and EC2).
pub const CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(5);

/// Whether `image` — looked up in this account — can be the AMI the Job `job_id`, started at
/// `job_started`, built for `identity`; else why not. Before it is tagged `active`: a build
/// that reports the base AMI, an older AMI, or another PackerBuilder's must not make it this
/// builder's.
pub fn verify(
    image: &Image,
    identity: &BuildIdentity,
    job_id: &str,
    job_started: Option<Timestamp>,
) -> Result<(), String> {
    if image.tag(tags::BROUGHT_TO_YOU_BY) == Some(tags::BROUGHT_TO_YOU_BY_VALUE) {
        if !identity.owns(image) {
            let tag = |k: &str| image.tag(k).unwrap_or("?").to_owned();
            return Err(format!(
                "{} belongs to PackerBuilder {}/{} of cluster {}, not to this one",
                image.id,
                tag(tags::CREATED_BY_NAMESPACE),
                tag(tags::CREATED_BY),
                tag(tags::CLUSTER_NAME)
            ));
        }
        if let Some(other) = image.tag(tags::JOB_ID).filter(|j| *j != job_id) {
            return Err(format!(
                "{} was built by an earlier build (job {other}), not by this one",
                image.id
            ));
        }
    }
    if let (Some(created), Some(started)) = (image.creation_date, job_started)
        && created < started - CLOCK_SKEW
    {
        return Err(format!(
            "{} was created at {created}, before the build Job started at {started}: not this build's AMI",
            image.id
        ));
    }
    Ok(())
}

/// The AMI built in `region`, from the artifact lines of `output` (the last one wins).
pub fn built_ami(output: &str, region: &str) -> Option<String> {
    let mut found = None;
    for line in output.lines() {
        let fields: Vec<&str> = line.trim().splitn(6, ',').collect();
        let [_, _, kind, _, key, value] = fields[..] else {
            continue;
        };
        if kind != "artifact" || key != "id" {
            continue;
        }
        let value = value.replace("%!(PACKER_COMMA)", ",");
        for pair in value.split(',') {
            let (pair_region, ami) = match pair.split_once(':') {
                Some((r, a)) => (Some(r), a),
                None => (None, pair),
            };
            let is_ami = ami.starts_with("ami-") && ami[4..].chars().all(|c| c.is_ascii_hexdigit());
            if is_ami && pair_region.is_none_or(|r| r == region) {
                found = Some(ami.to_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ami_of_the_region() {
        let output = "1727806000,,ui,say,==> amazon-ebs.al2023: Creating AMI\n\
                      1727806100,amazon-ebs.al2023,artifact-count,1\n\
                      1727806100,amazon-ebs.al2023,artifact,0,builder-id,mitchellh.amazonebs\n\
                      1727806100,amazon-ebs.al2023,artifact,0,id,us-west-2:ami-0d2587d8e405f376c\n\
                      1727806100,amazon-ebs.al2023,artifact,0,string,AMIs were created:\\nus-west-2: ami-0d2587d8e405f376c\n";
        assert_eq!(
            built_ami(output, "us-west-2").as_deref(),
            Some("ami-0d2587d8e405f376c")
        );
        assert_eq!(built_ami(output, "eu-west-1"), None);
    }

    #[test]
    fn multi_region_artifacts_and_noise() {
        let output = "1,amazon-ebs.x,artifact,0,id,us-east-1:ami-0aaaaaaaaaaaaaaaa%!(PACKER_COMMA)us-west-2:ami-0bbbbbbbbbbbbbbbb\n";
        assert_eq!(
            built_ami(output, "us-west-2").as_deref(),
            Some("ami-0bbbbbbbbbbbbbbbb")
        );
        assert_eq!(
            built_ami(output, "us-east-1").as_deref(),
            Some("ami-0aaaaaaaaaaaaaaaa")
        );
        for noise in [
            "",
            "garbage",
            "1,a,artifact,0,id,us-west-2:not-an-ami",
            "1,a,ui,say,artifact,0,id,us-west-2:ami-01234567",
        ] {
            assert_eq!(built_ami(noise, "us-west-2"), None, "{noise:?}");
        }
    }

    fn image(created: &str, tags: &[(&str, &str)]) -> Image {
        Image {
            id: "ami-0123456789abcdef0".into(),
            name: "built".into(),
            state: "available".into(),
            owner_id: "123456789012".into(),
            creation_date: Some(created.parse().unwrap()),
            deprecation_time: None,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            snapshots: Vec::new(),
            deregistration_protection: None,
            architecture: None,
        }
    }

    fn identity() -> BuildIdentity {
        BuildIdentity {
            cluster_name: "prod".into(),
            created_by: "pb".into(),
            namespace: "images".into(),
            packer_repo: "https://example.com/r".into(),
            packer_repo_branch: "main".into(),
        }
    }

    #[test]
    fn a_reported_ami_is_checked_before_it_is_tagged() {
        let started: Option<Timestamp> = Some("2024-11-20T10:00:00Z".parse().unwrap());
        // A fresh, untagged AMI (the normal case), also with a little clock skew.
        for created in ["2024-11-20T10:30:00Z", "2024-11-20T09:57:00Z"] {
            assert_eq!(
                verify(&image(created, &[]), &identity(), "j1", started),
                Ok(())
            );
        }
        // Older than the Job: the base AMI, or an earlier one.
        let err = verify(
            &image("2024-11-19T00:00:00Z", &[]),
            &identity(),
            "j1",
            started,
        )
        .unwrap_err();
        assert!(err.contains("before the build Job started"), "{err}");
        // Already tagged by this builder for this Job (a crash after tagging): fine.
        let ours = [
            ("brought-to-you-by", "opsy-the-ami-operator"),
            ("cluster-name", "prod"),
            ("created-by", "pb"),
            ("created-by-namespace", "images"),
            ("packer-repo", "https://example.com/r"),
            ("packer-repo-branch", "main"),
            ("job-id", "j1"),
        ];
        let again = image("2024-11-20T10:30:00Z", &ours);
        assert_eq!(verify(&again, &identity(), "j1", started), Ok(()));
        let err = verify(&again, &identity(), "j2", started).unwrap_err();
        assert!(err.contains("earlier build (job j1)"), "{err}");
        let mut theirs = ours.to_vec();
        theirs[3] = ("created-by-namespace", "other");
        let err = verify(
            &image("2024-11-20T10:30:00Z", &theirs),
            &identity(),
            "j1",
            started,
        )
        .unwrap_err();
        assert!(
            err.contains("belongs to PackerBuilder other/pb of cluster prod"),
            "{err}"
        );
    }
}
