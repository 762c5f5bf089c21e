#!/usr/bin/env python3
"""Offline checks of the Helm charts and the plain manifests rendered from them.

    check.py            lint and render every chart, validate what they render, and fail when
                        deploy/kustomize/ differs from what the charts render
    check.py --write    the same, but (re)write deploy/kustomize/ and deploy/namespaced/

Runs in the project's .venv with the helm that `cargo xtask setup` builds from
test/control-plane/helm (`HELM` names another): `helm lint --strict` and `helm template`, no
cluster needed; kubernetes-validate checks the built-in kinds against the Kubernetes API schemas.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
NAMESPACED = ROOT / "deploy" / "namespaced" / "manifests.yaml"
# The namespace the namespaced example (and its RBAC test) reconciles.
WATCHED = "ami-builds"
KUBE_VERSION = "1.32.0"
RELEASE = "opsy"
NAMESPACE = "opsy-system"

BUILDER = "packer-builder-operator"
REFRESHER = "ami-refresh-operator"
UMBRELLA = "opsy-ami-operator"
# The CRDs each operator's chart installs (its kind and the cluster-scoped class it reads).
CRD_FILES = {
    BUILDER: ["ami.refresh.ops_packerbuilders.yaml", "ami.refresh.ops_buildclasses.yaml"],
    REFRESHER: ["ami.refresh.ops_amirefreshers.yaml", "ami.refresh.ops_refresherclasses.yaml"],
}

# What each install path must render: kind -> how many.
OPERATOR_OBJECTS = {
    "CustomResourceDefinition": 1,
    "ServiceAccount": 1,
    "ClusterRole": 1,
    "ClusterRoleBinding": 1,
    "Role": 1,
    "RoleBinding": 1,
    "Deployment": 1,
    "Service": 1,
}


def operator_objects(operator: str) -> dict[str, int]:
    """What the chart of `operator` renders: OPERATOR_OBJECTS with one CRD per CRD file."""
    return OPERATOR_OBJECTS | {"CustomResourceDefinition": len(CRD_FILES[operator])}

failures: list[str] = []

HELM = os.environ.get("HELM") or str(ROOT / "target" / "control-plane" / "helm")
PROMTOOL = os.environ.get("PROMTOOL") or str(ROOT / "target" / "promtool")
ALERT_TESTS = ROOT / "scripts" / "charts" / "alerts"


class HelmError(Exception):
    """helm refused the chart or the values."""


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(HELM).exists():
        raise SystemExit(f"no helm at {HELM}: run `cargo xtask setup` (or set HELM)")
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def fail(message: str) -> None:
    failures.append(message)
    print(f"  FAIL {message}", file=sys.stderr)


def assemble(name: str, into: Path) -> Path:
    """Copies chart `name` into `into`, with its file:// dependencies vendored under charts/
    (what `helm dependency build` does), recursively."""
    target = into / name
    # A charts/ left by `helm dependency build` would shadow the sources being checked.
    shutil.copytree(CHARTS / name, target, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = yaml.safe_load((target / "Chart.yaml").read_text())
    for dep in meta.get("dependencies") or []:
        repo = dep.get("repository", "")
        if not repo.startswith("file://"):
            raise SystemExit(f"{name}: dependency {dep['name']} is not a local chart")
        (target / "charts").mkdir(exist_ok=True)
        assemble(dep["name"], target / "charts")
    return target


def render(chart: Path, values: dict | None = None) -> list[dict]:
    """`helm template` (values checked against values.schema.json), objects in the order of
    their template paths."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values or {}, f)
    try:
        p = helm(
            "template", RELEASE, str(chart), "--namespace", NAMESPACE,
            "--kube-version", KUBE_VERSION, "--values", f.name,
        )
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        raise HelmError(p.stderr.strip())
    docs = []
    for index, chunk in enumerate(re.split(r"^---\s*$", p.stdout, flags=re.M)):
        source = re.search(r"^# Source: (.+)$", chunk, flags=re.M)
        doc = yaml.safe_load(chunk)
        if doc:
            docs.append((source.group(1) if source else "", index, doc))
    docs.sort(key=lambda d: (d[0], d[1]))
    return [doc for _, _, doc in docs]


