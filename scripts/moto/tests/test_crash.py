"""The crash control (POST /opsy-ext/crash-after) and the mutation log (GET /opsy-ext/mutations)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from conftest import post


def get(endpoint: str, path: str) -> Any:
    with urllib.request.urlopen(f"{endpoint}{path}") as response:
        return json.loads(response.read())


def delete(endpoint: str, path: str) -> Any:
    request = urllib.request.Request(f"{endpoint}{path}", method="DELETE")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Runs `call` in a thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_crashed(endpoint: str, held: int = 1) -> dict[str, Any]:
    for _ in range(200):
        report = get(endpoint, "/opsy-ext/crash-after")
        if report["crashed"] and report["held"] >= held:
            return report
        time.sleep(0.02)
    raise AssertionError(f"no crash: {report}")


def test_reads_are_not_mutations_and_mutations_are_logged_in_order(aws: Any) -> None:
    image = aws.image("logged")
    aws.ec2.describe_images(ImageIds=[image])
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "status", "Value": "active"}])
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "status", "Value": "deprecated"}])
    log = get(aws.url, "/opsy-ext/mutations")
    assert [m["action"] for m in log] == ["ec2:RegisterImage", "ec2:CreateTags", "ec2:CreateTags"]
    assert [m["seq"] for m in log] == [1, 2, 3]
    assert log[1]["request_tags"] == {"status": "active"}
    assert log[2]["resources"] == [f"arn:aws:ec2:us-west-2::image/{image}"]
    assert all(m["status"] == 200 and m["carried_out"] for m in log)
    post(aws.url, "/moto-api/reset")
    assert get(aws.url, "/opsy-ext/mutations") == []


def test_eks_rest_reads_are_not_mutations(aws: Any) -> None:
    aws.cluster()
    aws.eks.list_nodegroups(clusterName="contract")
    aws.eks.describe_cluster(name="contract")
    actions = [m["action"] for m in get(aws.url, "/opsy-ext/mutations")]
    # CreateCluster is not among the routes the IAM log names: it is logged by method and path.
    assert actions == ["eks:POST /clusters"], actions


@pytest.mark.parametrize("carried_out", [True, False])
def test_the_nth_mutation_is_carried_out_or_lost_and_never_answered(aws: Any, carried_out: bool) -> None:
    image = aws.image("crash")
    post(aws.url, "/opsy-ext/crash-after", {"mutations": 2, "carried_out": carried_out})
    # The first mutation and every read are served as usual.
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "first", "Value": "1"}])
    aws.ec2.describe_images(ImageIds=[image])
    second, second_out = in_background(
        lambda: aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "second", "Value": "2"}])
    )
    report = wait_crashed(aws.url)
    assert report["action"] == "ec2:CreateTags" and report["seen"] == 2
    # Held: no answer while the crash stands, and later requests are held too.
    time.sleep(0.3)
    assert second.is_alive()
    later, later_out = in_background(lambda: aws.ec2.describe_images(ImageIds=[image]))
    wait_crashed(aws.url, held=2)
    assert later.is_alive()
    # Cleared: both connections are dropped unanswered.
    delete(aws.url, "/opsy-ext/crash-after")
    second.join(10)
    later.join(10)
    for out in (second_out, later_out):
        assert "result" not in out, out
        assert isinstance(out["error"], (ConnectionClosedError, EndpointConnectionError, ReadTimeoutError)), out
    tags = {t["Key"] for t in aws.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [image]}])["Tags"]}
    assert "first" in tags
    assert ("second" in tags) == carried_out
    log = get(aws.url, "/opsy-ext/mutations")
    assert [m["carried_out"] for m in log if m["action"] == "ec2:CreateTags"] == [True, carried_out]
    # After the clear, requests are served again.
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "third", "Value": "3"}])


def test_only_the_named_clients_requests_count_and_crash(aws: Any) -> None:
    import boto3
    from botocore.config import Config

    image = aws.image("keyed")
    other = boto3.client(
        "ec2",
        region_name="us-west-2",
        endpoint_url=aws.url,
        aws_access_key_id="AKIAOTHERCLIENT00000",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    post(aws.url, "/opsy-ext/crash-after", {"mutations": 1, "access_key": "AKIAOTHERCLIENT00000"})
    # The test's own client is neither counted nor held.
    aws.ec2.create_tags(Resources=[image], Tags=[{"Key": "mine", "Value": "1"}])
    assert get(aws.url, "/opsy-ext/crash-after")["seen"] == 0
    thread, out = in_background(
        lambda: other.create_tags(Resources=[image], Tags=[{"Key": "theirs", "Value": "1"}])
    )
    wait_crashed(aws.url)
    aws.ec2.describe_images(ImageIds=[image])
    delete(aws.url, "/opsy-ext/crash-after")
    thread.join(10)
    assert "error" in out


def test_arming_needs_a_positive_count(aws: Any) -> None:
    request = urllib.request.Request(
        f"{aws.url}/opsy-ext/crash-after",
        data=json.dumps({"mutations": 0}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 400


def test_a_deregistration_names_the_snapshots_the_image_owned(aws: Any) -> None:
    image = aws.image("owned")
    snapshots = [
        m["Ebs"]["SnapshotId"]
        for m in aws.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"]
        if "Ebs" in m
    ]
    assert snapshots
    aws.ec2.deregister_image(ImageId=image)
    entry = get(aws.url, "/opsy-ext/mutations")[-1]
    assert entry["action"] == "ec2:DeregisterImage"
    assert entry["snapshots"] == snapshots


def test_facts_report_versions_updates_and_refreshes_without_counting_requests(aws: Any) -> None:
    image = aws.image("facts")
    template = aws.template("facts-lt", image)
    version = aws.new_version(template, image)
    before = get(aws.url, "/opsy-ext/requests")
    facts = get(aws.url, "/opsy-ext/facts")
    assert get(aws.url, "/opsy-ext/requests") == before
    assert {"template": template, "region": "us-west-2", "version": version, "image": image, "description": ""} in facts["template_versions"]
    mine = next(i for i in facts["images"] if i["id"] == image)
    assert mine["snapshots"] and mine["state"] == "available"
    assert facts["updates"] == [] and facts["refreshes"] == []
