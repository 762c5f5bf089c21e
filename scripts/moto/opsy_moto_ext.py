"""Additions to moto for the AWS calls opsy-ami-operator makes that moto lacks or simplifies.

Each follows the AWS API reference:

- EC2 DescribeImages: pagination (MaxResults / NextToken).
- The Smithy RPC v2 CBOR protocol, which the AWS SDKs use for CloudWatch (DescribeAlarms,
  PutMetricAlarm, SetAlarmState, ...): translated to moto's query-protocol handlers with
  botocore's own serializer and parser of the service model.
- EC2 CreateLaunchTemplateVersion: SourceVersion inheritance (the new version starts from the
  source version's data; LaunchTemplateData overrides it key by key).
- EC2 EnableImageDeprecation: sets the image's DeprecationTime.
- EC2 DescribeLaunchTemplateVersions ResolveAlias: `resolve:ssm:` image ids answered with the
  parameter's AMI id.
- EC2 CopyImage: TagSpecifications (image and snapshot), CopyImageTags, ClientToken
  idempotency, Encrypted/KmsKeyId (the copy's snapshot), SourceImageId/SourceImageRegion on the
  copy, and the copy is `pending` for one DescribeImages poll before it is `available` (or
  `failed`, when its source is tagged ``opsy.test/copy-outcome=failed``).
- EC2 EnableImageDeregistrationProtection / DisableImageDeregistrationProtection, the image's
  DeregistrationProtection, and DeregisterImage refused while it is enabled.
- EC2 sharing refused for snapshots encrypted with the AWS-managed EBS key, and
  EnableImageDeprecation refused for a DeprecateAt in the past or over 10 years ahead.
- EC2 DescribeImages filter creation-date (with wildcards).
- EC2 filter limits: at most 200 filter values in one request, each at most 255 characters
  (FilterLimitExceeded), which moto does not enforce.
- EC2 DeregisterImage DeleteAssociatedSnapshots: the image's snapshots deleted with it unless
  another image uses them (DeleteSnapshotResultSet).
- EKS UpdateClusterVersion: asynchronous like a node-group update (the cluster is UPDATING,
  then takes the new version), one minor version at a time.
- EKS UpdateNodegroupVersion and UpdateNodegroupConfig are asynchronous: an update is
  InProgress for a few polls (DescribeUpdate, or DescribeNodegroup of its group), the group is
  UPDATING meanwhile, and any other update of the group fails with ResourceInUseException. Then
  it is Successful (only now does the group take the new launch template version or
  configuration, and its nodes are replaced) or Failed with DescribeUpdate errors
  (PodEvictionFailure, NodeCreationFailure, ...; the group is DEGRADED with health issues when
  nodes failed). ListUpdates paginates. A managed node group with a launch template runs its
  nodes in an Auto Scaling group tagged eks:nodegroup-name, as EKS does. ListNodegroups of a
  missing cluster is ResourceNotFoundException (not a 500).
- Auto Scaling StartInstanceRefresh (Preferences: MinHealthyPercentage, SkipMatching,
  AutoRollback; DesiredConfiguration), DescribeInstanceRefreshes, CancelInstanceRefresh:
  Pending -> InProgress -> Successful | Failed | Cancelled, or RollbackInProgress ->
  RollbackSuccessful with AutoRollback. Instances are replaced in batches that keep
  MinHealthyPercentage in service; each instance reports the launch template version it was
  launched from; the group's own template changes only when a refresh with a
  DesiredConfiguration succeeds. InstanceRefreshInProgress while one runs; AutoRollback without
  a DesiredConfiguration or with $Latest/$Default is a ValidationError.

Each behaviour has a contract test in tests/ (run by `cargo xtask ci`).

Test controls:
- node group tag or ASG tag ``opsy.test/outcome``, or ``POST /opsy-ext/fail`` with
  ``{"group": "<name>", "fail": true, "code": "PodEvictionFailure"}`` (``false`` clears it):
  updates of that group started afterwards fail with that code (``Failed``: NodeCreationFailure);
  for EKS only version updates, which replace nodes, fail.
- node group tag or ASG tag ``opsy.test/polls``: polls before an update finishes, or before an
  instance refresh replaces its first batch (default 2).

HTTP endpoints beside moto's own ``/moto-api``:
- ``POST /opsy-ext/inject-error`` with JSON ``{"match": "DescribeImages", "code": "...",
  "status": 400, "count": 1}``: the next ``count`` requests whose action (query protocols) or
  ``"METHOD /path"`` (REST protocols) starts with ``match`` fail with that error.
- ``GET /opsy-ext/requests``: requests served so far, by action; ``DELETE`` clears the counts.
- ``GET /opsy-ext/calls``: what each request asked of IAM — signing key, ``service:Action``,
  resource ARNs with their current tags, the tags it writes (tags written at creation are a
  further ``ec2:CreateTags`` entry with ``ec2:CreateAction``) — for the tests' policy checks;
  ``DELETE`` clears it.
- ``POST /opsy-ext/publish-image`` with ``{"region", "id", "name", "owner_id"}``: an image of
  another account appears (as when AWS publishes a new EKS-optimised AMI).
- ``POST /opsy-ext/deprecated`` with ``{"region", "id", "at"}``: the image's deprecation
  time ``at`` has passed (EC2 refuses a ``DeprecateAt`` in the past; only time makes an image
  deprecated).
- ``POST /opsy-ext/publish-parameter`` with ``{"region", "name", "value"}``: a new version of a
  public SSM parameter AWS publishes (``/aws/service/eks/optimized-ami/…/image_id``).
- ``GET /opsy-ext/mutations``: every mutating request so far, in order (any action but
  ``Describe*``, ``List*``, ``Get*`` and STS ``AssumeRole*``): its sequence number, signing key,
  ``service:Action``, resource ARNs with their tags then, the tags it writes, the snapshots a
  deregistered image owned (and whether they were to be deleted with it), the HTTP status it got and whether it was
  carried out. ``/moto-api/reset`` clears it.
- ``GET /opsy-ext/facts``: the state the tests' invariants read (images, launch template
  versions, instances, node-group updates, instance refreshes), not counted as requests.
- ``POST /opsy-ext/crash-after`` with ``{"mutations": N, "carried_out": true, "access_key":
  "..."}``: a crash of the client at its N-th mutating request from now on (counting only
  requests signed with ``access_key`` when given). With ``carried_out`` the request is carried
  out, as AWS would; without, it is lost before AWS sees it. Either way its answer never comes:
  the request, and every later one of that client, is held until the test clears the crash
  (``DELETE``), then its connection is dropped unanswered. Holding (rather than answering with an
  error at once) guarantees that the client runs no further code that depends on AWS before the
  test kills it: exactly the state a process killed right after the call leaves.
  ``GET`` reports ``{"armed", "after", "seen", "crashed", "carried_out", "action", "held"}``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

OUTCOME_TAG = "opsy.test/outcome"
# Node groups and Auto Scaling groups whose updates fail, set over HTTP (POST /opsy-ext/fail).
FAILING: dict[str, str] = {}
# The session tags of each assumed-role session, by the access key AssumeRole gave it.
SESSION_TAGS: dict[str, dict[str, str]] = {}
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
        # EC2 API reference, DescribeImages, Request Parameters: ImageId.N, Owner.N and Filter.N
        # combine — "Owners: Scopes the results to images with the specified owners", also
        # when ImageIds are given (moto drops owners and filters once ids are given, so a
        # lookup by id with Owners=self returned other accounts' public images).
        ids = self._get_param("ImageIds", [])
        owners = self._get_param("Owners", [])
        filters = self._filters_from_querystring()
        if ids and (owners or filters):
            from moto.ec2.utils import generic_filter

            wanted = {self.current_account if o == "self" else o for o in owners}
            images = [
                i
                for i in result.result["Images"]
                if not wanted or i.owner_id in wanted or i.owner_alias in wanted
            ]
            if filters:
                images = generic_filter(filters, images)
            result = ActionResult({"Images": images})
        # EC2 API reference, DescribeImages, IncludeDeprecated: "Default: No deprecated AMIs
        # are included in the response. If you are the AMI owner, all deprecated AMIs appear in
        # the response regardless". Applied to searches; a lookup by ImageIds is left as moto
        # answers it.
        if not ids and not self._get_bool_param("IncludeDeprecated", False):
            now = datetime.now(timezone.utc)

            def shown(image: Any) -> bool:
                at = getattr(image, "deprecation_time", None)
                if not at or image.owner_id == self.current_account:
                    return True
                return datetime.fromisoformat(str(at).replace("Z", "+00:00")) > now

            result = ActionResult({"Images": [i for i in result.result["Images"] if shown(i)]})
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
    original_describe_versions = LaunchTemplates.describe_launch_template_versions

    def describe_launch_template_versions(self):  # type: ignore[no-untyped-def]
        # EC2 API reference, DescribeLaunchTemplateVersions, ResolveAlias: "If true, and if a
        # Systems Manager parameter is specified for ImageId, the AMI ID is displayed in the
        # response for imageId" (ImageId `resolve:ssm:<name>[:<version>]`); moto ignores it.
        result = original_describe_versions(self)
        if not self._get_bool_param("ResolveAlias", False):
            return result
        from moto.ssm.models import ssm_backends

        parameters = ssm_backends[self.current_account][self.region]
        for item in result.result["LaunchTemplateVersions"]:
            data = item.get("LaunchTemplateData") or {}
            image = data.get("ImageId") or ""
            if image.startswith("resolve:ssm:"):
                found = parameters.get_parameter(image[len("resolve:ssm:"):])
                if found is not None:
                    item["LaunchTemplateData"] = {**data, "ImageId": found.value}
        return result

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

    original_register_image = AmisResponse.register_image

    def register_image(self):  # type: ignore[no-untyped-def]
        # EC2 API reference, RegisterImage, Request Parameters: Architecture ("i386 | x86_64 |
        # arm64 | x86_64_mac | arm64_mac"). moto ignores it, so every image it registers has
        # no architecture; the image gets the one asked for.
        result = original_register_image(self)
        architecture = self._get_param("Architecture")
        image_id = result.result["ImageId"] if hasattr(result, "result") else None
        image = self.ec2_backend.amis.get(image_id) if image_id else None
        if image is not None and architecture:
            image.architecture = architecture
        # RootDeviceName ("The device name of the root device volume (for example,
        # /dev/sda1)"): moto answers /dev/sda1 whatever was asked.
        if image is not None and self._get_param("RootDeviceName"):
            image.root_device_name = self._get_param("RootDeviceName")
        # BlockDeviceMapping.N.Ebs.SnapshotId: the image is registered from an existing
        # snapshot (which it then shares with any other image registered from it); moto
        # creates a new one regardless, which is dropped.
        root = self.querystring.get("BlockDeviceMapping.1.Ebs.SnapshotId", [None])[0]
        if image is not None and root:
            made = getattr(image, "ebs_snapshot", None)
            image.ebs_snapshot = self.ec2_backend.get_snapshot(root)
            if made is not None and made.id != root:
                self.ec2_backend.snapshots.pop(made.id, None)
        # Further mappings (N ≥ 2) with a snapshot: more EBS volumes of the image (moto keeps
        # only the root); the image's BlockDeviceMappings list them after the root.
        n = 2
        while image is not None and f"BlockDeviceMapping.{n}.DeviceName" in self.querystring:
            snapshot = self.querystring.get(f"BlockDeviceMapping.{n}.Ebs.SnapshotId", [None])[0]
            if snapshot:
                device = self.querystring[f"BlockDeviceMapping.{n}.DeviceName"][0]
                image.opsy_volumes = [*getattr(image, "opsy_volumes", []), (device, self.ec2_backend.get_snapshot(snapshot))]
            n += 1
        return result

    original_copy_image = AmisResponse.copy_image
    # (account, destination region, ClientToken) -> the copy the first request made.
    copies: dict[tuple[str, str, str], str] = {}

    def copy_image(self):  # type: ignore[no-untyped-def]
        # EC2 API reference, CopyImage, Request Parameters: ClientToken ("Unique,
        # case-sensitive identifier you provide to ensure idempotency of the request"): a request
        # repeating a token gets the first request's ImageId and starts no second copy.
        token = self._get_param("ClientToken")
        key = (self.current_account, self.region, token)
        if token and key in copies:
            return ActionResult({"ImageId": copies[key]})
        source_id = self._get_param("SourceImageId")
        source_region = self._get_param("SourceRegion")
        result = original_copy_image(self)
        image_id = result.result["ImageId"]
        if token:
            copies[key] = image_id
        backend = self.ec2_backend
        image = backend.amis[image_id]
        snapshot = getattr(image, "ebs_snapshot", None)
        # TagSpecifications: "The tags to apply to the new AMI and new snapshots" (resource
        # types image and snapshot). CopyImageTags: "Indicates whether to include your
        # user-defined AMI tags when copying the AMI"; TagSpecifications win on a clash.
        wanted: dict[str, str] = {}
        if self._get_bool_param("CopyImageTags", False):
            from moto.ec2.models import ec2_backends

            source_tags = ec2_backends[self.current_account][source_region].tags.get(source_id, {})
            wanted.update({k: v for k, v in source_tags.items() if not k.startswith("aws:")})
        specs = self._parse_tag_specification()
        wanted.update(specs.get("image", {}))
        if wanted:
            backend.create_tags([image_id], wanted)
        if snapshot is not None and specs.get("snapshot"):
            backend.create_tags([snapshot.id], specs["snapshot"])
        # Encrypted / KmsKeyId: the copy's snapshots are encrypted, with the key given or the
        # account's default EBS key.
        if snapshot is not None and self._get_bool_param("Encrypted", False):
            snapshot.encrypted = True
            snapshot.kms_key_id = self._get_param("KmsKeyId") or "alias/aws/ebs"
        # Image, SourceImageId / SourceImageRegion: "The ID of the source AMI from which the AMI
        # was created" and its Region.
        image.source_image_id = source_id
        image.source_image_region = source_region
        # A copy is pending until its snapshots are copied: here for one DescribeImages poll.
        image.state = "pending"
        image.opsy_pending_polls = 1
        # Test control: a source tagged opsy.test/copy-outcome=failed makes the copy end
        # `failed` (Image, State: "failed"; StateReason says why), as a copy whose snapshot
        # copy failed does.
        from moto.ec2.models import ec2_backends as all_backends

        source_tags = all_backends[self.current_account][source_region].tags.get(source_id, {})
        if source_tags.get("opsy.test/copy-outcome") == "failed":
            image.opsy_ends = "failed"
        return result

    def settle_copies(backend: Any) -> None:
        for image in list(backend.amis.values()):
            polls = getattr(image, "opsy_pending_polls", None)
            if polls is not None and polls <= 0:
                image.state = getattr(image, "opsy_ends", "available")
                del image.opsy_pending_polls

    def describe_images_settling(self):  # type: ignore[no-untyped-def]
        settle_copies(self.ec2_backend)
        result = describe_images(self)
        for image in result.result["Images"]:
            if getattr(image, "opsy_pending_polls", None) is not None:
                image.opsy_pending_polls -= 1
        return result

    def protection(self, enabled: bool):  # type: ignore[no-untyped-def]
        # EC2 API reference, EnableImageDeregistrationProtection ("When deregistration
        # protection is enabled, the AMI can't be deregistered"; WithCooldown) and
        # DisableImageDeregistrationProtection; Image, DeregistrationProtection.
        image_id = self._get_param("ImageId")
        self.error_on_dryrun()
        image = self.ec2_backend.describe_images(ami_ids=[image_id])[0]
        if enabled:
            cooldown = self._get_bool_param("WithCooldown", False)
            image.deregistration_protection = "enabled-with-cooldown" if cooldown else "enabled"
        else:
            image.deregistration_protection = "disabled"
        return ActionResult({"Return": "disabled" if not enabled else image.deregistration_protection})

    original_deregister_image = AmisResponse.deregister_image

    def deregister_image(self):  # type: ignore[no-untyped-def]
        from moto.ec2.exceptions import EC2ClientError

        image = self.ec2_backend.amis.get(self._get_param("ImageId"))
        if image is not None and str(getattr(image, "deregistration_protection", "")).startswith("enabled"):
            # The reference names no error code for this case; this one says what happened.
            raise EC2ClientError(
                "OperationNotPermitted",
                f"The image {image.id} has deregistration protection enabled; disable it first",
            )
        # EC2 API reference, DeregisterImage: DeleteAssociatedSnapshots deletes the image's
        # snapshots with it ("If a snapshot is associated with multiple AMIs, it is not
        # deleted, regardless of this setting"), reported per snapshot in
        # DeleteSnapshotResultSet (DeleteSnapshotReturnCode: success | skipped | …).
        delete = self._get_bool_param("DeleteAssociatedSnapshots", False)
        owned = image_snapshots(image) if image is not None else []
        answer = original_deregister_image(self)
        if not delete or not owned:
            return answer
        results = []
        for snapshot in owned:
            shared = any(
                snapshot.id in {s.id for s in image_snapshots(other)} for other in self.ec2_backend.amis.values()
            )
            if shared:
                code = "skipped"
            else:
                self.ec2_backend.delete_snapshot(snapshot.id)
                code = "success"
            results.append({"SnapshotId": snapshot.id, "ReturnCode": code})
        return ActionResult({"Return": True, "DeleteSnapshotResults": results})

    from moto.ec2.models.amis import Ami

    original_mappings = Ami.block_device_mappings

    def block_device_mappings(self):  # type: ignore[no-untyped-def]
        mappings = list(original_mappings.fget(self))
        for device, snapshot in getattr(self, "opsy_volumes", []):
            mappings.append({
                "DeviceName": device,
                "Ebs": {
                    "SnapshotId": snapshot.id,
                    "VolumeSize": snapshot.volume.size if getattr(snapshot, "volume", None) else 8,
                    "DeleteOnTermination": False,
                    "VolumeType": "gp3",
                },
            })
        return mappings

    Ami.block_device_mappings = property(block_device_mappings)

    # DescribeImages filter creation-date (EC2 API reference, DescribeImages, Filters: "The
    # time when the image was created, in the ISO 8601 format in the UTC time zone
    # (YYYY-MM-DDThh:mm:ss.sssZ) … You can use a wildcard (*), for example, 2021-09-29T*, which
    # matches an entire day"), which moto lacks.
    original_filter_value = Ami.get_filter_value

    def get_filter_value(self, filter_name, method_name=None):  # type: ignore[no-untyped-def]
        if filter_name == "creation-date":
            created = self.creation_date
            if isinstance(created, datetime):
                return created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
            return str(created)
        return original_filter_value(self, filter_name, method_name)

    Ami.get_filter_value = get_filter_value

    # EC2 API reference, DeleteSnapshot: "you can't delete a snapshot of the root device of an
    # EBS volume used by a registered AMI" — nor of any of its volumes (InvalidSnapshot.InUse);
    # moto checks only the root snapshot it made itself.
    from moto.ec2.exceptions import InvalidSnapshotInUse
    from moto.ec2.models.elastic_block_store import EBSBackend

    original_delete_snapshot = EBSBackend.delete_snapshot

    def delete_snapshot(self, snapshot_id):  # type: ignore[no-untyped-def]
        for image in list(getattr(self, "amis", {}).values()):
            if snapshot_id in {s.id for s in image_snapshots(image)}:
                raise InvalidSnapshotInUse(snapshot_id, image.id)
        return original_delete_snapshot(self, snapshot_id)

    EBSBackend.delete_snapshot = delete_snapshot

    for cls in (AmisResponse, EC2Response):
        cls.copy_image = copy_image
        cls.enable_image_deregistration_protection = lambda self: protection(self, True)
        cls.disable_image_deregistration_protection = lambda self: protection(self, False)
        cls.deregister_image = deregister_image
    for cls in (AmisResponse, EC2Response):
        cls.describe_images = describe_images_settling
        cls.enable_image_deprecation = enable_image_deprecation
        cls.register_image = register_image
    for cls in (LaunchTemplates, EC2Response):
        cls.create_launch_template_version = create_launch_template_version
        cls.describe_launch_template_versions = describe_launch_template_versions


# --------------------------------------------------------------------------------------------
# Failure injection shared by EKS and Auto Scaling
# --------------------------------------------------------------------------------------------

# What an injected EKS failure looks like: the DescribeUpdate error (EKS API reference,
# "ErrorDetail": errorCode is one of its documented values) and the node group health issue it
# leaves behind (EKS API reference, "Issue": code), if any.
EKS_FAILURES: dict[str, tuple[str, str, str | None]] = {
    "NodeCreationFailure": (
        "NodeCreationFailure",
        "Instances failed to join the kubernetes cluster",
        "NodeCreationFailure",
    ),
    "PodEvictionFailure": (
        "PodEvictionFailure",
        "Reached max retries while trying to evict pods from nodes in node group {group}",
        None,
    ),
    "AsgInstanceLaunchFailures": (
        "NodeCreationFailure",
        "Could not launch On-Demand Instances. InsufficientInstanceCapacity",
        "AsgInstanceLaunchFailures",
    ),
}


def _failure(name: str, tags: dict[str, str] | None) -> str | None:
    """The failure injected for group `name`: POST /opsy-ext/fail, else its outcome tag."""
    code = FAILING.get(name) or (tags or {}).get(OUTCOME_TAG)
    if not code:
        return None
    return "NodeCreationFailure" if code == "Failed" else code


def _launch(asg: Any, count: int, template: Any = None, version: str | None = None) -> list[Any]:
    """Launches `count` instances into `asg` from `template`/`version` (default: the group's
    own launch template), as Auto Scaling does during a scale-out or an instance refresh."""
    if count <= 0:
        return []
    saved = (asg.ec2_launch_template, asg.launch_template_version)
    if template is not None:
        asg.ec2_launch_template, asg.launch_template_version = template, version
    before = len(asg.instance_states)
    try:
        asg.replace_autoscaling_group_instances(count, asg.get_propagated_tags())
    finally:
        asg.ec2_launch_template, asg.launch_template_version = saved
    return asg.instance_states[before:]


def _terminate(asg: Any, states: list[Any]) -> None:
    ids = {s.instance.id for s in states}
    if not ids:
        return
    asg.instance_states = [s for s in asg.instance_states if s.instance.id not in ids]
    asg.autoscaling_backend.ec2_backend.terminate_instances(sorted(ids))


def _instance_template(state: Any) -> dict[str, str] | None:
    return getattr(state, "opsy_launch_template", None)


def _patch_instances() -> None:
    """Auto Scaling instances carry the launch template version they were launched from
    (Auto Scaling API reference, "Instance": LaunchTemplate), not the template's default
    version as moto reports; the version is resolved to its number at launch."""
    from moto.autoscaling.models import FakeAutoScalingGroup, InstanceState

    original_replace = FakeAutoScalingGroup.replace_autoscaling_group_instances

    def replace_autoscaling_group_instances(self, count_needed, propagated_tags):  # type: ignore[no-untyped-def]
        before = len(self.instance_states)
        original_replace(self, count_needed, propagated_tags)
        if self.ec2_launch_template is None:
            return
        version = self.ec2_launch_template.get_version(self.launch_template_version)
        for state in self.instance_states[before:]:
            state.opsy_launch_template = {
                "LaunchTemplateId": self.ec2_launch_template.id,
                "LaunchTemplateName": self.ec2_launch_template.name,
                "Version": str(version.number),
            }

    original_launch_template = InstanceState.launch_template

    def launch_template(self):  # type: ignore[no-untyped-def]
        return _instance_template(self) or original_launch_template.fget(self)

    FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances
    InstanceState.launch_template = property(launch_template)


# --------------------------------------------------------------------------------------------
# EKS
# --------------------------------------------------------------------------------------------


def _polls(tags: dict[str, str] | None) -> int:
    try:
        return max(0, int((tags or {}).get(POLLS_TAG, DEFAULT_POLLS)))
    except ValueError:
        return DEFAULT_POLLS


def _patch_eks() -> None:
    from moto.autoscaling.models import autoscaling_backends
    from moto.core.responses import ActionResult
    from moto.eks import urls
    from moto.eks.exceptions import (
        InvalidParameterException,
        InvalidRequestException,
        ResourceInUseException,
        ResourceNotFoundException,
    )
    from moto.eks.models import EKSBackend
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

    def backing_group(backend: Any, group: Any) -> Any:
        """The Auto Scaling group behind a managed node group (its nodes)."""
        names = [g["name"] for g in group.resources.get("autoScalingGroups", [])]
        asgs = autoscaling_backends[backend.account_id][backend.region_name].autoscaling_groups
        return next((asgs[n] for n in names if n in asgs), None)

    original_create_nodegroup = EKSBackend.create_nodegroup

    def create_nodegroup(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # EKS runs a managed node group's nodes in an Auto Scaling group of its own, tagged
        # eks:nodegroup-name and eks:cluster-name (EKS User Guide, "Managed node groups": "Amazon
        # EKS tags managed node group resources"). Here too, for groups with a launch template
        # that names an AMI, so that tests can see which image the nodes run.
        group = original_create_nodegroup(self, *args, **kwargs)
        template = group.launch_template or {}
        if not template:
            return group
        from moto.autoscaling.models import autoscaling_backends as asg_backends

        asgs = asg_backends[self.account_id][self.region_name]
        spec = {"Version": str(template.get("version", "$Default"))}
        if template.get("id"):
            spec["LaunchTemplateId"] = template["id"]
        else:
            spec["LaunchTemplateName"] = template.get("name")
        try:
            lt = (
                asgs.ec2_backend.get_launch_template(spec["LaunchTemplateId"])
                if "LaunchTemplateId" in spec
                else asgs.ec2_backend.get_launch_template_by_name(spec["LaunchTemplateName"])
            )
            if not lt.get_version(spec["Version"]).image_id:
                return group
        except Exception:  # noqa: BLE001 - a template moto cannot resolve: no nodes modelled
            return group
        name = group.resources["autoScalingGroups"][0]["name"]
        size = group.scaling_config
        tags = [
            {"Key": k, "Value": v, "PropagateAtLaunch": True, "ResourceId": name,
             "ResourceType": "auto-scaling-group"}
            for k, v in (
                ("eks:nodegroup-name", group.nodegroup_name),
                ("eks:cluster-name", group.cluster_name),
                (f"kubernetes.io/cluster/{group.cluster_name}", "owned"),
            )
        ]
        asgs.create_auto_scaling_group(
            name=name,
            availability_zones=[f"{self.region_name}a"],
            desired_capacity=size.get("desiredSize"),
            max_size=size.get("maxSize"),
            min_size=size.get("minSize"),
            launch_config_name=None,  # type: ignore[arg-type]
            launch_template=spec,
            vpc_zone_identifier=None,
            default_cooldown=None,
            health_check_period=None,
            health_check_type=None,
            load_balancers=[],
            target_group_arns=[],
            placement_group=None,
            termination_policies=[],
            tags=tags,
        )
        return group

    def busy(backend: Any, cluster_name: str, group: Any) -> None:
        # UpdateNodegroupConfig / UpdateNodegroupVersion, "Errors": ResourceInUseException while
        # another update of the node group is in progress.
        for entry in updates(backend).values():
            if (
                entry["cluster"] == cluster_name
                and entry["nodegroup"] == group.nodegroup_name
                and entry["update"]["status"] == "InProgress"
            ):
                raise ResourceInUseException(
                    clusterName=cluster_name,
                    nodegroupName=group.nodegroup_name,
                    addonName=None,
                    message=f"Nodegroup {group.nodegroup_name} is currently being updated "
                    f"(update {entry['update']['id']})",
                )

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
            # Injected failures are of node replacement (evicting pods, launching nodes), which
            # only a version update does.
            "failure": _failure(group.nodegroup_name, group.tags) if kind == "VersionUpdate" else None,
            "apply": apply,
        }
        # DescribeNodegroup, "status": UPDATING while an update runs.
        group.status = "UPDATING"
        return update

    def update_nodegroup_version(self):  # type: ignore[no-untyped-def]
        # EKS API reference, UpdateNodegroupVersion: asynchronous; the node group moves to the
        # launch template version only when the update succeeds.
        backend = self.eks_backend
        cluster_name = self._get_param("name")
        group = nodegroup(backend, cluster_name, self._get_param("nodegroupName"))
        template = self._get_param("launchTemplate")
        force = bool(self._get_param("force"))
        busy(backend, cluster_name, group)
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
            if new_template is None:
                return
            group.launch_template = new_template
            # The nodes are replaced with nodes of the new version.
            asg = backing_group(backend, group)
            if asg is not None:
                asg.launch_template_version = new_template["version"]
                asg.provided_launch_template_version = new_template["version"]
                old = list(asg.instance_states)
                _launch(asg, len(old))
                _terminate(asg, old)

        update = record(backend, cluster_name, group, "VersionUpdate", params, apply)
        return ActionResult({"update": update})

    def update_nodegroup_config(self):  # type: ignore[no-untyped-def]
        # EKS API reference, UpdateNodegroupConfig: asynchronous like a version update; the
        # new configuration applies when the update succeeds. UpdateParam types as documented
        # ("UpdateParam": MaxUnavailable, MaxUnavailablePercentage, MinSize, ...).
        backend = self.eks_backend
        cluster_name = self._get_param("name")
        group = nodegroup(backend, cluster_name, self._get_param("nodegroupName"))
        busy(backend, cluster_name, group)
        changes = {
            "labels": self._get_param("labels"),
            "taints": self._get_param("taints"),
            "scaling_config": self._get_param("scalingConfig"),
            "update_config": self._get_param("updateConfig"),
            "node_repair_config": self._get_param("nodeRepairConfig"),
        }
        params: list[dict[str, str]] = []
        names = {
            ("update_config", "maxUnavailable"): "MaxUnavailable",
            ("update_config", "maxUnavailablePercentage"): "MaxUnavailablePercentage",
            ("scaling_config", "minSize"): "MinSize",
            ("scaling_config", "maxSize"): "MaxSize",
            ("scaling_config", "desiredSize"): "DesiredSize",
            ("labels", "addOrUpdateLabels"): "LabelsToAdd",
            ("labels", "removeLabels"): "LabelsToRemove",
            ("taints", "addOrUpdateTaints"): "TaintsToAdd",
            ("taints", "removeTaints"): "TaintsToRemove",
        }
        for (arg, key), kind in names.items():
            value = (changes[arg] or {}).get(key)
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value)
                params.append({"type": kind, "value": text})
        if changes["node_repair_config"]:
            params.append({"type": "NodeRepairEnabled", "value": json.dumps(changes["node_repair_config"])})
        if not params:
            raise InvalidParameterException(message="No changes needed")

        def apply():  # type: ignore[no-untyped-def]
            backend.update_nodegroup_config(
                cluster_name=cluster_name,
                nodegroup_name=group.nodegroup_name,
                **{k: v for k, v in changes.items() if v},
            )
            # A new scalingConfig resizes the node group's Auto Scaling group (EKS API
            # reference, NodegroupScalingConfig: "desiredSize: The current number of nodes
            # that the managed node group should maintain").
            size = changes["scaling_config"] or {}
            asg = backing_group(backend, group)
            if asg is not None and size:
                if size.get("minSize") is not None:
                    asg.min_size = size["minSize"]
                if size.get("maxSize") is not None:
                    asg.max_size = size["maxSize"]
                if size.get("desiredSize") is not None:
                    asg.set_desired_capacity(size["desiredSize"])

        update = record(backend, cluster_name, group, "ConfigUpdate", params, apply)
        return ActionResult({"update": update})

    def advance(backend: Any, entry: dict[str, Any]) -> None:
        """One poll of an update: InProgress for `polls_left` polls, then its outcome."""
        update = entry["update"]
        if update["status"] != "InProgress":
            return
        if entry["polls_left"] > 0:
            entry["polls_left"] -= 1
            return
        if entry["nodegroup"] is None:
            # A control-plane update.
            update["status"] = "Successful"
            entry["apply"]()
            backend.clusters[entry["cluster"]].status = "ACTIVE"
            return
        group = nodegroup(backend, entry["cluster"], entry["nodegroup"])
        failure = entry["failure"]
        if failure:
            code, message, issue = EKS_FAILURES.get(
                failure, ("NodeCreationFailure", f"injected {failure}", None)
            )
            message = message.format(group=entry["nodegroup"])
            update["status"] = "Failed"
            update["errors"] = [
                {"errorCode": code, "errorMessage": message, "resourceIds": [entry["nodegroup"]]}
            ]
            if issue:
                # DescribeNodegroup, "status": DEGRADED with health issues.
                group.status = "DEGRADED"
                group.health = {
                    "issues": [
                        {"code": issue, "message": message, "resourceIds": [entry["nodegroup"]]}
                    ]
                }
            else:
                group.status = "ACTIVE"
            return
        update["status"] = "Successful"
        entry["apply"]()
        group.status = "ACTIVE"
        group.health = {"issues": []}

    def update_cluster_version(self):  # type: ignore[no-untyped-def]
        # EKS API reference, UpdateClusterVersion: updates the control plane "to a newer
        # Kubernetes version"; asynchronous (an update of type VersionUpdate with the Version
        # and PlatformVersion params; the cluster is UPDATING meanwhile); one minor version at a
        # time (EKS User Guide, "Update existing cluster to new Kubernetes version"), and
        # ResourceInUseException while another update of the cluster runs.
        backend = self.eks_backend
        name = self._get_param("name")
        version = str(self._get_param("version"))
        cluster = backend.clusters.get(name)
        if cluster is None:
            raise ResourceNotFoundException(
                clusterName=name, nodegroupName=None, message=f"No cluster found for name: {name}."
            )
        for entry in updates(backend).values():
            if entry["cluster"] == name and entry["nodegroup"] is None and entry["update"]["status"] == "InProgress":
                raise ResourceInUseException(
                    clusterName=name,
                    nodegroupName=None,
                    addonName=None,
                    message=f"Cluster {name} is currently being updated (update {entry['update']['id']})",
                )
        try:
            major, minor = (int(p) for p in str(cluster.version).split(".")[:2])
            new_major, new_minor = (int(p) for p in version.split(".")[:2])
        except ValueError:
            raise InvalidParameterException(message=f"Unsupported Kubernetes version {version}")
        if (new_major, new_minor) != (major, minor + 1):
            raise InvalidParameterException(
                message=f"Unsupported Kubernetes minor version update from {cluster.version} to {version}"
            )
        update = {
            "id": str(uuid.uuid4()),
            "status": "InProgress",
            "type": "VersionUpdate",
            "params": [
                {"type": "Version", "value": version},
                {"type": "PlatformVersion", "value": cluster.platformVersion},
            ],
            "createdAt": _now(),
            "errors": [],
        }
        updates(backend)[update["id"]] = {
            "update": update,
            "cluster": name,
            "nodegroup": None,
            "polls_left": DEFAULT_POLLS,
            "failure": None,
            "apply": lambda: setattr(cluster, "version", version),
        }
        cluster.status = "UPDATING"
        return ActionResult({"update": update})

    def describe_update(self):  # type: ignore[no-untyped-def]
        cluster_name = self._get_param("name")
        update_id = self._get_param("updateId")
        group_name = self._get_param("nodegroupName")
        # DescribeUpdate, "Errors": ResourceNotFoundException — the node group named is gone
        # (deleted since the update started): its updates are not found either.
        if group_name:
            nodegroup(self.eks_backend, cluster_name, group_name)
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
        # EKS API reference, ListUpdates: maxResults (1-100, default 50) and nextToken.
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
        size = int(self._get_param("maxResults") or 50)
        if not 1 <= size <= 100:
            raise InvalidParameterException(message="maxResults must be between 1 and 100")
        token = self._get_param("nextToken")
        start = int(token) if token else 0
        page = ids[start : start + size]
        result: dict[str, Any] = {"updateIds": page}
        if start + size < len(ids):
            result["nextToken"] = str(start + size)
        return ActionResult(result)

    original_list_nodegroups = EKSResponse.list_nodegroups

    def list_nodegroups(self):  # type: ignore[no-untyped-def]
        # moto answers a missing cluster with a 500; AWS with ResourceNotFoundException.
        cluster_name = self._get_param("name")
        if cluster_name not in self.eks_backend.clusters:
            raise ResourceNotFoundException(
                clusterName=cluster_name, message=f"No cluster found for name: {cluster_name}."
            )
        return original_list_nodegroups(self)

    EKSBackend.create_nodegroup = create_nodegroup
    EKSResponse.list_nodegroups = list_nodegroups
    EKSResponse.describe_nodegroup = describe_nodegroup
    EKSResponse.update_nodegroup_version = update_nodegroup_version
    EKSResponse.update_nodegroup_config = update_nodegroup_config
    EKSResponse.describe_update = describe_update
    EKSResponse.update_cluster_version = update_cluster_version
    EKSResponse.list_updates = list_updates


# --------------------------------------------------------------------------------------------
# Auto Scaling
# --------------------------------------------------------------------------------------------

# DescribeInstanceRefreshes, "InstanceRefresh": Status values of a refresh that has not ended.
REFRESH_ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking")


def _patch_autoscaling() -> None:
    from moto.autoscaling.exceptions import AutoscalingClientError, ValidationError
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import ActionResult

    class InstanceRefreshInProgress(AutoscalingClientError):
        # StartInstanceRefresh, "Errors": InstanceRefreshInProgress (HTTP 400).
        code = "InstanceRefreshInProgress"
        message = (
            "An Instance Refresh is already in progress and blocks the execution of this "
            "Instance Refresh."
        )

    class ActiveInstanceRefreshNotFound(AutoscalingClientError):
        # CancelInstanceRefresh, "Errors": ActiveInstanceRefreshNotFound (HTTP 400).
        code = "ActiveInstanceRefreshNotFound"

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

    def flag(value: Any) -> bool:
        return str(value).lower() == "true"

    def start_instance_refresh(self):  # type: ignore[no-untyped-def]
        # Auto Scaling API reference, StartInstanceRefresh; RefreshPreferences (AutoRollback,
        # MinHealthyPercentage, SkipMatching) and DesiredConfiguration.
        backend = self.autoscaling_backend
        name = self._get_param("AutoScalingGroupName")
        group = get_group(backend, name)
        entries = refreshes(backend).setdefault(name, [])
        if any(e["Status"] in REFRESH_ACTIVE for e in entries):
            raise InstanceRefreshInProgress()
        preferences = self._get_param("Preferences", {}) or {}
        desired = self._get_param("DesiredConfiguration", {}) or {}
        desired_template = desired.get("LaunchTemplate")
        auto_rollback = flag(preferences.get("AutoRollback", False))
        if auto_rollback:
            # RefreshPreferences, AutoRollback: "A rollback is not supported in the following
            # situations: There is no desired configuration specified for the instance refresh.
            # [...] The Auto Scaling group uses the launch template's $Latest or $Default
            # version."
            if not desired_template:
                raise ValidationError(
                    "AutoRollback is not supported when no DesiredConfiguration is specified."
                )
            versions = {
                str(group.provided_launch_template_version or "$Default"),
                str(desired_template.get("Version") or "$Default"),
            }
            if versions & {"$Latest", "$Default"}:
                raise ValidationError(
                    "AutoRollback is not supported when the Auto Scaling group or the desired "
                    "configuration uses the launch template's $Latest or $Default version."
                )
        if desired_template:
            ec2 = backend.ec2_backend
            if desired_template.get("LaunchTemplateId"):
                template = ec2.get_launch_template(desired_template["LaunchTemplateId"])
            else:
                template = ec2.get_launch_template_by_name(desired_template.get("LaunchTemplateName"))
            version = str(desired_template.get("Version") or "$Default")
        else:
            template, version = group.ec2_launch_template, group.launch_template_version
        resolved = str(template.get_version(version).number) if template is not None else None
        entry = {
            "InstanceRefreshId": str(uuid.uuid4()),
            "AutoScalingGroupName": name,
            "Status": "Pending",
            "StatusReason": None,
            "StartTime": _now(),
            "PercentageComplete": 0,
            "InstancesToUpdate": len(group.instance_states),
            "Preferences": preferences,
            "DesiredConfiguration": desired or None,
            "_template": template,
            "_version": version,
            "_resolved": resolved,
            "_min_healthy": int(preferences.get("MinHealthyPercentage", 90)),
            "_skip_matching": flag(preferences.get("SkipMatching", False)),
            "_auto_rollback": auto_rollback,
            "_replaced": [],
            "_total": None,
            "_polls_left": _polls(group_tags(group)),
            "_failure": _failure(name, group_tags(group)),
        }
        entries.insert(0, entry)
        return ActionResult({"InstanceRefreshId": entry["InstanceRefreshId"]})

    def matches(entry: dict[str, Any], state: Any) -> bool:
        lt = _instance_template(state) or {}
        template = entry["_template"]
        return (
            template is not None
            and lt.get("LaunchTemplateId") == template.id
            and lt.get("Version") == entry["_resolved"]
        )

    def end(entry: dict[str, Any], status: str, reason: str | None) -> None:
        entry["Status"] = status
        entry["StatusReason"] = reason
        entry["EndTime"] = _now()

    def advance(group: Any, entry: dict[str, Any]) -> None:
        """One poll of a refresh (DescribeInstanceRefreshes counts as one)."""
        status = entry["Status"]
        if status == "Pending":
            entry["Status"] = "InProgress"
            return
        if status == "Cancelling":
            end(entry, "Cancelled", "The instance refresh was cancelled.")
            return
        if status == "RollbackInProgress":
            # Rollback: the instances replaced so far are replaced again with the group's own
            # configuration, which the refresh never changed.
            new = [s for s in group.instance_states if s.instance.id in entry["_replaced"]]
            _launch(group, len(new))
            _terminate(group, new)
            end(entry, "RollbackSuccessful", entry["StatusReason"])
            return
        if status != "InProgress":
            return
        if entry["_polls_left"] > 0:
            entry["_polls_left"] -= 1
            return
        todo = [
            s
            for s in group.instance_states
            if s.instance.id not in entry["_replaced"]
            and not (entry["_skip_matching"] and matches(entry, s))
        ]
        if entry["_total"] is None:
            entry["_total"] = len(todo)
        if not todo:
            # Only a successful refresh with a desired configuration changes the group.
            desired = (entry["DesiredConfiguration"] or {}).get("LaunchTemplate")
            if desired:
                group.ec2_launch_template = entry["_template"]
                group.launch_template_version = entry["_version"]
                group.provided_launch_template_version = entry["_version"]
            entry["PercentageComplete"] = 100
            entry["InstancesToUpdate"] = 0
            end(entry, "Successful", None)
            return
        # Batches keep MinHealthyPercentage of the group in service.
        size = len(group.instance_states)
        batch = max(1, (size * (100 - entry["_min_healthy"])) // 100)
        old = todo[:batch]
        new = _launch(group, len(old), entry["_template"], entry["_version"])
        _terminate(group, old)
        entry["_replaced"].extend(s.instance.id for s in new)
        done = entry["_total"] - len(todo) + len(old)
        entry["PercentageComplete"] = int(100 * done / max(1, entry["_total"]))
        entry["InstancesToUpdate"] = entry["_total"] - done
        failure = entry["_failure"]
        if failure:
            reason = f"{failure}: the new instances failed their health checks."
            if entry["_auto_rollback"]:
                entry["Status"] = "RollbackInProgress"
                entry["StatusReason"] = f"Rolling back: {reason}"
                entry["RollbackDetails"] = {
                    "RollbackReason": reason,
                    "RollbackStartTime": _now(),
                    "PercentageCompleteOnRollback": entry["PercentageComplete"],
                    "InstancesToUpdateOnRollback": len(entry["_replaced"]),
                }
            else:
                end(entry, "Failed", reason)

    def public(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if not k.startswith("_") and v is not None}

    def describe_instance_refreshes(self):  # type: ignore[no-untyped-def]
        backend = self.autoscaling_backend
        name = self._get_param("AutoScalingGroupName")
        group = get_group(backend, name)
        wanted = set(self._get_param("InstanceRefreshIds", []))
        entries = [
            e for e in refreshes(backend).get(name, []) if not wanted or e["InstanceRefreshId"] in wanted
        ]
        for entry in entries:
            advance(group, entry)
        return ActionResult({"InstanceRefreshes": [public(e) for e in entries]})

    def cancel_instance_refresh(self):  # type: ignore[no-untyped-def]
        # CancelInstanceRefresh: the refresh goes to Cancelling, then Cancelled; instances
        # already replaced stay replaced.
        backend = self.autoscaling_backend
        name = self._get_param("AutoScalingGroupName")
        get_group(backend, name)
        for entry in refreshes(backend).get(name, []):
            if entry["Status"] in ("Pending", "InProgress"):
                entry["Status"] = "Cancelling"
                return ActionResult({"InstanceRefreshId": entry["InstanceRefreshId"]})
        raise ActiveInstanceRefreshNotFound(
            f"No in progress or pending Instance Refresh found for Auto Scaling group {name}"
        )

    AutoScalingResponse.start_instance_refresh = start_instance_refresh
    AutoScalingResponse.describe_instance_refreshes = describe_instance_refreshes
    AutoScalingResponse.cancel_instance_refresh = cancel_instance_refresh


# --------------------------------------------------------------------------------------------
# HTTP middleware: error injection and request counting
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# What each request asks IAM for (for the tests' policy checks)
# --------------------------------------------------------------------------------------------

_EKS_ROUTES = [
    ("GET", re.compile(r"^/clusters/(?P<c>[^/]+)$"), "DescribeCluster"),
    ("GET", re.compile(r"^/clusters/(?P<c>[^/]+)/node-groups$"), "ListNodegroups"),
    ("GET", re.compile(r"^/clusters/(?P<c>[^/]+)/node-groups/(?P<ng>[^/]+)$"), "DescribeNodegroup"),
    ("POST", re.compile(r"^/clusters/(?P<c>[^/]+)/node-groups/(?P<ng>[^/]+)/update-version$"), "UpdateNodegroupVersion"),
    ("POST", re.compile(r"^/clusters/(?P<c>[^/]+)/node-groups/(?P<ng>[^/]+)/update-config$"), "UpdateNodegroupConfig"),
    ("GET", re.compile(r"^/clusters/(?P<c>[^/]+)/updates$"), "ListUpdates"),
    ("POST", re.compile(r"^/clusters/(?P<c>[^/]+)/updates$"), "UpdateClusterVersion"),
    ("GET", re.compile(r"^/clusters/(?P<c>[^/]+)/updates/(?P<id>[^/]+)$"), "DescribeUpdate"),
]

_EC2_ARN_TYPES = {
    "ami-": "image",
    "lt-": "launch-template",
    "i-": "instance",
    "snap-": "snapshot",
    "vol-": "volume",
    "sg-": "security-group",
}


def image_snapshots(image: Any) -> list[Any]:
    """Every snapshot of an image: moto's root one, then those of further mappings."""
    root = getattr(image, "ebs_snapshot", None)
    return ([root] if root is not None else []) + [s for _, s in getattr(image, "opsy_volumes", [])]


