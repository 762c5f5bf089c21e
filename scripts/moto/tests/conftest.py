"""Runs the emulator (moto plus opsy_moto_ext, exactly as opsy_moto.py serves it) in this
process on a loopback port, and gives each test boto3 clients against it, retries off."""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGION = "us-west-2"
CLUSTER = "contract"


@pytest.fixture(scope="session")
def endpoint() -> Any:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    import opsy_moto_ext

    opsy_moto_ext.install()
    app = opsy_moto_ext.Middleware(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def post(endpoint: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{endpoint}{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture()
def aws(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    post(endpoint, "/moto-api/reset")
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})

    class Clients:
        url = endpoint
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint, config=config)
        eks = boto3.client("eks", region_name=REGION, endpoint_url=endpoint, config=config)
        asg = boto3.client("autoscaling", region_name=REGION, endpoint_url=endpoint, config=config)

        def fail(self, group: str, code: str | None = None) -> None:
            post(endpoint, "/opsy-ext/fail", {"group": group, "fail": True, "code": code})

        def inject(self, match: str, code: str, count: int = 1, status: int = 400) -> None:
            post(endpoint, "/opsy-ext/inject-error", {"match": match, "code": code, "count": count, "status": status})

        def publish(self, image_id: str, name: str, owner_id: str) -> str:
            return post(endpoint, "/opsy-ext/publish-image", {"region": REGION, "id": image_id, "name": name, "owner_id": owner_id})["ImageId"]

        def image(self, name: str) -> str:
            return self.ec2.register_image(Name=name, RootDeviceName="/dev/xvda")["ImageId"]

        def template(self, name: str, image_id: str) -> str:
            return self.ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.medium"},
            )["LaunchTemplate"]["LaunchTemplateId"]

        def new_version(self, template_id: str, image_id: str) -> int:
            return self.ec2.create_launch_template_version(
                LaunchTemplateId=template_id, SourceVersion="1", LaunchTemplateData={"ImageId": image_id}
            )["LaunchTemplateVersion"]["VersionNumber"]

        def cluster(self) -> None:
            self.eks.create_cluster(
                name=CLUSTER,
                roleArn="arn:aws:iam::123456789012:role/eks",
                resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d"]},
            )

        def instances(self, asg_name: str) -> list[dict[str, Any]]:
            """The group's instances: id, launch template version and image."""
            group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])["AutoScalingGroups"][0]
            ids = [i["InstanceId"] for i in group["Instances"]]
            images = {}
            if ids:
                for r in self.ec2.describe_instances(InstanceIds=ids)["Reservations"]:
                    for i in r["Instances"]:
                        images[i["InstanceId"]] = i["ImageId"]
            return [
                {
                    "id": i["InstanceId"],
                    "version": i.get("LaunchTemplate", {}).get("Version"),
                    "image": images.get(i["InstanceId"]),
                }
                for i in group["Instances"]
            ]

    return Clients()
