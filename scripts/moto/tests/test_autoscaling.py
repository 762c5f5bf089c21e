"""Auto Scaling instance refreshes as the Auto Scaling API reference documents them
(StartInstanceRefresh with Preferences and DesiredConfiguration, DescribeInstanceRefreshes,
CancelInstanceRefresh), through boto3 over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from conftest import CLUSTER


def asg(aws: Any, name: str, image: str, size: int = 4, version: str = "1", tags: dict[str, str] | None = None) -> str:
    template = aws.template(f"{name}-lt", image)
    aws.asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template, "Version": version},
        MinSize=0,
        MaxSize=size,
        DesiredCapacity=size,
        AvailabilityZones=["us-west-2a"],
        Tags=[
            {"Key": f"kubernetes.io/cluster/{CLUSTER}", "Value": "owned", "PropagateAtLaunch": True},
            {"Key": "opsy.test/polls", "Value": "0", "PropagateAtLaunch": False},
        ]
        + [{"Key": k, "Value": v, "PropagateAtLaunch": False} for k, v in (tags or {}).items()],
    )
    return template


def start(aws: Any, name: str, template: str, version: int | str | None, **preferences: Any) -> str:
    request: dict[str, Any] = {
        "AutoScalingGroupName": name,
        "Preferences": {"MinHealthyPercentage": 50, **preferences},
    }
    if version is not None:
        request["DesiredConfiguration"] = {
            "LaunchTemplate": {"LaunchTemplateId": template, "Version": str(version)}
        }
    return aws.asg.start_instance_refresh(**request)["InstanceRefreshId"]


def poll(aws: Any, name: str, refresh_id: str) -> dict[str, Any]:
    return aws.asg.describe_instance_refreshes(AutoScalingGroupName=name, InstanceRefreshIds=[refresh_id])[
        "InstanceRefreshes"
    ][0]


def follow(aws: Any, name: str, refresh_id: str, limit: int = 20) -> tuple[dict[str, Any], list[str]]:
    statuses = []
    for _ in range(limit):
        refresh = poll(aws, name, refresh_id)
        statuses.append(refresh["Status"])
        if refresh["Status"] not in ("Pending", "InProgress", "Cancelling", "RollbackInProgress"):
            return refresh, statuses
    raise AssertionError(f"refresh still running: {statuses}")


def group_version(aws: Any, name: str) -> str:
    return aws.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0][
        "LaunchTemplate"
    ]["Version"]


def test_a_refresh_replaces_instances_in_batches_and_changes_the_group_when_it_succeeds(aws: Any) -> None:
    old, new = aws.image("old"), aws.image("new")
    template = asg(aws, "g", old)
    version = aws.new_version(template, new)
    assert {(i["version"], i["image"]) for i in aws.instances("g")} == {("1", old)}

    refresh_id = start(aws, "g", template, version, MinHealthyPercentage=50)
    seen = []
    for _ in range(10):
        refresh = poll(aws, "g", refresh_id)
        instances = aws.instances("g")
        seen.append((refresh["Status"], sum(i["image"] == new for i in instances)))
        assert len(instances) == 4
        if refresh["Status"] == "InProgress":
            assert group_version(aws, "g") == "1", "the group changes only when the refresh succeeds"
        if refresh["Status"] == "Successful":
            break
    # Pending, then two batches of two (half the group stays in service), then done.
    assert seen == [("InProgress", 0), ("InProgress", 2), ("InProgress", 4), ("Successful", 4)], seen
    assert refresh["PercentageComplete"] == 100
    assert refresh["DesiredConfiguration"]["LaunchTemplate"]["Version"] == str(version)
    assert refresh["Preferences"]["MinHealthyPercentage"] == 50
    assert group_version(aws, "g") == str(version)
    assert {(i["version"], i["image"]) for i in aws.instances("g")} == {(str(version), new)}


def test_a_second_refresh_is_refused_while_one_runs(aws: Any) -> None:
    template = asg(aws, "g", aws.image("old"))
    version = aws.new_version(template, aws.image("new"))
    refresh_id = start(aws, "g", template, version)
    with pytest.raises(ClientError) as refused:
        start(aws, "g", template, version)
    assert refused.value.response["Error"]["Code"] == "InstanceRefreshInProgress"
    follow(aws, "g", refresh_id)
    start(aws, "g", template, version)


def test_a_failed_refresh_without_rollback_leaves_the_group_and_the_replaced_instances(aws: Any) -> None:
    old, new = aws.image("old"), aws.image("new")
    template = asg(aws, "g", old, tags={"opsy.test/outcome": "Failed"})
    version = aws.new_version(template, new)
    refresh, statuses = follow(aws, "g", start(aws, "g", template, version))
    assert statuses[-1] == "Failed" and refresh["StatusReason"]
    assert group_version(aws, "g") == "1"
    images = sorted(i["image"] for i in aws.instances("g"))
    assert images == sorted([old, old, new, new]), "one batch was replaced before the failure"


def test_auto_rollback_restores_the_instances_the_refresh_replaced(aws: Any) -> None:
    old, new = aws.image("old"), aws.image("new")
    template = asg(aws, "g", old)
    version = aws.new_version(template, new)
    aws.fail("g")
    refresh, statuses = follow(aws, "g", start(aws, "g", template, version, AutoRollback=True))
    assert statuses[-2:] == ["RollbackInProgress", "RollbackSuccessful"], statuses
    assert refresh["RollbackDetails"]["RollbackReason"]
    assert group_version(aws, "g") == "1"
    assert {(i["version"], i["image"]) for i in aws.instances("g")} == {("1", old)}


@pytest.mark.parametrize(("group_version_", "desired"), [("1", None), ("1", "$Latest"), ("$Latest", 2), ("1", "$Default")])
def test_auto_rollback_needs_a_numbered_desired_configuration(aws: Any, group_version_: str, desired: Any) -> None:
    template = asg(aws, "g", aws.image("old"), version=group_version_)
    aws.new_version(template, aws.image("new"))
    with pytest.raises(ClientError) as refused:
        start(aws, "g", template, desired, AutoRollback=True)
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    assert "AutoRollback" in refused.value.response["Error"]["Message"]


def test_skip_matching_leaves_instances_already_on_the_desired_configuration(aws: Any) -> None:
    old = aws.image("old")
    template = asg(aws, "g", old)
    before = {i["id"] for i in aws.instances("g")}
    refresh, _ = follow(aws, "g", start(aws, "g", template, 1, SkipMatching=True))
    assert refresh["Status"] == "Successful"
    assert {i["id"] for i in aws.instances("g")} == before
    refresh, _ = follow(aws, "g", start(aws, "g", template, 1, SkipMatching=False))
    assert not before & {i["id"] for i in aws.instances("g")}


def test_without_a_desired_configuration_the_group_keeps_its_template(aws: Any) -> None:
    old = aws.image("old")
    template = asg(aws, "g", old)
    aws.new_version(template, aws.image("new"))
    refresh, _ = follow(aws, "g", start(aws, "g", template, None))
    assert refresh["Status"] == "Successful"
    assert group_version(aws, "g") == "1"
    assert {(i["version"], i["image"]) for i in aws.instances("g")} == {("1", old)}


def test_cancel_stops_a_refresh(aws: Any) -> None:
    template = asg(aws, "g", aws.image("old"))
    version = aws.new_version(template, aws.image("new"))
    refresh_id = start(aws, "g", template, version)
    assert aws.asg.cancel_instance_refresh(AutoScalingGroupName="g")["InstanceRefreshId"] == refresh_id
    refresh, statuses = follow(aws, "g", refresh_id)
    assert statuses == ["Cancelled"] and group_version(aws, "g") == "1"
    with pytest.raises(ClientError) as refused:
        aws.asg.cancel_instance_refresh(AutoScalingGroupName="g")
    assert refused.value.response["Error"]["Code"] == "ActiveInstanceRefreshNotFound"