def _ec2_arn(region: str, account: str, resource_id: str) -> str:
    kind = next((k for p, k in _EC2_ARN_TYPES.items() if resource_id.startswith(p)), "resource")
    # Images and snapshots have no account in their ARN (Service Authorization Reference, EC2).
    owner = "" if kind in ("image", "snapshot") else account
    return f"arn:aws:ec2:{region}:{owner}:{kind}/{resource_id}"


def _numbered(params: dict[str, list[str]], prefix: str) -> list[str]:
    """`Prefix.1`, `Prefix.2`, … of a query request, in order."""
    found = []
    n = 1
    while f"{prefix}.{n}" in params:
        found.append(params[f"{prefix}.{n}"][0])
        n += 1
    return found


def describe_call(environ: dict[str, Any], action: str, params: dict[str, list[str]]) -> dict[str, Any] | None:
    """The IAM view of one request: the signing key, `service:Action`, the resources' ARNs with
    the tags they carry now, the tags the request writes, and other condition keys (IAM User
    Guide, "Policy evaluation logic"; resource ARN formats and condition keys from the Service
    Authorization Reference of EC2, Amazon EKS, Amazon EC2 Auto Scaling and Amazon SNS)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = re.search(r"Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/", auth)
    if not m:
        return None
    key, region, service = m.groups()
    from moto.iam.models import get_account_id_from, iam_backends

    # The account the key belongs to: the default one, or an assumed role's (whose calls moto
    # serves from the role's account).
    account = get_account_id_from(key)
    access_key = iam_backends[account]["aws"].access_keys.get(key)
    role = getattr(access_key, "role_arn", None)

    first = lambda name: (params.get(name) or [None])[0]  # noqa: E731
    resources: list[str] = ["*"]
    resource_tags: dict[str, dict[str, str]] = {}
    request_tags: dict[str, str] = {}
    context: dict[str, str] = {}
    # Further authorisations the request needs (tagging at creation).
    implied: list[dict[str, Any]] = []
    implied_snapshots: list[str] = []
    if service == "ec2":
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[account][region]
        ids: list[str] = []
        if action == "CreateTags":
            ids = _numbered(params, "ResourceId")
            n = 1
            while f"Tag.{n}.Key" in params:
                request_tags[params[f"Tag.{n}.Key"][0]] = (params.get(f"Tag.{n}.Value") or [""])[0]
                n += 1
        elif action in (
            "EnableImageDeprecation",
            "DisableImageDeprecation",
            "DeregisterImage",
            "DescribeImageAttribute",
            "ModifyImageAttribute",
            "EnableImageDeregistrationProtection",
            "DisableImageDeregistrationProtection",
        ):
            ids = [first("ImageId")]
        elif action in ("DeleteSnapshot", "ModifySnapshotAttribute"):
            ids = [first("SnapshotId")]
        elif action == "CopyImage":
            # Service Authorization Reference, EC2, CopyImage: the new image (in the
            # destination Region; tags from TagSpecifications are request tags) and the source
            # image (in SourceRegion, with its tags).
            from moto.ec2.models import ec2_backends as all_backends

            specs: dict[str, dict[str, str]] = {}
            n = 1
            while f"TagSpecification.{n}.ResourceType" in params:
                kind = params[f"TagSpecification.{n}.ResourceType"][0]
                m = 1
                while f"TagSpecification.{n}.Tag.{m}.Key" in params:
                    specs.setdefault(kind, {})[params[f"TagSpecification.{n}.Tag.{m}.Key"][0]] = (
                        params.get(f"TagSpecification.{n}.Tag.{m}.Value") or [""]
                    )[0]
                    m += 1
                n += 1
            request_tags.update(specs.get("image", {}))
            source, source_region = first("SourceImageId"), first("SourceRegion") or region
            source_arn = _ec2_arn(source_region, account, source or "ami-")
            resources = [f"arn:aws:ec2:{region}::image/*", source_arn]
            resource_tags[source_arn] = dict(all_backends[account][source_region].tags.get(source, {}))
            # Tags written at creation are also authorised as ec2:CreateTags on the new
            # resources, with ec2:CreateAction = CopyImage (EC2 User Guide, "Grant permission
            # to tag Amazon EC2 resources during creation"; Grant permissions to copy AMIs).
            for kind, tags in specs.items():
                implied.append(
                    {
                        "access_key": key,
                        "role": role,
                        "action": "ec2:CreateTags",
                        "resources": [f"arn:aws:ec2:{region}::{kind}/*"],
                        "request_tags": tags,
                        "resource_tags": {},
                        "context": {"ec2:CreateAction": "CopyImage"},
                    }
                )
        elif action == "CreateLaunchTemplateVersion":
            lt = first("LaunchTemplateId")
            if not lt and first("LaunchTemplateName"):
                try:
                    lt = backend.get_launch_template_by_name(first("LaunchTemplateName")).id
                except Exception:  # noqa: BLE001 - moto answers the request itself
                    lt = None
            ids = [lt] if lt else []
        if action == "DeregisterImage" and first("ImageId") in backend.amis:
            # For the mutation log: the snapshots the image owned (its deregistration frees them).
            implied_snapshots = [snap.id for snap in image_snapshots(backend.amis[first("ImageId")])]
            if (first("DeleteAssociatedSnapshots") or "").lower() == "true":
                # The snapshots deleted with the image are authorised as ec2:DeleteSnapshot on
                # each (the API reference names no separate action; a role that may not delete
                # a snapshot would get "missing-permissions" for it): the tests' policy checks
                # see them, and the mutation log records their tags then.
                context["opsy:DeleteAssociatedSnapshots"] = "true"
                for snap in implied_snapshots:
                    arn = _ec2_arn(region, account, snap)
                    resource_tags[arn] = dict(backend.tags.get(snap, {}))
                    implied.append(
                        {
                            "access_key": key,
                            "role": role,
                            "action": "ec2:DeleteSnapshot",
                            "resources": [arn],
                            "request_tags": {},
                            "resource_tags": {arn: dict(backend.tags.get(snap, {}))},
                            "context": {},
                        }
                    )
        if ids:
            resources = [_ec2_arn(region, account, i) for i in ids if i]
            for i in ids:
                if i:
                    resource_tags[_ec2_arn(region, account, i)] = dict(backend.tags.get(i, {}))
    elif service == "eks":
        for method, pattern, name in _EKS_ROUTES:
            hit = pattern.match(environ.get("PATH_INFO", ""))
            if method == environ.get("REQUEST_METHOD") and hit:
                action = name
                cluster = hit.group("c")
                group = hit.groupdict().get("ng") or first("nodegroupName")
                if group:
                    resources = [f"arn:aws:eks:{region}:{account}:nodegroup/{cluster}/{group}/*"]
                else:
                    resources = [f"arn:aws:eks:{region}:{account}:cluster/{cluster}"]
                break
    elif service == "autoscaling":
        if action in ("StartInstanceRefresh", "CancelInstanceRefresh", "RollbackInstanceRefresh"):
            from moto.autoscaling.models import autoscaling_backends

            name = first("AutoScalingGroupName")
            group = autoscaling_backends[account][region].autoscaling_groups.get(name)
            arn = group.arn if group is not None else (
                f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{name}"
            )
            resources = [arn]
            if group is not None:
                resource_tags[arn] = {t["Key"]: t["Value"] for t in group.tags}
    elif service == "sts":
        # AssumeRole acts on the role (Service Authorization Reference, AWS STS: resource
        # type role). Session tags (`Tags.member.N`) are aws:RequestTag/… and need
        # sts:TagSession on the role too (IAM User Guide, "Passing session tags in AWS STS":
        # "Permissions required to add session tags").
        if action == "AssumeRole" and first("RoleArn"):
            resources = [first("RoleArn")]
            n = 1
            while f"Tags.member.{n}.Key" in params:
                request_tags[params[f"Tags.member.{n}.Key"][0]] = (params.get(f"Tags.member.{n}.Value") or [""])[0]
                n += 1
            if request_tags:
                implied.append(
                    {
                        "access_key": key,
                        "role": role,
                        "action": "sts:TagSession",
                        "resources": list(resources),
                        "request_tags": dict(request_tags),
                        "resource_tags": {},
                        "context": {},
                    }
                )
    elif service == "ssm":
        # Service Authorization Reference, AWS Systems Manager: GetParameter on resource type
        # parameter; AWS's public parameters have no account in their ARN.
        if action == "GetParameter" and first("Name"):
            name = first("Name")
            path = name if name.startswith("/") else f"/{name}"
            owner = "" if path.startswith("/aws/") else account
            resources = [f"arn:aws:ssm:{region}:{owner}:parameter{path}"]
    elif service == "sns":
        if action == "Publish" and first("TopicArn"):
            resources = [first("TopicArn")]
    elif service == "monitoring":
        # CloudWatch signs as "monitoring"; its IAM actions are "cloudwatch:…" (Service
        # Authorization Reference, Amazon CloudWatch: DescribeAlarms on resource type alarm).
        service = "cloudwatch"
        if action == "DescribeAlarms":
            names = _numbered(params, "AlarmNames.member")
            resources = [f"arn:aws:cloudwatch:{region}:{account}:alarm:{n}" for n in names] or [
                f"arn:aws:cloudwatch:{region}:{account}:alarm:*"
            ]
    # The signer's session tags are its aws:PrincipalTag/… (IAM User Guide, "Passing session
    # tags in AWS STS": session tags are principal tags of the session).
    principal_tags = dict(SESSION_TAGS.get(key, {}))
    for extra in implied:
        extra["principal_tags"] = principal_tags
    return {
        "access_key": key,
        "role": role,
        "action": f"{service}:{action}",
        "resources": resources,
        "request_tags": request_tags,
        "resource_tags": resource_tags,
        "context": context,
        "principal_tags": principal_tags,
        "implied": implied,
        "snapshots": implied_snapshots,
    }


# EC2's limits on filters (EC2 API reference, "Error codes for the Amazon EC2 API":
# FilterLimitExceeded, "The request uses too many filters or too many filter values"; AWS
# answers "The maximum number of filter values specified on a single call is 200", counting the
# values of every filter of the call, and "The maximum length for a filter value is 255
# characters").
MAX_FILTER_VALUES = 200
MAX_FILTER_VALUE_LENGTH = 255


def _filter_limit(params: dict[str, list[str]]) -> str | None:
    """Why EC2 refuses the filters of a query request (`Filter.N.Value.M`), or None."""
    values = [v for key, vs in params.items() if re.fullmatch(r"Filter\.\d+\.Value\.\d+", key) for v in vs]
    if len(values) > MAX_FILTER_VALUES:
        return f"The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}"
    if any(len(v) > MAX_FILTER_VALUE_LENGTH for v in values):
        return f"The maximum length for a filter value is {MAX_FILTER_VALUE_LENGTH} characters"
    return None


def _default_key(snapshot: Any) -> bool:
    """Whether a snapshot is encrypted with the account's AWS-managed EBS key."""
    key = getattr(snapshot, "kms_key_id", None) or ""
    return bool(getattr(snapshot, "encrypted", False)) and (key in ("", "alias/aws/ebs") or key.endswith(":alias/aws/ebs"))


