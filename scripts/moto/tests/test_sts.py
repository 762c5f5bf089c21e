"""STS session tags as IAM sees them: AssumeRole with tags is logged with its request tags and
the sts:TagSession it also needs, and every request of the new session carries them as its
principal tags (IAM User Guide, "Passing session tags in AWS STS")."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import boto3
from botocore.config import Config
from conftest import REGION

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        }
    ],
}


def calls(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/opsy-ext/calls") as response:
        return json.loads(response.read())


def test_a_sessions_tags_are_its_principal_tags(aws: Any) -> None:
    config = Config(retries={"max_attempts": 1})
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws.url, config=config)
    sts = boto3.client("sts", region_name=REGION, endpoint_url=aws.url, config=config)
    role = iam.create_role(RoleName="session-tags", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    tags = [{"Key": "kubernetes-namespace", "Value": "team-a"}, {"Key": "eks-cluster-name", "Value": "staging"}]
    creds = sts.assume_role(RoleArn=role, RoleSessionName="opsy-team-a", Tags=tags)["Credentials"]
    session = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=aws.url,
        config=config,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    session.describe_images(Owners=["self"])
    # A session assumed without tags has none.
    plain = sts.assume_role(RoleArn=role, RoleSessionName="plain")["Credentials"]

    logged = calls(aws.url)
    assume = [c for c in logged if c["action"] == "sts:AssumeRole"]
    assert assume[0]["resources"] == [role]
    assert assume[0]["request_tags"] == {"kubernetes-namespace": "team-a", "eks-cluster-name": "staging"}
    tag_session = [c for c in logged if c["action"] == "sts:TagSession"]
    assert len(tag_session) == 1 and tag_session[0]["resources"] == [role]
    described = [c for c in logged if c["action"] == "ec2:DescribeImages" and c["access_key"] == creds["AccessKeyId"]]
    assert described[0]["principal_tags"] == {"kubernetes-namespace": "team-a", "eks-cluster-name": "staging"}
    assert assume[1]["request_tags"] == {}
    assert plain["AccessKeyId"] != creds["AccessKeyId"]
