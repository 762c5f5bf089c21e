"""EC2 additions: injectable throttling that the SDKs classify as AWS's own, DescribeImages
pagination, CreateLaunchTemplateVersion SourceVersion (EC2 API reference)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import REGION


@pytest.mark.parametrize(
    ("service", "match", "code", "call"),
    [
        ("ec2", "DescribeImages", "RequestLimitExceeded", lambda c: c.describe_images(Owners=["self"])),
        ("ec2", "DescribeLaunchTemplates", "RequestLimitExceeded", lambda c: c.describe_launch_templates()),
        ("autoscaling", "DescribeAutoScalingGroups", "Throttling", lambda c: c.describe_auto_scaling_groups()),
        ("eks", "GET /clusters", "ThrottlingException", lambda c: c.list_clusters()),
    ],
)
def test_throttling_is_retried_by_the_sdk_as_aws_throttling(
    aws: Any, service: str, match: str, code: str, call: Any
) -> None:
    aws.inject(match, code, count=1)
    once = boto3.client(service, region_name=REGION, endpoint_url=aws.url, config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(ClientError) as refused:
        call(once)
    assert refused.value.response["Error"]["Code"] == code
    # botocore's standard retry mode retries what it classifies as throttling.
    aws.inject(match, code, count=2)
    retrying = boto3.client(
        service, region_name=REGION, endpoint_url=aws.url,
        config=Config(retries={"total_max_attempts": 3, "mode": "standard"}),
    )
    call(retrying)


def test_describe_images_paginates(aws: Any) -> None:
    ids = sorted(aws.image(f"img-{n}") for n in range(5))
    pages = aws.ec2.get_paginator("describe_images").paginate(
        Owners=["self"], PaginationConfig={"PageSize": 2}
    )
    sizes = []
    seen = []
    for page in pages:
        sizes.append(len(page["Images"]))
        seen += [i["ImageId"] for i in page["Images"]]
    assert sorted(seen) == ids and sizes == [2, 2, 1]


def test_a_launch_template_version_starts_from_its_source_version(aws: Any) -> None:
    template = aws.template("t", aws.image("old"))
    new = aws.image("new")
    version = aws.ec2.create_launch_template_version(
        LaunchTemplateId=template, SourceVersion="1", LaunchTemplateData={"ImageId": new}
    )["LaunchTemplateVersion"]
    assert version["VersionNumber"] == 2
    assert version["LaunchTemplateData"] == {"ImageId": new, "InstanceType": "t3.medium"}


def test_a_registered_image_has_the_architecture_asked_for(aws: Any) -> None:
    arm = aws.ec2.register_image(Name="arm", Architecture="arm64", RootDeviceName="/dev/xvda")["ImageId"]
    x86 = aws.ec2.register_image(Name="x86", Architecture="x86_64", RootDeviceName="/dev/xvda")["ImageId"]
    found = {i["ImageId"]: i.get("Architecture") for i in aws.ec2.describe_images(ImageIds=[arm, x86])["Images"]}
    assert found == {arm: "arm64", x86: "x86_64"}


def test_other_accounts_deprecated_images_are_found_only_when_asked_for(aws: Any) -> None:
    public = aws.publish("ami-0a1302023010000aa", "amazon-eks-node-al2023-x86_64-standard-1.30-v0", "602401143452")
    ours = aws.image("ours-deprecated")
    from conftest import post

    for image in (public, ours):
        post(aws.url, "/opsy-ext/deprecated", {"region": REGION, "id": image, "at": "2020-01-01T00:00:00Z"})
    search = [{"Name": "image-id", "Values": [public, ours]}]
    found = [i["ImageId"] for i in aws.ec2.describe_images(Filters=search)["Images"]]
    assert found == [ours]
    found = aws.ec2.describe_images(Filters=search, IncludeDeprecated=True)["Images"]
    assert sorted(i["ImageId"] for i in found) == sorted([public, ours])


def test_owners_and_filters_scope_a_lookup_by_id(aws: Any) -> None:
    ours = aws.image("ours")
    public = aws.publish("ami-0a1302024090000aa", "amazon-eks-node-al2023-x86_64-standard-1.30-v1", "602401143452")
    both = [ours, public]
    found = aws.ec2.describe_images(ImageIds=both, Owners=["self"])["Images"]
    assert [i["ImageId"] for i in found] == [ours]
    found = aws.ec2.describe_images(ImageIds=both, Owners=["602401143452"])["Images"]
    assert [i["ImageId"] for i in found] == [public]
    found = aws.ec2.describe_images(ImageIds=both, Filters=[{"Name": "name", "Values": ["amazon-eks-*"]}])["Images"]
    assert [i["ImageId"] for i in found] == [public]
    assert len(aws.ec2.describe_images(ImageIds=both)["Images"]) == 2


def test_each_request_is_logged_with_its_resources_and_tags(aws: Any) -> None:
    from conftest import post  # noqa: F401 - the same endpoint helper

    image = aws.image("logged")
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "status", "Value": "active"}])
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "job-id", "Value": "j1"}])
    import json
    import urllib.request

    with urllib.request.urlopen(f"{aws.url}/opsy-ext/calls") as response:
        calls = json.loads(response.read())
    tags = [c for c in calls if c["action"] == "ec2:CreateTags"]
    arn = f"arn:aws:ec2:{REGION}::image/{image}"
    assert [c["resources"] for c in tags] == [[arn], [arn]]
    assert tags[0]["request_tags"] == {"status": "active"}
    assert tags[0]["resource_tags"][arn] == {}
    # The second request sees the tag the first one wrote.
    assert tags[1]["resource_tags"][arn] == {"status": "active"}
    assert all(c["access_key"] for c in calls)
    describe = next(c for c in calls if c["action"] == "ec2:RegisterImage")
    assert describe["resources"] == ["*"]


def test_a_copy_is_tagged_at_creation_idempotent_encrypted_and_pending_first(aws: Any) -> None:
    import boto3

    source = aws.image("golden")
    aws.ec2.create_tags(Resources=[source], Tags=[{"Key": "team", "Value": "platform"}])
    east = boto3.client("ec2", region_name="us-east-1", endpoint_url=aws.url)
    request = dict(
        SourceImageId=source,
        SourceRegion=REGION,
        Name="golden",
        ClientToken="copy-golden-1",
        Encrypted=True,
        KmsKeyId="alias/amis",
        CopyImageTags=True,
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "status", "Value": "active"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "brought-to-you-by", "Value": "x"}]},
        ],
    )
    copy = east.copy_image(**request)["ImageId"]
    # The same token again: the same copy, no second one.
    assert east.copy_image(**request)["ImageId"] == copy
    first = east.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["golden"]}])["Images"]
    assert [(i["ImageId"], i["State"]) for i in first] == [(copy, "pending")]
    image = east.describe_images(ImageIds=[copy])["Images"][0]
    assert image["State"] == "available"
    assert image["SourceImageId"] == source and image["SourceImageRegion"] == REGION
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {"team": "platform", "status": "active"}
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = east.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot["Encrypted"] and snapshot["KmsKeyId"] == "alias/amis"
    assert {t["Key"]: t["Value"] for t in snapshot["Tags"]} == {"brought-to-you-by": "x"}
    # Another token is another copy.
    assert east.copy_image(**{**request, "ClientToken": "copy-golden-2"})["ImageId"] != copy
    # For IAM: the copy acts on the new image and the source (with its tags), and tagging at
    # creation is ec2:CreateTags with ec2:CreateAction = CopyImage on each new resource type.
    import json
    import urllib.request

    with urllib.request.urlopen(f"{aws.url}/opsy-ext/calls") as response:
        calls = json.loads(response.read())
    copied = next(c for c in calls if c["action"] == "ec2:CopyImage")
    source_arn = f"arn:aws:ec2:{REGION}::image/{source}"
    assert copied["resources"] == ["arn:aws:ec2:us-east-1::image/*", source_arn]
    assert copied["resource_tags"][source_arn] == {"team": "platform"}
    assert copied["request_tags"] == {"status": "active"}
    implied = [c for c in calls if c["context"].get("ec2:CreateAction") == "CopyImage"][:2]
    assert [(c["action"], c["resources"], c["request_tags"]) for c in implied] == [
        ("ec2:CreateTags", ["arn:aws:ec2:us-east-1::image/*"], {"status": "active"}),
        ("ec2:CreateTags", ["arn:aws:ec2:us-east-1::snapshot/*"], {"brought-to-you-by": "x"}),
    ]


def test_a_protected_image_cannot_be_deregistered(aws: Any) -> None:
    image = aws.image("precious")
    assert aws.ec2.describe_images(ImageIds=[image])["Images"][0].get("DeregistrationProtection") in (None, "disabled")
    aws.ec2.enable_image_deregistration_protection(ImageId=image, WithCooldown=True)
    assert aws.ec2.describe_images(ImageIds=[image])["Images"][0]["DeregistrationProtection"] == "enabled-with-cooldown"
    with pytest.raises(ClientError) as refused:
        aws.ec2.deregister_image(ImageId=image)
    assert refused.value.response["Error"]["Code"] == "OperationNotPermitted"
    aws.ec2.disable_image_deregistration_protection(ImageId=image)
    aws.ec2.deregister_image(ImageId=image)
    assert aws.ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["precious"]}])["Images"] == []


def test_sharing_an_image_and_its_snapshot(aws: Any) -> None:
    image = aws.image("shared")
    aws.ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": "210987654321"}]})
    got = aws.ec2.describe_image_attribute(ImageId=image, Attribute="launchPermission")
    assert got["LaunchPermissions"] == [{"UserId": "210987654321"}]
    snapshot = aws.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    aws.ec2.modify_snapshot_attribute(
        SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=["210987654321"]
    )
    got = aws.ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
    assert got["CreateVolumePermissions"] == [{"UserId": "210987654321"}]


def test_aws_publishes_public_parameters_in_versions(aws: Any) -> None:
    import boto3

    from conftest import post

    name = "/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/x86_64/standard/recommended/image_id"
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=aws.url)
    with pytest.raises(ClientError) as missing:
        ssm.get_parameter(Name=name)
    assert missing.value.response["Error"]["Code"] == "ParameterNotFound"
    post(aws.url, "/opsy-ext/publish-parameter", {"region": REGION, "name": name, "value": "ami-0a131202410240000"})
    post(aws.url, "/opsy-ext/publish-parameter", {"region": REGION, "name": name, "value": "ami-0a131202411150000"})
    got = ssm.get_parameter(Name=name)["Parameter"]
    assert (got["Value"], got["Version"]) == ("ami-0a131202411150000", 2)
    import json
    import urllib.request

    with urllib.request.urlopen(f"{aws.url}/opsy-ext/calls") as response:
        calls = json.loads(response.read())
    read = [c for c in calls if c["action"] == "ssm:GetParameter"]
    assert read[-1]["resources"] == [f"arn:aws:ssm:{REGION}::parameter{name}"]


def test_deregistering_an_image_can_delete_its_snapshots_but_not_those_another_image_uses(aws: Any) -> None:
    from test_crash import get

    def snapshot_of(image: str) -> str:
        return aws.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]

    def snapshots() -> set[str]:
        return {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}

    image = aws.image("old")
    snapshot = snapshot_of(image)
    aws.ec2.create_tags(Resources=[snapshot], Tags=[{"Key": "brought-to-you-by", "Value": "x"}])
    answer = aws.ec2.deregister_image(ImageId=image, DeleteAssociatedSnapshots=True)
    assert answer["DeleteSnapshotResults"] == [{"SnapshotId": snapshot, "ReturnCode": "success"}]
    assert snapshot not in snapshots()
    logged = [m for m in get(aws.url, "/opsy-ext/mutations") if m["action"] == "ec2:DeregisterImage"]
    assert logged[-1]["deletes_snapshots"] is True and logged[-1]["snapshots"] == [snapshot]
    arn = f"arn:aws:ec2:{REGION}::snapshot/{snapshot}"
    assert logged[-1]["resource_tags"][arn] == {"brought-to-you-by": "x"}
    # The policy checks see a DeleteSnapshot of it.
    calls = get(aws.url, "/opsy-ext/calls")
    assert any(c["action"] == "ec2:DeleteSnapshot" and c["resources"] == [arn] for c in calls)

    # Without the parameter the snapshot stays (the default).
    kept = aws.image("kept")
    aws.ec2.deregister_image(ImageId=kept)
    assert snapshot_of_gone_image_kept(aws, kept, snapshots())

    # A snapshot another image uses is skipped.
    first = aws.image("first")
    shared = snapshot_of(first)
    second = aws.ec2.register_image(
        Name="second",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": shared}}],
    )["ImageId"]
    assert snapshot_of(second) == shared
    answer = aws.ec2.deregister_image(ImageId=first, DeleteAssociatedSnapshots=True)
    assert answer["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "skipped"}]
    assert shared in snapshots()


def snapshot_of_gone_image_kept(aws: Any, image: str, snapshots: set[str]) -> bool:
    """Whether the snapshot of the deregistered `image` (found by its description) remains."""
    described = aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return any(image in (s.get("Description") or "") and s["SnapshotId"] in snapshots for s in described)


def test_ec2_refuses_more_than_200_filter_values_in_one_request(aws: Any) -> None:
    ids = [f"ami-{n:017x}" for n in range(196)]
    states = ["pending", "running", "shutting-down", "stopping", "stopped"]
    with pytest.raises(ClientError) as refused:
        aws.ec2.describe_instances(
            Filters=[{"Name": "image-id", "Values": ids}, {"Name": "instance-state-name", "Values": states}]
        )
    assert refused.value.response["Error"]["Code"] == "FilterLimitExceeded"
    assert "200" in refused.value.response["Error"]["Message"]
    # 200 in all is served.
    aws.ec2.describe_instances(
        Filters=[{"Name": "image-id", "Values": ids[:195]}, {"Name": "instance-state-name", "Values": states}]
    )
    with pytest.raises(ClientError) as refused:
        aws.ec2.describe_images(Filters=[{"Name": "image-id", "Values": ids + ids[:5]}])
    assert refused.value.response["Error"]["Code"] == "FilterLimitExceeded"
    with pytest.raises(ClientError) as refused:
        aws.ec2.describe_images(Filters=[{"Name": "name", "Values": ["x" * 256]}])
    assert "255" in refused.value.response["Error"]["Message"]


def test_an_image_with_two_volumes_lists_both_and_holds_both_snapshots(aws: Any) -> None:
    volume = aws.ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=20)["VolumeId"]
    data = aws.ec2.create_snapshot(VolumeId=volume, Description="shared data set")["SnapshotId"]
    image = aws.ec2.register_image(
        Name="two-volumes",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}},
            {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": data}},
        ],
    )["ImageId"]
    mappings = aws.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"]
    assert [m["DeviceName"] for m in mappings] == ["/dev/xvda", "/dev/xvdb"]
    assert mappings[1]["Ebs"]["SnapshotId"] == data
    # In use while the image is registered (DeleteSnapshot: InvalidSnapshot.InUse).
    with pytest.raises(ClientError) as refused:
        aws.ec2.delete_snapshot(SnapshotId=data)
    assert refused.value.response["Error"]["Code"] == "InvalidSnapshot.InUse"
    answer = aws.ec2.deregister_image(ImageId=image, DeleteAssociatedSnapshots=True)
    assert [r["SnapshotId"] for r in answer["DeleteSnapshotResults"]][1] == data
    assert data not in {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def test_a_deprecation_time_in_the_past_or_over_ten_years_ahead_is_refused(aws: Any) -> None:
    from datetime import timedelta

    image = aws.image("to-deprecate")
    now = datetime.now(timezone.utc)
    for at in (now - timedelta(hours=1), now + timedelta(days=3660)):
        with pytest.raises(ClientError) as refused:
            aws.ec2.enable_image_deprecation(ImageId=image, DeprecateAt=at)
        assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    aws.ec2.enable_image_deprecation(ImageId=image, DeprecateAt=now + timedelta(minutes=1))


def test_snapshots_encrypted_with_the_aws_managed_key_cannot_be_shared(aws: Any) -> None:
    source = aws.image("to-copy")

    def copy(name: str, key: str | None) -> tuple[str, str]:
        extra = {"KmsKeyId": key} if key else {}
        image = aws.ec2.copy_image(
            Name=name, SourceImageId=source, SourceRegion=REGION, Encrypted=True, **extra
        )["ImageId"]
        aws.ec2.describe_images(ImageIds=[image])  # the copy settles
        snapshot = aws.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        return image, snapshot

    image, snapshot = copy("default-key", None)
    with pytest.raises(ClientError) as refused:
        aws.ec2.modify_snapshot_attribute(
            SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=["210987654321"]
        )
    assert refused.value.response["Error"]["Code"] == "OperationNotPermitted"
    with pytest.raises(ClientError) as refused:
        aws.ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": "210987654321"}]})
    assert refused.value.response["Error"]["Code"] == "InvalidParameter"

    # With a key of the account's own, both are shared.
    image, snapshot = copy("own-key", "alias/amis")
    aws.ec2.modify_snapshot_attribute(
        SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add", UserIds=["210987654321"]
    )
    aws.ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": "210987654321"}]})


def test_images_are_found_by_their_creation_day(aws: Any) -> None:
    image = aws.image("made-today")
    created = aws.ec2.describe_images(ImageIds=[image])["Images"][0]["CreationDate"]
    day = created[:10]
    found = aws.ec2.describe_images(Owners=["self"], Filters=[{"Name": "creation-date", "Values": [f"{day}*"]}])
    assert image in [i["ImageId"] for i in found["Images"]]
    found = aws.ec2.describe_images(Owners=["self"], Filters=[{"Name": "creation-date", "Values": ["1999-01-01*"]}])
    assert found["Images"] == []


def test_a_launch_template_naming_its_ami_by_parameter_resolves_it_when_asked(aws: Any) -> None:
    from conftest import post

    image = aws.image("by-parameter")
    post(aws.url, "/opsy-ext/publish-parameter", {"region": REGION, "name": "/platform/eks/ami", "value": image})
    template = aws.ec2.create_launch_template(
        LaunchTemplateName="by-parameter", LaunchTemplateData={"ImageId": "resolve:ssm:/platform/eks/ami"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    versions = aws.ec2.describe_launch_template_versions(LaunchTemplateId=template)["LaunchTemplateVersions"]
    assert versions[0]["LaunchTemplateData"]["ImageId"] == "resolve:ssm:/platform/eks/ami"
    versions = aws.ec2.describe_launch_template_versions(LaunchTemplateId=template, ResolveAlias=True)[
        "LaunchTemplateVersions"
    ]
    assert versions[0]["LaunchTemplateData"]["ImageId"] == image