def _ec2_refusal(environ: dict[str, Any], action: str, params: dict[str, list[str]]) -> dict[str, Any] | None:
    """EC2 refusals moto lacks, as an injected-error rule (or None):

    - sharing a snapshot encrypted with the AWS-managed EBS key (EC2 User Guide, "Share an
      Amazon EBS snapshot": snapshots encrypted with the default AWS managed key can't be
      shared): ModifySnapshotAttribute adding createVolumePermission answers
      OperationNotPermitted, "Encrypted snapshots with EBS default key cannot be shared";
      ModifyImageAttribute adding a launch permission to an AMI with such a snapshot answers
      InvalidParameter (EC2 User Guide, "Share an AMI with specific AWS accounts": AMIs with
      snapshots encrypted with the AWS managed key can't be shared);
    - EnableImageDeprecation with a DeprecateAt in the past or more than 10 years ahead (EC2
      API reference, EnableImageDeprecation: "You can’t specify a date in the past. The upper
      limit for DeprecateAt is 10 years from now"); the reference names no error code for
      either, so InvalidParameterValue. A minute of leeway covers EC2 rounding to the minute.
    """
    m = re.search(r"Credential=([^/]+)/\d{8}/([^/]+)/ec2/", environ.get("HTTP_AUTHORIZATION", ""))
    if not m:
        return None
    key, region = m.groups()
    first = lambda name: (params.get(name) or [None])[0]  # noqa: E731
    from moto.ec2.models import ec2_backends
    from moto.iam.models import get_account_id_from

    backend = ec2_backends[get_account_id_from(key)][region]
    if action == "ModifySnapshotAttribute" and (first("OperationType") or "").lower() == "add":
        snapshot = backend.snapshots.get(first("SnapshotId") or "")
        if snapshot is not None and _default_key(snapshot):
            return {
                "code": "OperationNotPermitted",
                "status": 400,
                "message": "Encrypted snapshots with EBS default key cannot be shared",
            }
    if action == "ModifyImageAttribute" and any(k.startswith("LaunchPermission.Add.") for k in params):
        image = backend.amis.get(first("ImageId") or "")
        if image is not None and any(_default_key(s) for s in image_snapshots(image)):
            return {
                "code": "InvalidParameter",
                "status": 400,
                "message": "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot.",
            }
    if action == "EnableImageDeprecation" and first("DeprecateAt"):
        from datetime import timedelta

        from moto.core.utils import utcnow

        try:
            at = datetime.fromisoformat(first("DeprecateAt").replace("Z", "+00:00"))
        except ValueError:
            return None
        now = utcnow().replace(tzinfo=timezone.utc)
        if at < now - timedelta(minutes=1) or at > now + timedelta(days=3653):
            return {
                "code": "InvalidParameterValue",
                "status": 400,
                "message": f"DeprecateAt {first('DeprecateAt')} must not be in the past nor more than 10 years from now",
            }
    return None


