"""EKS as the EKS API reference documents it (UpdateNodegroupConfig, UpdateNodegroupVersion,
DescribeUpdate, ListUpdates, DescribeNodegroup), through boto3 over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from conftest import CLUSTER


def group(aws: Any, name: str, image: str, tags: dict[str, str] | None = None) -> str:
    template = aws.template(f"{name}-lt", image)
    aws.eks.create_nodegroup(
        clusterName=CLUSTER,
        nodegroupName=name,
        nodeRole="arn:aws:iam::123456789012:role/node",
        subnets=["subnet-0a1b2c3d"],
        launchTemplate={"id": template, "version": "1"},
        scalingConfig={"minSize": 1, "maxSize": 4, "desiredSize": 3},
        tags=tags or {},
    )
    return template


def describe(aws: Any, name: str) -> dict[str, Any]:
    return aws.eks.describe_nodegroup(clusterName=CLUSTER, nodegroupName=name)["nodegroup"]


def follow(aws: Any, name: str, update_id: str, limit: int = 10) -> dict[str, Any]:
    for _ in range(limit):
        update = aws.eks.describe_update(name=CLUSTER, nodegroupName=name, updateId=update_id)["update"]
        if update["status"] != "InProgress":
            return update
    raise AssertionError(f"update {update_id} still in progress after {limit} polls")


def node_images(aws: Any, name: str) -> set[str]:
    asg = describe(aws, name)["resources"]["autoScalingGroups"][0]["name"]
    return {i["image"] for i in aws.instances(asg)}


@pytest.fixture()
def cluster(aws: Any) -> Any:
    aws.cluster()
    return aws


def test_a_config_update_is_asynchronous_and_blocks_a_version_update(cluster: Any) -> None:
    aws = cluster
    old, new = aws.image("old"), aws.image("new")
    template = group(aws, "ng", old)
    version = aws.new_version(template, new)

    config = aws.eks.update_nodegroup_config(
        clusterName=CLUSTER, nodegroupName="ng", updateConfig={"maxUnavailable": 2}
    )["update"]
    assert config["status"] == "InProgress" and config["type"] == "ConfigUpdate"
    assert {"type": "MaxUnavailable", "value": "2"} in config["params"]
    # The change applies when the update ends, not before.
    assert describe(aws, "ng").get("updateConfig", {}).get("maxUnavailable") != 2
    assert describe(aws, "ng")["status"] == "UPDATING"

    with pytest.raises(ClientError) as refused:
        aws.eks.update_nodegroup_version(
            clusterName=CLUSTER, nodegroupName="ng", launchTemplate={"id": template, "version": str(version)}
        )
    assert refused.value.response["Error"]["Code"] == "ResourceInUseException"
    with pytest.raises(ClientError) as refused:
        aws.eks.update_nodegroup_config(
            clusterName=CLUSTER, nodegroupName="ng", updateConfig={"maxUnavailable": 3}
        )
    assert refused.value.response["Error"]["Code"] == "ResourceInUseException"

    assert follow(aws, "ng", config["id"])["status"] == "Successful"
    described = describe(aws, "ng")
    assert described["status"] == "ACTIVE"
    assert described["updateConfig"]["maxUnavailable"] == 2

    started = aws.eks.update_nodegroup_version(
        clusterName=CLUSTER, nodegroupName="ng", launchTemplate={"id": template, "version": str(version)}, force=True
    )["update"]
    assert {"type": "Force", "value": "true"} in started["params"]
    assert {"type": "LaunchTemplateVersion", "value": str(version)} in started["params"]
    assert follow(aws, "ng", started["id"])["status"] == "Successful"


def test_a_version_update_changes_version_and_nodes_only_when_it_succeeds(cluster: Any) -> None:
    aws = cluster
    old, new = aws.image("old"), aws.image("new")
    template = group(aws, "ng", old)
    version = aws.new_version(template, new)
    assert node_images(aws, "ng") == {old}

    update = aws.eks.update_nodegroup_version(
        clusterName=CLUSTER, nodegroupName="ng", launchTemplate={"id": template, "version": str(version)}
    )["update"]
    assert update["status"] == "InProgress"
    assert describe(aws, "ng")["launchTemplate"]["version"] == "1"
    assert node_images(aws, "ng") == {old}, "nodes change only when the update succeeds"

    assert follow(aws, "ng", update["id"])["status"] == "Successful"
    assert describe(aws, "ng")["launchTemplate"]["version"] == str(version)
    assert node_images(aws, "ng") == {new}
    asg = describe(aws, "ng")["resources"]["autoScalingGroups"][0]["name"]
    assert {i["version"] for i in aws.instances(asg)} == {str(version)}
    assert len(aws.instances(asg)) == 3


@pytest.mark.parametrize(
    ("code", "error", "status", "issue"),
    [
        ("PodEvictionFailure", "PodEvictionFailure", "ACTIVE", None),
        ("NodeCreationFailure", "NodeCreationFailure", "DEGRADED", "NodeCreationFailure"),
        ("AsgInstanceLaunchFailures", "NodeCreationFailure", "DEGRADED", "AsgInstanceLaunchFailures"),
    ],
)
def test_a_failed_update_reports_its_error_and_changes_nothing(
    cluster: Any, code: str, error: str, status: str, issue: str | None
) -> None:
    aws = cluster
    old, new = aws.image("old"), aws.image("new")
    template = group(aws, "ng", old)
    version = aws.new_version(template, new)
    aws.fail("ng", code)
    # A config update replaces no node: it is not what fails.
    config = aws.eks.update_nodegroup_config(
        clusterName=CLUSTER, nodegroupName="ng", updateConfig={"maxUnavailable": 2}
    )["update"]
    assert follow(aws, "ng", config["id"])["status"] == "Successful"

    update = aws.eks.update_nodegroup_version(
        clusterName=CLUSTER, nodegroupName="ng", launchTemplate={"id": template, "version": str(version)}
    )["update"]
    ended = follow(aws, "ng", update["id"])
    assert ended["status"] == "Failed"
    assert [e["errorCode"] for e in ended["errors"]] == [error]
    assert ended["errors"][0]["errorMessage"]
    described = describe(aws, "ng")
    assert described["status"] == status
    assert [i["code"] for i in described["health"]["issues"]] == ([issue] if issue else [])
    assert described["launchTemplate"]["version"] == "1"
    assert node_images(aws, "ng") == {old}


def test_the_outcome_tag_fails_updates_too(cluster: Any) -> None:
    aws = cluster
    old, new = aws.image("old"), aws.image("new")
    template = group(aws, "ng", old, tags={"opsy.test/outcome": "PodEvictionFailure", "opsy.test/polls": "0"})
    version = aws.new_version(template, new)
    update = aws.eks.update_nodegroup_version(
        clusterName=CLUSTER, nodegroupName="ng", launchTemplate={"id": template, "version": str(version)}
    )["update"]
    ended = aws.eks.describe_update(name=CLUSTER, nodegroupName="ng", updateId=update["id"])["update"]
    assert ended["status"] == "Failed"
    assert ended["errors"][0]["errorCode"] == "PodEvictionFailure"


def test_list_updates_paginates(cluster: Any) -> None:
    aws = cluster
    group(aws, "ng", aws.image("old"), tags={"opsy.test/polls": "0"})
    ids = []
    for size in (2, 3, 4, 5, 6):
        update = aws.eks.update_nodegroup_config(
            clusterName=CLUSTER, nodegroupName="ng", scalingConfig={"desiredSize": size % 4 + 1}
        )["update"]
        follow(aws, "ng", update["id"])
        ids.append(update["id"])
    first = aws.eks.list_updates(name=CLUSTER, nodegroupName="ng", maxResults=2)
    assert first["updateIds"] == ids[:2] and first["nextToken"]
    second = aws.eks.list_updates(name=CLUSTER, nodegroupName="ng", maxResults=2, nextToken=first["nextToken"])
    third = aws.eks.list_updates(name=CLUSTER, nodegroupName="ng", maxResults=2, nextToken=second["nextToken"])
    assert second["updateIds"] + third["updateIds"] == ids[2:]
    assert "nextToken" not in third
    paginator = aws.eks.get_paginator("list_updates")
    pages = paginator.paginate(name=CLUSTER, nodegroupName="ng", PaginationConfig={"PageSize": 2})
    assert [i for p in pages for i in p["updateIds"]] == ids


def test_a_config_update_with_no_change_is_refused(cluster: Any) -> None:
    aws = cluster
    group(aws, "ng", aws.image("old"))
    with pytest.raises(ClientError) as refused:
        aws.eks.update_nodegroup_config(clusterName=CLUSTER, nodegroupName="ng")
    assert refused.value.response["Error"]["Code"] == "InvalidParameterException"


def test_managed_node_groups_run_in_auto_scaling_groups_tagged_by_eks(cluster: Any) -> None:
    aws = cluster
    group(aws, "ng", aws.image("old"))
    asg = describe(aws, "ng")["resources"]["autoScalingGroups"][0]["name"]
    described = aws.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])["AutoScalingGroups"][0]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["eks:nodegroup-name"] == "ng"
    assert tags["eks:cluster-name"] == CLUSTER
    assert tags[f"kubernetes.io/cluster/{CLUSTER}"] == "owned"


def test_a_new_desired_size_resizes_the_auto_scaling_group_when_the_update_succeeds(cluster: Any) -> None:
    aws = cluster
    group(aws, "ng", aws.image("img"))
    asg = describe(aws, "ng")["resources"]["autoScalingGroups"][0]["name"]
    update = aws.eks.update_nodegroup_config(
        clusterName=CLUSTER, nodegroupName="ng", scalingConfig={"desiredSize": 4}
    )["update"]
    assert len(aws.instances(asg)) == 3, "only when the update succeeds"
    assert follow(aws, "ng", update["id"])["status"] == "Successful"
    assert describe(aws, "ng")["scalingConfig"]["desiredSize"] == 4
    assert len(aws.instances(asg)) == 4


def test_a_control_plane_upgrade_is_asynchronous_and_one_minor_at_a_time(aws: Any) -> None:
    aws.eks.create_cluster(
        name="upgraded",
        version="1.30",
        roleArn="arn:aws:iam::123456789012:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d"]},
    )
    with pytest.raises(ClientError) as refused:
        aws.eks.update_cluster_version(name="upgraded", version="1.32")
    assert refused.value.response["Error"]["Code"] == "InvalidParameterException"
    update = aws.eks.update_cluster_version(name="upgraded", version="1.31")["update"]
    assert update["type"] == "VersionUpdate" and update["status"] == "InProgress"
    assert {"type": "Version", "value": "1.31"} in update["params"]
    cluster = aws.eks.describe_cluster(name="upgraded")["cluster"]
    assert (cluster["version"], cluster["status"]) == ("1.30", "UPDATING")
    with pytest.raises(ClientError) as busy:
        aws.eks.update_cluster_version(name="upgraded", version="1.31")
    assert busy.value.response["Error"]["Code"] == "ResourceInUseException"
    for _ in range(10):
        update = aws.eks.describe_update(name="upgraded", updateId=update["id"])["update"]
        if update["status"] != "InProgress":
            break
    assert update["status"] == "Successful"
    cluster = aws.eks.describe_cluster(name="upgraded")["cluster"]
    assert (cluster["version"], cluster["status"]) == ("1.31", "ACTIVE")


def test_the_updates_of_a_deleted_node_group_are_not_found(cluster: Any) -> None:
    # DescribeUpdate, "Errors": ResourceNotFoundException when the node group is gone.
    aws = cluster
    old, new = aws.image("old"), aws.image("new")
    template = group(aws, "ng", old)
    version = aws.new_version(template, new)
    update = aws.eks.update_nodegroup_version(
        clusterName=CLUSTER, nodegroupName="ng", launchTemplate={"id": template, "version": str(version)}
    )["update"]
    aws.eks.delete_nodegroup(clusterName=CLUSTER, nodegroupName="ng")
    with pytest.raises(ClientError) as gone:
        aws.eks.describe_update(name=CLUSTER, nodegroupName="ng", updateId=update["id"])
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
