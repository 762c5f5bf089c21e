//! The admin endpoints over HTTP, as a kubelet probe or Prometheus would call them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, api::PostParams};
use opsy_aws::CallCounter;
use opsy_runtime::{
    admin::{self, Health},
    metrics::Metrics,
    operator::wait_for_crd,
};
use opsy_testkit::ControlPlane;

#[tokio::test]
async fn metrics_livez_and_readyz_answer_over_http() {
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let calls = CallCounter::default();
    let metrics = Arc::new(Metrics::new(calls.clone()));
    let health = Health::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    let live = get("/livez").await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), "ok\n");

    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    health.set_ready(true);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    metrics.reconciled(Duration::from_millis(12), Some("kubernetes"));
    calls.record("ec2", "DescribeImages", "ok");
    let page = get("/metrics").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = page.text().await.unwrap();
    for line in [
        "opsy_reconciles_total 1",
        "opsy_reconcile_errors_total{category=\"kubernetes\"} 1",
        "opsy_aws_calls_total{service=\"ec2\",operation=\"DescribeImages\",outcome=\"ok\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));

    assert_eq!(get("/nothing-here").await.unwrap().status(), 404);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_operator_waits_until_its_crd_is_established() {
    const NAME: &str = "widgets.wait.opsy-testkit.example";
    let interval = Duration::from_millis(50);
    let cp = ControlPlane::shared().unwrap();
    let admin = cp.client().await.unwrap();
    let waiting = tokio::time::timeout(
        Duration::from_millis(400),
        wait_for_crd(&admin, NAME, interval),
    );
    assert!(waiting.await.is_err(), "started without the CRD");

    // Installed now: the API server establishes it, and the wait ends.
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": NAME},
        "spec": {
            "group": "wait.opsy-testkit.example",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object"}}}],
        },
    }))
    .unwrap();
    Api::<CustomResourceDefinition>::all(admin.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        wait_for_crd(&admin, NAME, interval),
    )
    .await
    .expect("started once the CRD was established")
    .unwrap();

    // Without the right to read it, the wait fails at once and names the permission.
    let nobody = cp
        .client_as("nobody", &["system:authenticated"])
        .await
        .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        wait_for_crd(&nobody, NAME, interval),
    )
    .await
    .expect("no waiting on a refusal")
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("grant `get` on customresourcedefinitions"),
        "{err}"
    );
}