_READ_ONLY = ("Describe", "List", "Get", "AssumeRole")


def _mutation(call: dict[str, Any] | None, action: str, environ: dict[str, Any]) -> dict[str, Any] | None:
    """The mutation log's entry of a request that changes something on AWS, else None: any
    action but Describe*/List*/Get* (and STS AssumeRole*, which changes nothing in the account);
    a REST request (EKS) by its method when its route is not known."""
    if call is None:
        return None
    name = call["action"].split(":", 1)[-1]
    if name.startswith("?"):
        name = action
    if name.startswith(_READ_ONLY) or name.startswith(("GET ", "HEAD ")):
        return None
    return {
        "access_key": call["access_key"],
        "action": call["action"],
        "resources": [r for r in call.get("resources", []) if r != "*"],
        "request_tags": dict(call.get("request_tags", {})),
        "resource_tags": dict(call.get("resource_tags", {})),
        "snapshots": list(call.get("snapshots", [])),
        "deletes_snapshots": call.get("context", {}).get("opsy:DeleteAssociatedSnapshots") == "true",
        "status": None,
        "carried_out": None,
    }


def _facts() -> dict[str, Any]:
    """The AWS state the tests' invariants read, straight from the backends of every account
    and region in use (not counted as requests, so a test may check them at any time): images
    with their tags, state and snapshots; launch template versions with their image and
    description; instances with their image; EKS node-group updates and Auto Scaling instance
    refreshes with what they move to, in the order they started."""
    from moto.autoscaling.models import autoscaling_backends
    from moto.ec2.models import ec2_backends
    from moto.eks.models import eks_backends

    out: dict[str, list[dict[str, Any]]] = {
        "images": [], "template_versions": [], "instances": [], "updates": [], "refreshes": []
    }
    for account, regions in dict.items(ec2_backends):
        for region, backend in dict.items(regions):
            for ami in list(backend.amis.values()):
                out["images"].append({
                    "id": ami.id,
                    "region": region,
                    "owner": str(ami.owner_id),
                    "state": getattr(ami, "state", "available"),
                    "tags": dict(backend.tags.get(ami.id, {})),
                    "snapshots": [snap.id for snap in image_snapshots(ami)],
                })
            for template in list(backend.launch_templates.values()):
                for version in template.versions:
                    out["template_versions"].append({
                        "template": template.id,
                        "region": region,
                        "version": int(version.number),
                        "image": (version.data or {}).get("ImageId"),
                        "description": version.description or "",
                    })
            for reservation in list(backend.reservations.values()):
                for instance in reservation.instances:
                    out["instances"].append({
                        "id": instance.id,
                        "region": region,
                        "image": instance.image_id,
                        "state": instance.state,
                    })
    for account, regions in dict.items(eks_backends):
        for region, backend in dict.items(regions):
            entries = sorted(
                getattr(backend, "opsy_updates", {}).values(), key=lambda e: e["update"]["createdAt"]
            )
            for entry in entries:
                update = entry["update"]
                params = {p["type"]: p["value"] for p in update["params"]}
                out["updates"].append({
                    "id": update["id"],
                    "region": region,
                    "cluster": entry["cluster"],
                    "nodegroup": entry["nodegroup"],
                    "type": update["type"],
                    "status": update["status"],
                    "params": params,
                })
    for account, regions in dict.items(autoscaling_backends):
        for region, backend in dict.items(regions):
            for name, entries in getattr(backend, "opsy_refreshes", {}).items():
                for entry in sorted(entries, key=lambda e: e["StartTime"]):
                    template = entry.get("_template")
                    out["refreshes"].append({
                        "id": entry["InstanceRefreshId"],
                        "region": region,
                        "group": name,
                        "status": entry["Status"],
                        "template": template.id if template is not None else None,
                        "version": entry.get("_resolved"),
                    })
    return out


