"""CloudWatch alarms in the Smithy RPC v2 CBOR protocol, the one the AWS SDK for Rust speaks
to CloudWatch (Smithy, "RPC v2 CBOR protocol": POST /service/<service>/operation/<operation>,
a CBOR map of the input, the header smithy-protocol: rpc-v2-cbor; errors name their shape in
__type). Requests are signed with SigV4 for "monitoring", CloudWatch's signing name."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import cbor2

SERVICE = "GraniteServiceVersion20100801"


def call(aws: Any, operation: str, params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST",
        url=f"{aws.url}/service/{SERVICE}/operation/{operation}",
        data=cbor2.dumps(params),
        headers={"smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor", "Accept": "application/cbor"},
    )
    SigV4Auth(Credentials("testing", "testing"), "monitoring", "us-west-2").add_auth(request)
    prepared = urllib.request.Request(request.url, data=request.body, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(prepared) as response:
            return response.status, dict(response.headers), cbor2.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), cbor2.loads(error.read())


def alarm(aws: Any, name: str) -> None:
    status, _, _ = call(aws, "PutMetricAlarm", {
        "AlarmName": name,
        "Namespace": "AWS/ApplicationELB",
        "MetricName": "HTTPCode_Target_5XX_Count",
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 1,
        "Threshold": 10.0,
        "ComparisonOperator": "GreaterThanThreshold",
    })
    assert status == 200


def test_alarms_are_described_by_name_with_their_state_and_reason(aws: Any) -> None:
    alarm(aws, "web-5xx")
    alarm(aws, "other")
    status, headers, _ = call(aws, "SetAlarmState", {"AlarmName": "web-5xx", "StateValue": "ALARM", "StateReason": "5xx above 10"})
    assert status == 200
    assert headers["smithy-protocol"] == "rpc-v2-cbor"
    status, _, body = call(aws, "DescribeAlarms", {"AlarmNames": ["web-5xx", "missing"]})
    assert status == 200
    found = body["MetricAlarms"]
    assert [(a["AlarmName"], a["StateValue"], a["StateReason"]) for a in found] == [
        ("web-5xx", "ALARM", "5xx above 10")
    ]
    # Timestamps are CBOR tag 1 (epoch seconds), which cbor2 reads as datetimes.
    assert isinstance(found[0]["StateUpdatedTimestamp"], datetime)


def test_errors_name_their_shape(aws: Any) -> None:
    status, _, body = call(aws, "SetAlarmState", {"AlarmName": "missing", "StateValue": "ALARM", "StateReason": "x"})
    assert status == 404
    assert body["__type"].endswith("#ResourceNotFound"), body


def test_requests_are_counted_and_logged_for_iam(aws: Any) -> None:
    alarm(aws, "web-5xx")
    call(aws, "DescribeAlarms", {"AlarmNames": ["web-5xx"]})
    with urllib.request.urlopen(f"{aws.url}/opsy-ext/calls") as response:
        calls = json.loads(response.read())
    described = [c for c in calls if c["action"] == "cloudwatch:DescribeAlarms"]
    assert described[-1]["resources"] == ["arn:aws:cloudwatch:us-west-2:123456789012:alarm:web-5xx"]
    with urllib.request.urlopen(f"{aws.url}/opsy-ext/requests") as response:
        assert json.loads(response.read())["DescribeAlarms"] >= 1
