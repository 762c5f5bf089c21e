#!/usr/bin/env python3
"""Lints the IAM policies of deploy/iam/ with parliament (duo-labs' IAM policy linter, with its
community auditors, every severity). Any finding fails, except the few accepted below, each for
the reason given; an accepted finding that no longer occurs fails too, so the list stays true.

(parliament's own `ignore_locations` setting cannot be used: version 1.6.4 reads its values
with jsoncfg, which treats a YAML string or list as absent, so nothing is ever ignored.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import parliament
from parliament import analyze_policy_string, enhance_finding, override_config

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "deploy" / "iam"

# (file, issue, what identifies it in the finding's location: its type, its actions, or the Sid
# of the statement it points at) -> why it is accepted.
ACCEPTED = {
    ("ami-refresh-operator.json", "PERMISSIONS_MANAGEMENT_ACTIONS", "iam:passrole"):
        "iam:PassRole lets self-managed groups' instances start with their node role: limited to "
        "node-role ARNs and iam:PassedToService = ec2.amazonaws.com",
    ("ami-refresh-operator.json", "CREDENTIALS_EXPOSURE", "sts:assumerole"):
        "sts:AssumeRole only on roles named opsy-ami-owner-access (spec.imageOwnerRoleArn): the "
        "managed AMIs' tags and soak evidence are read where the AMIs are owned; that role's "
        "own policy is deploy/iam/ami-owner-access.json",
    ("ami-refresh-operator.json", "PRIVILEGE_ESCALATION", "CreateEC2WithExistingIP"):
        "an instance refresh's launch-template check needs RunInstances (only through a launch "
        "template) and PassRole (only the node roles)",
    ("packer-builder-operator.json", "PERMISSIONS_MANAGEMENT_ACTIONS", "ec2:modifysnapshotattribute"):
        "spec.distribution.shareWith gives other accounts create-volume permission on the "
        "snapshots of the AMIs it shares: only snapshots tagged brought-to-you-by "
        "(marked at build completion or created tagged by CopyImage)",
    ("packer-job.json", "PERMISSIONS_MANAGEMENT_ACTIONS", "iam:passrole"):
        "PassRole only for the build's instance profile role packer-ssm (to EC2)",
    # parliament wants one statement to name every resource type an action requires; these two
    # are one grant split in two so that only the instance and volumes need the build's tag
    # (the image and snapshots being created carry no tags yet).
    ("packer-job.json", "RESOURCE_MISMATCH", "TheImageAndSnapshotsTheBuildCreates"):
        "the new image and snapshots of CreateImage and CreateSnapshot; their instance and "
        "volume are granted by OnlyFromTheBuildsOwnInstanceAndVolumes",
    ("packer-job.json", "RESOURCE_MISMATCH", "OnlyFromTheBuildsOwnInstanceAndVolumes"):
        "CreateImage and CreateSnapshot only from an instance or volume tagged "
        "opsy-packer-build=true (tagged at RunInstances only)",
    ("packer-job.json", "RESOURCE_MISMATCH", "TemporarySecurityGroupInAnyVpc"):
        "CreateSecurityGroup's VPC; the new group itself is granted only tagged "
        "opsy-packer-build=true at creation (TemporaryKeyPairAndSecurityGroupTaggedAsABuild)",
    ("packer-job.json", "PRIVILEGE_ESCALATION", "CreateEC2WithExistingIP"):
        "the build launches its instance with the packer-ssm profile: RunInstances only tagged "
        "opsy-packer-build=true, PassRole only packer-ssm",
}


def statement_sid(path: Path, line: int) -> str:
    """The Sid of the statement whose opening brace is on `line` (1-based), or the line."""
    for text in path.read_text().splitlines()[line - 1:line + 2]:
        if '"Sid"' in text:
            return text.split(":", 1)[1].strip().strip('",')
    return str(line)


def key(path: Path, finding) -> tuple[str, str, str]:
    location = finding.location
    what = location.get("type") or ",".join(sorted(location.get("actions", [])))
    if not what and "line" in location:
        what = statement_sid(path, int(location["line"]))
    return (path.name, finding.issue, what)


def main() -> int:
    override_config(Path(parliament.__file__).parent / "community_auditors" / "config_override.yaml")
    found: dict[tuple[str, str, str], str] = {}
    policies = sorted(POLICIES.glob("*.json"))
    if not policies:
        print(f"no policies in {POLICIES}", file=sys.stderr)
        return 1
    for path in policies:
        policy = analyze_policy_string(
            path.read_text(), str(path.relative_to(ROOT)), include_community_auditors=True,
            config=parliament.config,
        )
        for finding in policy.findings:
            finding = enhance_finding(finding)
            found[key(path, finding)] = f"{finding.severity} {finding.title}: {finding.location}"
    failures = [f"{k[0]}: {v}" for k, v in sorted(found.items()) if k not in ACCEPTED]
    failures += [f"{k[0]}: accepted {k[1]} ({k[2]}) no longer occurs; remove it from ACCEPTED"
                 for k in ACCEPTED if k not in found]
    for line in failures:
        print(f"  FAIL {line}", file=sys.stderr)
    accepted = len([k for k in found if k in ACCEPTED])
    verdict = "FAIL" if failures else "ok  "
    print(f"  {verdict} parliament on {len(policies)} policies: {accepted} accepted finding(s), "
          f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