class Crash:
    """The crash of a client at its N-th mutating request (``/opsy-ext/crash-after``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.released.set()
        self.armed = False
        self.after = 0
        self.seen = 0
        self.carried_out = True
        self.access_key: str | None = None
        self.crashed = False
        self.action: str | None = None
        self.held = 0

    def arm(self, after: int, carried_out: bool, access_key: str | None) -> None:
        self.clear()
        with self.lock:
            self.armed, self.after, self.seen = True, after, 0
            self.carried_out, self.access_key = carried_out, access_key
            self.crashed, self.action, self.held = False, None, 0
            self.released = threading.Event()

    def clear(self) -> None:
        with self.lock:
            self.armed = False
            self.crashed = False
            self.released.set()

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {
                "armed": self.armed,
                "after": self.after,
                "seen": self.seen,
                "crashed": self.crashed,
                "carried_out": self.carried_out,
                "action": self.action,
                "held": self.held,
            }

    def fate(self, access_key: str | None, mutation: dict[str, Any] | None) -> str | None:
        """None (served as usual), "carried-out" (served, then held), "lost" (held unserved)
        or "hold" (the client crashed already)."""
        with self.lock:
            if not self.armed or (self.access_key is not None and access_key != self.access_key):
                return None
            if self.crashed:
                return "hold"
            if mutation is None:
                return None
            self.seen += 1
            if self.seen < self.after:
                return None
            self.crashed = True
            self.action = mutation["action"]
            return "carried-out" if self.carried_out else "lost"

    def hold(self, environ: dict[str, Any]) -> list[bytes]:
        """Holds the request until the crash is cleared, then drops its connection unanswered."""
        with self.lock:
            self.held += 1
            released = self.released
        released.wait()
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            import socket

            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ConnectionAbortedError("opsy-ext: the client crashed")


class Middleware:
    """Wraps moto's WSGI application."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rules: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.mutations: list[dict[str, Any]] = []
        self.crash = Crash()

    @staticmethod
    def _action(environ: dict[str, Any]) -> tuple[str, dict[str, list[str]]]:
        """The action (or `METHOD /path`) and the query and form parameters of a request."""
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if environ.get("REQUEST_METHOD") == "POST" and "x-www-form-urlencoded" in environ.get(
            "CONTENT_TYPE", ""
        ):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            import io

            environ["wsgi.input"] = io.BytesIO(body)
            for key, values in parse_qs(body.decode("utf-8", "replace")).items():
                params.setdefault(key, []).extend(values)
        if "Action" in params:
            return params["Action"][0], params
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target and "amz-json" in environ.get("CONTENT_TYPE", ""):
            # JSON protocols (Systems Manager): the action is the target's operation, the
            # parameters the body's top-level strings.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            import io

            environ["wsgi.input"] = io.BytesIO(body)
            try:
                fields = json.loads(body or b"{}")
            except ValueError:
                fields = {}
            for key, value in fields.items() if isinstance(fields, dict) else []:
                if isinstance(value, str):
                    params.setdefault(key, []).append(value)
            return target.rsplit(".", 1)[-1], params
        return f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}", params

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
        if path == "/opsy-ext/calls":
            with self.lock:
                if method == "DELETE":
                    self.calls.clear()
                return self._json(start_response, "200 OK", list(self.calls))
        if path == "/opsy-ext/fail":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with self.lock:
                if body.get("fail", True):
                    FAILING[body["group"]] = body.get("code") or "Failed"
                else:
                    FAILING.pop(body["group"], None)
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
        if path == "/opsy-ext/deprecated":
            # An image whose deprecation time has passed (EC2 refuses a DeprecateAt in the
            # past, so only time makes an image deprecated): {"region", "id", "at"} (ISO 8601),
            # for any account's image.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            from moto.ec2.models import ec2_backends

            for regions in dict.values(ec2_backends):
                backend = dict.get(regions, body["region"])
                if backend is not None and body["id"] in backend.amis:
                    at = datetime.fromisoformat(body["at"].replace("Z", "+00:00")).astimezone(timezone.utc)
                    backend.amis[body["id"]].deprecation_time = at.strftime("%Y-%m-%dT%H:%M:00.000Z")
                    return self._json(start_response, "200 OK", {"ok": True})
            return self._json(start_response, "404 Not Found", {"error": f"no image {body['id']}"})
        if path == "/opsy-ext/publish-parameter":
            # A public parameter published by AWS (Systems Manager: names under /aws/service/,
            # which PutParameter refuses to accounts), e.g. the recommended EKS-optimised AMI
            # of a Kubernetes version. Each call is a new version, as GetParameter reports it.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.core.utils import utcnow
            from moto.ssm.models import Parameter, ssm_backends

            parameters = ssm_backends[DEFAULT_ACCOUNT_ID][body["region"]]._parameters
            versions = parameters[body["name"]]
            versions.append(
                Parameter(
                    account_id=DEFAULT_ACCOUNT_ID,
                    name=body["name"],
                    value=body["value"],
                    parameter_type="String",
                    description=None,
                    allowed_pattern=None,
                    keyid=None,
                    last_modified_date=utcnow(),
                    version=len(versions) + 1,
                    data_type="text",
                )
            )
            return self._json(start_response, "200 OK", {"Version": len(versions)})
        if path == "/opsy-ext/inject-error":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            rule = json.loads(environ["wsgi.input"].read(length) or b"{}")
            rule.setdefault("count", 1)
            rule.setdefault("status", 400)
            with self.lock:
                self.rules.append(rule)
            return self._json(start_response, "200 OK", {"ok": True})
        if path == "/opsy-ext/facts":
            with self.lock:
                return self._json(start_response, "200 OK", _facts())
        if path == "/opsy-ext/mutations":
            with self.lock:
                return self._json(start_response, "200 OK", list(self.mutations))
        if path == "/opsy-ext/crash-after":
            if method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
                after = int(body.get("mutations", 0))
                if after < 1:
                    return self._json(start_response, "400 Bad Request", {"error": "mutations must be at least 1"})
                self.crash.arm(after, bool(body.get("carried_out", True)), body.get("access_key"))
            elif method == "DELETE":
                self.crash.clear()
            return self._json(start_response, "200 OK", self.crash.report())
        if path.startswith("/moto-api"):
            if path == "/moto-api/reset":
                self.crash.clear()
                with self.lock:
                    self.rules.clear()
                    self.calls.clear()
                    self.mutations.clear()
                    FAILING.clear()
                    SESSION_TAGS.clear()
            return self.app(environ, start_response)

        if path.startswith("/service/") and "/operation/" in path:
            return self._rpc_v2_cbor(environ, start_response)
        action, params = self._action(environ)
        try:
            call = describe_call(environ, action, params)
        except Exception as e:  # noqa: BLE001 - the request itself is still answered
            call = {"access_key": "?", "action": f"?:{action}", "resources": [f"error: {e}"]}
        mutation = _mutation(call, action, environ)
        with self.lock:
            self.counts[action] += 1
            if call is not None:
                call.pop("snapshots", None)
                implied = call.pop("implied", [])
                self.calls.append(call)
                self.calls.extend(implied)
            rule = next((r for r in self.rules if action.startswith(r["match"]) and r["count"] > 0), None)
            if rule is not None:
                rule["count"] -= 1
            if mutation is not None:
                mutation["seq"] = len(self.mutations) + 1
                self.mutations.append(mutation)
        fate = self.crash.fate(call["access_key"] if call else None, mutation)
        if fate in ("hold", "lost") or (fate is not None and rule is not None):
            # The client crashed before (nothing it sends reaches AWS), its request is lost, or
            # AWS refuses the crashing request (an injected error): nothing is carried out.
            if mutation is not None:
                mutation.update(status=0, carried_out=False)
            return self.crash.hold(environ)
        if rule is None and "/ec2/" in environ.get("HTTP_AUTHORIZATION", ""):
            refused = _filter_limit(params)
            if refused is not None:
                rule = {"code": "FilterLimitExceeded", "status": 400, "message": refused}
            else:
                rule = _ec2_refusal(environ, action, params)
        if rule is not None:
            if mutation is not None:
                mutation.update(status=int(rule["status"]), carried_out=False)
            return self._error(environ, start_response, rule)
        if action == "AssumeRole" and call is not None and call.get("request_tags") and fate is None:
            # Remember the new session's tags under the access key it is given.
            assumed: dict[str, Any] = {}

            def keep(status: str, headers: list, exc_info: Any = None) -> Any:  # type: ignore[type-arg]
                assumed["status"] = status
                return start_response(status, headers, exc_info)

            body = b"".join(self.app(environ, keep))
            found = re.search(rb"<AccessKeyId>([^<]+)</AccessKeyId>", body)
            if found and str(assumed.get("status", "")).startswith("200"):
                with self.lock:
                    SESSION_TAGS[found.group(1).decode()] = dict(call["request_tags"])
            return [body]
        if mutation is None and fate is None:
            return self.app(environ, start_response)

        answer: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Any:  # type: ignore[type-arg]
            answer["status"], answer["headers"] = status, headers
            return start_response(status, headers, exc_info) if fate is None else (lambda _d: None)

        body = b"".join(self.app(environ, capture))
        code = int(str(answer.get("status", "500")).split()[0])
        if mutation is not None:
            mutation.update(status=code, carried_out=code < 400)
        if fate == "carried-out":
            return self.crash.hold(environ)
        return [body]

    def _rpc_v2_cbor(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """A request in the Smithy RPC v2 CBOR protocol, which the AWS SDKs use for CloudWatch
        and moto does not speak: ``POST /service/<ServiceName>/operation/<Operation>`` with a
        CBOR map of the input (Smithy "RPC v2 CBOR protocol": request and response bodies,
        timestamps as tag 1 epoch seconds, errors with ``__type``). It is answered by moto's
        query-protocol handler of the same operation, through botocore's own serializer and
        parser of that service's model, so requests are counted, logged and fail like others."""
        import io
        from urllib.parse import urlencode

        import botocore.session
        import cbor2
        from botocore.parsers import QueryParser
        from botocore.serialize import QuerySerializer

        operation = environ["PATH_INFO"].rsplit("/", 1)[-1]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        params = cbor2.loads(raw) if raw else {}
        auth = environ.get("HTTP_AUTHORIZATION", "")
        m = re.search(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/", auth)
        signing_name = m.group(1) if m else ""
        # The signing name is the endpoint prefix; botocore names the model after the service.
        service = {"monitoring": "cloudwatch"}.get(signing_name, signing_name)
        model = botocore.session.get_session().get_service_model(service)
        op_model = model.operation_model(operation)
        form = QuerySerializer().serialize_to_request(params, op_model)["body"]
        body = urlencode(form).encode()
        inner = dict(environ)
        inner.update({
            "PATH_INFO": "/",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        })
        answer: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Any:  # type: ignore[type-arg]
            answer["status"] = status
            return lambda _data: None

        xml = b"".join(self(inner, capture))
        code = int(answer["status"].split()[0])
        parsed = QueryParser().parse(
            {"body": xml, "headers": {}, "status_code": code}, op_model.output_shape
        )
        if code >= 400:
            error = parsed.get("Error", {})
            out = {
                "__type": f"{model.metadata.get('targetPrefix', service)}#{error.get('Code', 'InternalFailure')}",
                "message": error.get("Message", ""),
            }
        else:
            out = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
        data = cbor2.dumps(out, datetime_as_timestamp=True, timezone=timezone.utc)
        start_response(
            answer["status"],
            [
                ("Content-Type", "application/cbor"),
                ("smithy-protocol", "rpc-v2-cbor"),
                ("Content-Length", str(len(data))),
            ],
        )
        return [data]

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
        elif "/autoscaling/" in auth or "/sns/" in auth or "/monitoring/" in auth:
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
    _patch_instances()
    _patch_eks()
    _patch_autoscaling()
