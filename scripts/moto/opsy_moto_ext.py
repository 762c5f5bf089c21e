"""Additions to moto for the AWS calls opsy-ami-operator makes that moto lacks or simplifies.

Each follows the AWS API reference:

- EC2 DescribeImages: pagination (MaxResults / NextToken).
- EC2 CreateLaunchTemplateVersion: SourceVersion inheritance (the new version starts from the
  source version's data; LaunchTemplateData overrides it key by key).
- EC2 EnableImageDeprecation: sets the image's DeprecationTime.
- EKS UpdateNodegroupVersion, DescribeUpdate, ListUpdates; UpdateNodegroupConfig updates are
  recorded too; ListNodegroups of a missing cluster is ResourceNotFoundException (not a 500). An update is InProgress for a few DescribeUpdate polls, then Successful (the
  node group then uses the new launch template version) or Failed. DescribeNodegroup of the
  group counts as a poll too.
- Auto Scaling StartInstanceRefresh, DescribeInstanceRefreshes, CancelInstanceRefresh, which
  progress the same way.

Test controls:
- node group tag or ASG tag ``opsy.test/outcome``: ``Failed`` makes updates of that group fail;
  so does ``POST /opsy-ext/fail`` with ``{"group": "<name>", "fail": true}`` (``false`` clears it),
  for updates started afterwards.
- node group tag or ASG tag ``opsy.test/polls``: polls before an update finishes (default 2).

Two HTTP endpoints beside moto's own ``/moto-api``:
- ``POST /opsy-ext/inject-error`` with JSON ``{"match": "DescribeImages", "code": "...",
  "status": 400, "count": 1}``: the next ``count`` requests whose action (query protocols) or
  ``"METHOD /path"`` (REST protocols) starts with ``match`` fail with that error.
- ``GET /opsy-ext/requests``: requests served so far, by action; ``DELETE`` clears the counts.
- ``POST /opsy-ext/publish-image`` with ``{"region", "id", "name", "owner_id"}``: an image of
  another account appears (as when AWS publishes a new EKS-optimised AMI).
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

OUTCOME_TAG = "opsy.test/outcome"
# Node groups and Auto Scaling groups whose updates fail, set over HTTP (POST /opsy-ext/fail).
FAILING: set[str] = set()
POLLS_TAG = "opsy.test/polls"
DEFAULT_POLLS = 2


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------------------------
# EC2
# --------------------------------------------------------------------------------------------


def _patch_ec2() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import InvalidParameterValueErrorUnknownAttribute
    from moto.ec2.responses import EC2Response
    from moto.ec2.responses.amis import AmisResponse
    from moto.ec2.responses.launch_templates import LaunchTemplates

    original_describe_images = AmisResponse.describe_images

    def describe_images(self):  # type: ignore[no-untyped-def]
        result = original_describe_images(self)
        max_results = self._get_int_param("MaxResults")
        token = self._get_param("NextToken")
        if not max_results and not token:
            return result
        images = sorted(result.result["Images"], key=lambda i: i.id)
        start = int(token) if token else 0
        size = max_results or 1000
        page = images[start : start + size]
        next_token = str(start + size) if start + size < len(images) else None
        return ActionResult({"Images": page, "NextToken": next_token})

    def enable_image_deprecation(self):  # type: ignore[no-untyped-def]
        image_id = self._get_param("ImageId")
        deprecate_at = self._get_param("DeprecateAt")
        self.error_on_dryrun()
        image = self.ec2_backend.describe_images(ami_ids=[image_id])[0]
        if isinstance(deprecate_at, datetime):
            # As EC2 reports it: whole minutes, ISO 8601 with milliseconds.
            deprecate_at = deprecate_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:00.000Z")
        image.deprecation_time = deprecate_at
        return ActionResult({"Return": True})

    original_create_version = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self):  # type: ignore[no-untyped-def]
        source = self._get_param("SourceVersion")
        if not source:
            return original_create_version(self)
        name = self._get_param("LaunchTemplateName")
        template_id = self._get_param("LaunchTemplateId")
        if template_id:
            template = self.ec2_backend.get_launch_template(template_id)
        else:
            template = self.ec2_backend.get_launch_template_by_name(name)
        if source == "$Latest":
            base = template.latest_version()
        elif source == "$Default":
            base = template.default_version()
        else:
            try:
                base = template.get_version(int(source))
            except (ValueError, IndexError, KeyError):
                raise InvalidParameterValueErrorUnknownAttribute(
                    f"SourceVersion {source} does not exist"
                )
        data = copy.deepcopy(base.data)
        data.update(self._get_param("LaunchTemplateData", {}))
        description = self._get_param("VersionDescription")
        self.error_on_dryrun()
        version = template.create_version(data, description)
        return ActionResult(
            {
                "LaunchTemplateVersion": {
                    "CreateTime": version.create_time,
                    "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
                    "DefaultVersion": template.is_default(version),
                    "LaunchTemplateData": version.data,
                    "LaunchTemplateId": template.id,
                    "LaunchTemplateName": template.name,
                    "VersionDescription": version.description,
                    "VersionNumber": version.number,
                }
            }
        )

    for cls in (AmisResponse, EC2Response):
        cls.describe_images = describe_images
        cls.enable_image_deprecation = enable_image_deprecation
    for cls in (LaunchTemplates, EC2Response):
        cls.create_launch_template_version = create_launch_template_version


# --------------------------------------------------------------------------------------------
# EKS
# --------------------------------------------------------------------------------------------


def _polls(tags: dict[str, str] | None) -> int:
    try:
        return max(0, int((tags or {}).get(POLLS_TAG, DEFAULT_POLLS)))
    except ValueError:
        return DEFAULT_POLLS


def _patch_eks() -> None:
    from moto.core.responses import ActionResult
    from moto.eks import urls
    from moto.eks.exceptions import (
        InvalidParameterException,
        InvalidRequestException,
        ResourceInUseException,
        ResourceNotFoundException,
    )
    from moto.eks.responses import EKSResponse

    base = "{0}/clusters/(?P<name>[^/]+)"
    urls.url_paths[f"{base}/node-groups/(?P<nodegroupName>[^/]+)/update-version$"] = (
        urls.response.dispatch
    )
    urls.url_paths[f"{base}/updates$"] = urls.response.dispatch
    urls.url_paths[f"{base}/updates/(?P<updateId>[^/]+)$"] = urls.response.dispatch

    def updates(backend: Any) -> dict[str, dict[str, Any]]:
        if not hasattr(backend, "opsy_updates"):
            backend.opsy_updates = {}
        return backend.opsy_updates

    def nodegroup(backend: Any, cluster_name: str, name: str) -> Any:
        cluster = backend.clusters.get(cluster_name)
        if cluster is None:
            raise ResourceNotFoundException(
                clusterName=cluster_name,
                nodegroupName=name,
                message=f"No cluster found for name: {cluster_name}.",
            )
        group = cluster.nodegroups.get(name)
        if group is None:
            raise ResourceNotFoundException(
                clusterName=cluster_name,
                nodegroupName=name,
                message=f"No node group found for name: {name}.",
            )
        return group

    def record(backend: Any, cluster: str, group: Any, kind: str, params: list, apply) -> dict:  # type: ignore[type-arg]
        update = {
            "id": str(uuid.uuid4()),
            "status": "InProgress",
            "type": kind,
            "params": params,
            "createdAt": _now(),
            "errors": [],
        }
        updates(backend)[update["id"]] = {
            "update": update,
            "cluster": cluster,
            "nodegroup": group.nodegroup_name,
            "polls_left": _polls(group.tags),
            "fail": (group.tags or {}).get(OUTCOME_TAG) == "Failed" or group.nodegroup_name in FAILING,
            "apply": apply,
        }
        if apply is not None:
            group.status = "UPDATING"
        return update

    def update_nodegroup_version(self):  # type: ignore[no-untyped-def]
        cluster_name = self._get_param("name")
        group = nodegroup(self.eks_backend, cluster_name, self._get_param("nodegroupName"))
        template = self._get_param("launchTemplate")
        force = bool(self._get_param("force"))
        for entry in updates(self.eks_backend).values():
            if (
                entry["nodegroup"] == group.nodegroup_name
                and entry["update"]["status"] == "InProgress"
                and entry["apply"] is not None
            ):
                raise ResourceInUseException(
                    clusterName=cluster_name,
                    nodegroupName=group.nodegroup_name,
                    message="Nodegroup cannot be updated as it is currently not in Active State",
                )
        params: list[dict[str, str]] = []
        new_template = None
        if template:
            current = group.launch_template
            if not current:
                raise InvalidParameterException(
                    message="You cannot specify a launch template for a node group that was "
                    "created without one."
                )
            if ("id" in template and template["id"] != current.get("id")) or (
                "name" in template and template["name"] != current.get("name")
            ):
                raise InvalidParameterException(
                    message="You cannot change the launch template of a node group; only its version."
                )
            if "version" not in template:
                raise InvalidRequestException(message="launchTemplate.version is required")
            new_template = dict(current, version=str(template["version"]))
            if "name" in template:
                params.append({"type": "LaunchTemplateName", "value": template["name"]})
            if "id" in template:
                params.append({"type": "LaunchTemplateId", "value": template["id"]})
            params.append({"type": "LaunchTemplateVersion", "value": str(template["version"])})
        params.append({"type": "Force", "value": str(force).lower()})

        def apply(group=group, new_template=new_template):  # type: ignore[no-untyped-def]
            if new_template is not None:
                group.launch_template = new_template

        update = record(self.eks_backend, cluster_name, group, "VersionUpdate", params, apply)
        return ActionResult({"update": update})

    original_update_config = EKSResponse.update_nodegroup_config

    def update_nodegroup_config(self):  # type: ignore[no-untyped-def]
        result = original_update_config(self)
        cluster_name = self._get_param("name")
        group = nodegroup(self.eks_backend, cluster_name, self._get_param("nodegroupName"))
        update = dict(result.result["update"])
        update.setdefault("id", str(uuid.uuid4()))
        update["status"] = "Successful"
        update.setdefault("createdAt", _now())
        update.setdefault("errors", [])
        updates(self.eks_backend)[update["id"]] = {
            "update": update,
            "cluster": cluster_name,
            "nodegroup": group.nodegroup_name,
            "polls_left": 0,
            "fail": False,
            "apply": None,
        }
        return ActionResult({"update": update})

    def advance(backend: Any, entry: dict[str, Any]) -> None:
        """One poll of an update: InProgress for `polls_left` polls, then its outcome."""
        update = entry["update"]
        if update["status"] != "InProgress":
            return
        if entry["polls_left"] > 0:
            entry["polls_left"] -= 1
            return
        group = nodegroup(backend, entry["cluster"], entry["nodegroup"])
        if entry["fail"]:
            update["status"] = "Failed"
            update["errors"] = [
                {
                    "errorCode": "NodeCreationFailure",
                    "errorMessage": "Instances failed to join the kubernetes cluster",
                    "resourceIds": [entry["nodegroup"]],
                }
            ]
        else:
            update["status"] = "Successful"
            if entry["apply"] is not None:
                entry["apply"]()
        group.status = "ACTIVE"

    def describe_update(self):  # type: ignore[no-untyped-def]
        cluster_name = self._get_param("name")
        update_id = self._get_param("updateId")
        group_name = self._get_param("nodegroupName")
        entry = updates(self.eks_backend).get(update_id)
        if entry is None or entry["cluster"] != cluster_name or (
            group_name and entry["nodegroup"] != group_name
        ):
            raise ResourceNotFoundException(
                clusterName=cluster_name,
                nodegroupName=group_name,
                message=f"No update found for ID: {update_id}.",
            )
        advance(self.eks_backend, entry)
        return ActionResult({"update": entry["update"]})

    original_describe_nodegroup = EKSResponse.describe_nodegroup

    def describe_nodegroup(self):  # type: ignore[no-untyped-def]
        # Updates progress whoever watches them: describing the node group counts as a poll.
        cluster_name = self._get_param("name")
        group_name = self._get_param("nodegroupName")
        for entry in list(updates(self.eks_backend).values()):
            if entry["cluster"] == cluster_name and entry["nodegroup"] == group_name:
                advance(self.eks_backend, entry)
        return original_describe_nodegroup(self)

    def list_updates(self):  # type: ignore[no-untyped-def]
        cluster_name = self._get_param("name")
        group_name = self._get_param("nodegroupName")
        if cluster_name not in self.eks_backend.clusters:
            raise ResourceNotFoundException(
                clusterName=cluster_name, message=f"No cluster found for name: {cluster_name}."
            )
        ids = [
            update_id
            for update_id, entry in updates(self.eks_backend).items()
            if entry["cluster"] == cluster_name
            and (not group_name or entry["nodegroup"] == group_name)
        ]
        return ActionResult({"updateIds": ids})

    original_list_nodegroups = EKSResponse.list_nodegroups

    def list_nodegroups(self):  # type: ignore[no-untyped-def]
        # moto answers a missing cluster with a 500; AWS with ResourceNotFoundException.
        cluster_name = self._get_param("name")
        if cluster_name not in self.eks_backend.clusters:
            raise ResourceNotFoundException(
                clusterName=cluster_name, message=f"No cluster found for name: {cluster_name}."
            )
        return original_list_nodegroups(self)

    EKSResponse.list_nodegroups = list_nodegroups
    EKSResponse.describe_nodegroup = describe_nodegroup
    EKSResponse.update_nodegroup_version = update_nodegroup_version
    EKSResponse.update_nodegroup_config = update_nodegroup_config
    EKSResponse.describe_update = describe_update
    EKSResponse.list_updates = list_updates


# --------------------------------------------------------------------------------------------
# Auto Scaling
# --------------------------------------------------------------------------------------------


def _patch_autoscaling() -> None:
    from moto.autoscaling.exceptions import ResourceContentionError, ValidationError
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import ActionResult

    def refreshes(backend: Any) -> dict[str, list[dict[str, Any]]]:
        if not hasattr(backend, "opsy_refreshes"):
            backend.opsy_refreshes = {}
        return backend.opsy_refreshes

    def group_tags(group: Any) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in group.tags}

    def get_group(backend: Any, name: str) -> Any:
        group = backend.autoscaling_groups.get(name)
        if group is None:
            raise ValidationError(f"AutoScalingGroup name not found - {name}")
        return group

    def start_instance_refresh(self):  # type: ignore[no-untyped-def]
        backend = self.autoscaling_backend
        name = self._get_param("AutoScalingGroupName")
        group = get_group(backend, name)
        entries = refreshes(backend).setdefault(name, [])
        if any(e["Status"] in ("Pending", "InProgress") for e in entries):
            raise ResourceContentionError()
        tags = group_tags(group)
        entry = {
            "InstanceRefreshId": str(uuid.uuid4()),
            "AutoScalingGroupName": name,
            "Status": "InProgress",
            "StatusReason": "Waiting for instances to warm up before continuing.",
            "StartTime": _now(),
            "PercentageComplete": 0,
            "InstancesToUpdate": group.desired_capacity or 0,
            "Preferences": self._get_param("Preferences", {}),
            "DesiredConfiguration": self._get_param("DesiredConfiguration", {}),
            "_polls_left": _polls(tags),
            "_polls_total": max(1, _polls(tags)),
            "_fail": tags.get(OUTCOME_TAG) == "Failed" or name in FAILING,
        }
        entries.insert(0, entry)
        return ActionResult({"InstanceRefreshId": entry["InstanceRefreshId"]})

    def advance(entry: dict[str, Any]) -> None:
        if entry["Status"] != "InProgress":
            return
        if entry["_polls_left"] > 0:
            entry["_polls_left"] -= 1
            done = entry["_polls_total"] - entry["_polls_left"]
            entry["PercentageComplete"] = int(100 * done / (entry["_polls_total"] + 1))
            return
        entry["EndTime"] = _now()
        if entry["_fail"]:
            entry["Status"] = "Failed"
            entry["StatusReason"] = "Instances failed to pass health checks."
        else:
            entry["Status"] = "Successful"
            entry["StatusReason"] = None
            entry["PercentageComplete"] = 100
            entry["InstancesToUpdate"] = 0

    def public(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if not k.startswith("_") and v is not None}

    def describe_instance_refreshes(self):  # type: ignore[no-untyped-def]
        backend = self.autoscaling_backend
        name = self._get_param("AutoScalingGroupName")
        get_group(backend, name)
        wanted = set(self._get_param("InstanceRefreshIds", []))
        entries = [
            e for e in refreshes(backend).get(name, []) if not wanted or e["InstanceRefreshId"] in wanted
        ]
        for entry in entries:
            advance(entry)
        return ActionResult({"InstanceRefreshes": [public(e) for e in entries]})

    def cancel_instance_refresh(self):  # type: ignore[no-untyped-def]
        backend = self.autoscaling_backend
        name = self._get_param("AutoScalingGroupName")
        get_group(backend, name)
        for entry in refreshes(backend).get(name, []):
            if entry["Status"] in ("Pending", "InProgress"):
                entry["Status"] = "Cancelled"
                entry["EndTime"] = _now()
                return ActionResult({"InstanceRefreshId": entry["InstanceRefreshId"]})
        raise ValidationError(f"No in progress or pending Instance Refresh found for Auto Scaling group {name}")

    AutoScalingResponse.start_instance_refresh = start_instance_refresh
    AutoScalingResponse.describe_instance_refreshes = describe_instance_refreshes
    AutoScalingResponse.cancel_instance_refresh = cancel_instance_refresh


# --------------------------------------------------------------------------------------------
# HTTP middleware: error injection and request counting
# --------------------------------------------------------------------------------------------


class Middleware:
    """Wraps moto's WSGI application."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rules: list[dict[str, Any]] = []

    @staticmethod
    def _action(environ: dict[str, Any]) -> str:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "Action" in query:
            return query["Action"][0]
        if environ.get("REQUEST_METHOD") == "POST" and "x-www-form-urlencoded" in environ.get(
            "CONTENT_TYPE", ""
        ):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            import io

            environ["wsgi.input"] = io.BytesIO(body)
            form = parse_qs(body.decode("utf-8", "replace"))
            if "Action" in form:
                return form["Action"][0]
        return f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"

    @staticmethod
    def _json(start_response: Any, status: str, body: Any) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD")
        if path == "/opsy-ext/requests":
            with self.lock:
                if method == "DELETE":
                    self.counts.clear()
                return self._json(start_response, "200 OK", dict(self.counts))
        if path == "/opsy-ext/fail":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with self.lock:
                if body.get("fail", True):
                    FAILING.add(body["group"])
                else:
                    FAILING.discard(body["group"])
            return self._json(start_response, "200 OK", {"failing": sorted(FAILING)})
        if path == "/opsy-ext/publish-image":
            # An image published by another account (e.g. a new EKS-optimised AMI), which the
            # EC2 API itself cannot create.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.core.utils import utcnow
            from moto.ec2.models import ec2_backends
            from moto.ec2.models.amis import Ami

            backend = ec2_backends[DEFAULT_ACCOUNT_ID][body["region"]]
            ami = Ami(
                backend,
                body["id"],
                name=body["name"],
                description=body.get("description", body["name"]),
                owner_id=body["owner_id"],
                public=True,
                virtualization_type="hvm",
                architecture=body.get("architecture", "x86_64"),
                root_device_name="/dev/xvda",
                root_device_type="ebs",
                creation_date=utcnow(),
                region_name=f"{body['region']}a",
            )
            backend.amis[ami.id] = ami
            return self._json(start_response, "200 OK", {"ImageId": ami.id})
        if path == "/opsy-ext/inject-error":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            rule = json.loads(environ["wsgi.input"].read(length) or b"{}")
            rule.setdefault("count", 1)
            rule.setdefault("status", 400)
            with self.lock:
                self.rules.append(rule)
            return self._json(start_response, "200 OK", {"ok": True})
        if path.startswith("/moto-api"):
            if path == "/moto-api/reset":
                with self.lock:
                    self.rules.clear()
                    FAILING.clear()
            return self.app(environ, start_response)

        action = self._action(environ)
        with self.lock:
            self.counts[action] += 1
            rule = next((r for r in self.rules if action.startswith(r["match"]) and r["count"] > 0), None)
            if rule is not None:
                rule["count"] -= 1
        if rule is not None:
            return self._error(environ, start_response, rule)
        return self.app(environ, start_response)

    def _error(self, environ: dict[str, Any], start_response: Any, rule: dict[str, Any]) -> list[bytes]:
        code = rule.get("code", "InternalError")
        message = rule.get("message", f"injected {code}")
        status = f"{rule['status']} Injected"
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if "/ec2/" in auth:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error></Errors><RequestID>injected</RequestID></Response>"
            ).encode()
            headers = [("Content-Type", "text/xml")]
        elif "/autoscaling/" in auth or "/sns/" in auth:
            body = (
                f'<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>'
                f"</Error><RequestId>injected</RequestId></ErrorResponse>"
            ).encode()
            headers = [("Content-Type", "text/xml")]
        else:
            body = json.dumps({"message": message}).encode()
            headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


def install() -> None:
    """Applies every patch. Call before the server handles its first request."""
    _patch_ec2()
    _patch_eks()
    _patch_autoscaling()