def kinds(objects: list[dict]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for o in objects:
        counted[o["kind"]] = counted.get(o["kind"], 0) + 1
    return counted


def expect_kinds(label: str, objects: list[dict], expected: dict[str, int]) -> None:
    got = kinds(objects)
    if got != expected:
        fail(f"{label}: rendered {got}, expected {expected}")
    else:
        print(f"  ok   {label}: {sum(got.values())} objects, {', '.join(sorted(got))}")


def validate_builtin(label: str, objects: list[dict]) -> None:
    checked = 0
    for o in objects:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's kind, not Kubernetes'
        try:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
            checked += 1
        except Exception as e:  # noqa: BLE001 - every validation problem is a failure here
            fail(f"{label}: {o['kind']}/{o['metadata'].get('name')} is invalid: {e}")
    print(f"  ok   {label}: {checked} objects valid for Kubernetes {KUBE_VERSION}")


def check_crd_matches_generated(label: str, objects: list[dict], operator: str) -> None:
    for file in CRD_FILES[operator]:
        generated = yaml.safe_load((ROOT / "deploy" / "crds" / file).read_text())
        rendered = [o for o in objects if o["kind"] == "CustomResourceDefinition"
                    and o["metadata"]["name"] == generated["metadata"]["name"]]
        if len(rendered) != 1:
            fail(f"{label}: the chart does not render {generated['metadata']['name']}")
            continue
        crd = copy.deepcopy(rendered[0])
        crd["metadata"].pop("annotations", None)
        crd["metadata"].pop("labels", None)
        if crd != generated:
            fail(f"{label}: the chart's CRD differs from deploy/crds/{file}; run `cargo xtask crds`")


def check_rbac(label: str, objects: list[dict]) -> None:
    for o in objects:
        if o["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in o.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(field, []):
                    fail(f"{label}: {o['kind']} {o['metadata']['name']} grants * in {field}")
            if "secrets" in rule.get("resources", []) and set(rule["verbs"]) != {"get"}:
                fail(f"{label}: Secrets must be readable by name only (get), not {rule['verbs']}")


def check_operator_chart(workdir: Path, operator: str) -> list[dict]:
    print(f"{operator}:")
    chart = assemble(operator, workdir)
    lint(chart)
    objects = render(chart)
    expect_kinds("default values", objects, operator_objects(operator))
    validate_builtin("default values", objects)
    check_crd_matches_generated("default values", objects, operator)
    check_rbac("default values", objects)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    image = container["image"]
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        fail(f"default image {image} is not pinned to a version")
    if not pod["securityContext"].get("runAsNonRoot"):
        fail("the operator pod may run as root")
    if not container["securityContext"].get("readOnlyRootFilesystem"):
        fail("the operator's root filesystem is writable")

    with_monitor = render(chart, {"metrics": {"serviceMonitor": {"enabled": True}}})
    if kinds(with_monitor).get("ServiceMonitor") != 1:
        fail("metrics.serviceMonitor.enabled renders no ServiceMonitor")
    no_crd = render(chart, {"crds": {"install": False}})
    if "CustomResourceDefinition" in kinds(no_crd):
        fail("crds.install=false still renders the CRD")
    irsa = {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/x"}}}
    sa = next(o for o in render(chart, irsa) if o["kind"] == "ServiceAccount")
    if sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") is None:
        fail("serviceAccount.annotations do not reach the ServiceAccount")
    check_alerts(chart, operator)
    check_dashboard(chart, operator)
    expect_refused(chart, {"replicaCount": 2, "leaderElection": {"enabled": False}}, "two replicas without leader election")
    expect_refused(chart, {"image": {"tag": "latest"}}, "image.tag latest")
    expect_refused(chart, {"logFormat": "xml"}, "an unknown logFormat")
    print("  ok   values: ServiceMonitor, crds.install, IRSA annotation, refused values")
    return objects


def check_alerts(chart: Path, operator: str) -> None:
    """metrics.prometheusRule.enabled renders one PrometheusRule; its rules pass `promtool check
    rules` and the unit tests in scripts/charts/alerts/<operator>.test.yaml (`promtool test
    rules`, Prometheus' own evaluator)."""
    rendered = render(chart, {"metrics": {"prometheusRule": {"enabled": True}}})
    rules = [o for o in rendered if o["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"metrics.prometheusRule.enabled renders {len(rules)} PrometheusRules, not 1")
    if not Path(PROMTOOL).exists():
        fail(f"no promtool at {PROMTOOL}: run `cargo xtask setup` (or set PROMTOOL)")
    with tempfile.TemporaryDirectory() as work:
        rules_file = Path(work) / f"{operator}.rules.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}))
        test_file = Path(work) / f"{operator}.test.yaml"
        shutil.copy(ALERT_TESTS / f"{operator}.test.yaml", test_file)
        for args in (["check", "rules", str(rules_file)], ["test", "rules", str(test_file)]):
            p = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=work)
            if p.returncode != 0:
                fail(f"promtool {' '.join(args[:2])}: {(p.stdout + p.stderr).strip()}")
    alerts = [r["alert"] for g in rules[0]["spec"]["groups"] for r in g["rules"]]
    print(f"  ok   alerts: promtool check rules and test rules ({', '.join(alerts)})")


def check_dashboard(chart: Path, operator: str) -> None:
    """metrics.dashboard.enabled renders one ConfigMap with the sidecar's label and a dashboard
    that parses, whose every panel queries something."""
    rendered = render(chart, {"metrics": {"dashboard": {"enabled": True}}})
    maps = [o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    if len(maps) != 1:
        fail(f"metrics.dashboard.enabled renders {len(maps)} dashboard ConfigMaps, not 1")
        return
    if maps[0]["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        fail("the dashboard ConfigMap lacks the label grafana_dashboard=1")
    dashboard = json.loads(maps[0]["data"][f"{operator}.json"])
    empty = [p["title"] for p in dashboard["panels"] if not any(t.get("expr") for t in p.get("targets", []))]
    if empty:
        fail(f"dashboard panels without a query: {empty}")
    print(f"  ok   dashboard: {dashboard['title']} ({len(dashboard['panels'])} panels)")


def expect_refused(chart: Path, values: dict, what: str) -> None:
    try:
        render(chart, values)
    except HelmError:
        return
    fail(f"{chart.name}: {what} was accepted")


def lint(chart: Path) -> None:
    p = helm(
        "lint", str(chart), "--strict", "--with-subcharts", "--namespace", NAMESPACE,
        "--kube-version", KUBE_VERSION,
    )
    linted = re.search(r"(\d+) chart\(s\) linted", p.stdout)
    if p.returncode != 0:
        problems = [l.strip() for l in (p.stdout + p.stderr).splitlines() if "[ERROR]" in l or "[WARNING]" in l]
        fail(f"helm lint --strict {chart.name}: " + ("; ".join(problems) or p.stderr.strip()))
    else:
        print(f"  ok   helm lint --strict ({linted.group(1) if linted else '?'} charts)")


def check_umbrella(workdir: Path, builder: list[dict], refresher: list[dict]) -> dict[str, list[dict]]:
    print(f"{UMBRELLA}:")
    chart = assemble(UMBRELLA, workdir)
    lint(chart)
    both = render(chart)
    expect_kinds("both operators", both, {k: operator_objects(BUILDER)[k] + operator_objects(REFRESHER)[k]
                                          for k in OPERATOR_OBJECTS})
    validate_builtin("both operators", both)
    check_rbac("both operators", both)
    only_builder = render(chart, {REFRESHER: {"enabled": False}})
    expect_kinds("builder only", only_builder, operator_objects(BUILDER))
    only_refresher = render(chart, {BUILDER: {"enabled": False}})
    expect_kinds("refresher only", only_refresher, operator_objects(REFRESHER))
    names = lambda objs: sorted((o["kind"], o["metadata"]["name"]) for o in objs)  # noqa: E731
    crd_names = lambda objs: sorted(o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition")  # noqa: E731
    if crd_names(only_builder) != crd_names(builder) or crd_names(only_refresher) != crd_names(refresher):
        fail("the umbrella's single-operator installs render other CRDs than the operator charts")
    if len(set(names(both))) != len(both):
        fail("the umbrella renders two objects with the same kind and name")
    namespaced = check_namespaced(chart)
    return {BUILDER: only_builder, REFRESHER: only_refresher, "both": both, "namespaced": namespaced}


def check_namespaced(chart: Path) -> list[dict]:
    """watchNamespaces: Roles in the watched namespace hold every namespaced rule; the
    ClusterRoles keep only the CRD read; the Deployments are told which namespace to watch."""
    values = {op: {"watchNamespaces": [WATCHED]} for op in (BUILDER, REFRESHER)}
    objects = render(chart, values)
    validate_builtin("namespaced", objects)
    check_rbac("namespaced", objects)
    for o in objects:
        if o["kind"] == "ClusterRole":
            resources = {r for rule in o["rules"] for r in rule.get("resources", [])}
            # Beside its CRD, only what the refresher reads across the cluster: nodes (health
            # gate), and budgets and pods in any namespace (the drain pre-flight), and the
            # operators' classes (cluster-scoped), read-only.
            cluster_wide = {"nodes", "poddisruptionbudgets", "pods", "buildclasses", "refresherclasses"}
            verbs = {v for rule in o["rules"] if set(rule.get("resources", [])) & cluster_wide
                     for v in rule["verbs"]}
            if resources - cluster_wide != {"customresourcedefinitions"} or verbs - {"list"}:
                fail(f"namespaced: ClusterRole {o['metadata']['name']} still grants {sorted(resources)}")
        if o["kind"] == "Deployment":
            env = {e["name"]: e.get("value") for e in o["spec"]["template"]["spec"]["containers"][0]["env"]}
            if env.get("OPSY_WATCH_NAMESPACES") != WATCHED:
                fail(f"namespaced: Deployment {o['metadata']['name']} does not watch {WATCHED}")
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"].get("namespace") == WATCHED]
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"].get("namespace") == WATCHED]
    if len(roles) != 2 or len(bindings) != 2:
        fail(f"namespaced: expected a Role and a RoleBinding per operator in {WATCHED}")
    for role in roles:
        if not any("secrets" in r.get("resources", []) for r in role["rules"]):
            fail(f"namespaced: Role {role['metadata']['name']} cannot read Secrets in {WATCHED}")
    expect_refused(chart, {BUILDER: {"watchNamespaces": ["Not A Namespace"]}}, "an invalid namespace")
    print(f"  ok   namespaced: Roles in {WATCHED} only, ClusterRoles read their CRD and cluster-scoped reads only")
    return objects


def manifests_text(objects: list[dict]) -> str:
    header = (
        "# Rendered from charts/ with default values (release \"opsy\", namespace \"opsy-system\")\n"
        "# by `cargo xtask charts --write`; do not edit.\n"
    )
    return header + "".join("---\n" + yaml.safe_dump(o, sort_keys=True) for o in objects)


KUSTOMIZATION = """# kubectl apply -k deploy/kustomize/{name}
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: opsy-system
resources:
  - namespace.yaml
  - manifests.yaml
"""
NAMESPACE_YAML = """apiVersion: v1
kind: Namespace
metadata:
  name: opsy-system
"""


def sync_kustomize(installs: dict[str, list[dict]], write: bool) -> None:
    print("deploy/kustomize:")
    # Plain manifests (kustomize would move the Roles into its one namespace).
    namespaced = installs.pop("namespaced")
    text = manifests_text(namespaced).replace(
        "with default values", f"with watchNamespaces: [{WATCHED}]"
    )
    if not (NAMESPACED.exists() and NAMESPACED.read_text() == text):
        if write:
            NAMESPACED.parent.mkdir(parents=True, exist_ok=True)
            NAMESPACED.write_text(text)
            print(f"  wrote {NAMESPACED.relative_to(ROOT)}")
        else:
            fail(f"{NAMESPACED.relative_to(ROOT)} differs from the charts; run `cargo xtask charts --write`")
    for name, objects in installs.items():
        directory = KUSTOMIZE / name
        files = {
            "kustomization.yaml": KUSTOMIZATION.format(name=name),
            "namespace.yaml": NAMESPACE_YAML,
            "manifests.yaml": manifests_text(objects),
        }
        for file, text in files.items():
            path = directory / file
            if path.exists() and path.read_text() == text:
                continue
            if write:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"  wrote {path.relative_to(ROOT)}")
            else:
                fail(f"{path.relative_to(ROOT)} differs from the charts; run `cargo xtask charts --write`")
    print(f"  ok   {', '.join(installs)} checked")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite deploy/kustomize/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        builder = check_operator_chart(workdir / "b", BUILDER)
        refresher = check_operator_chart(workdir / "r", REFRESHER)
        installs = check_umbrella(workdir / "u", builder, refresher)
    sync_kustomize(installs, args.write)
    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    print("charts: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
