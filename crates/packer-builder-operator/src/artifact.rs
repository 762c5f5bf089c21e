//! The AMI a build produced, from Packer's machine-readable `artifact` lines.
//!
//! `packer build -machine-readable` prints `timestamp,target,type,data…`; the id of an AMI
//! artifact is `…,artifact,<n>,id,<region>:<ami>[,<region>:<ami>…]` with commas inside data
//! written as `%!(PACKER_COMMA)`. The build container copies these lines into its termination
//! message.

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
}
