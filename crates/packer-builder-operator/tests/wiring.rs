//! The controller wiring, request by request: the watches it opens (PackerBuilders, and Jobs
//! by label), and that a watched object is reconciled into a Job and a status patch. The API
//! server is a request-level mock; AWS is the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::{Client, client::Body};
use opsy_aws::{AwsOptions, ClientSet};
use opsy_runtime::operator::Operator;
use opsy_testkit::{ACCOUNT_ID, Fixture, Moto};
use packer_builder_operator::{controller, reconcile::MANAGER};
use serde_json::{Value, json};

fn pb() -> Value {
    json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": "pb", "namespace": "opsy", "uid": "5f0c8a1e-2222-4b0d-8c11-0a1b2c3d4e5f", "generation": 3, "resourceVersion": "10"},
        "spec": {
            "region": "us-west-2",
            "clusterName": "prod",
            "amiFilters": [{"name": "name", "values": ["base-*"]}, {"name": "owner-id", "values": [ACCOUNT_ID]}],
            "builder": {"repoURL": "https://github.com/example-org/images"},
        },
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": items})
}

fn respond(body: Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

#[tokio::test]
async fn a_watched_packer_builder_is_reconciled_into_a_job_and_a_status_patch() {
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, "us-west-2").await;
    let base = fixture.register_image("base-v1", &[]).await.unwrap();

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let aws = ClientSet::new(AwsOptions::emulator(moto.endpoint()));
    let operator = Arc::new(Operator::new(client, aws));
    let metrics = operator.metrics.clone();
    let ctx = operator.context(MANAGER, Arc::new(jiff::Timestamp::now));
    assert!(!operator.health.is_ready());
    let running = tokio::spawn({
        let operator = operator.clone();
        async move { controller::run(ctx, 2, &operator).await }
    });

    let mut seen = Vec::new();
    let mut parked = Vec::new(); // watch requests stay open, as on a real server
    let mut created_job = None;
    let status_patch = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (request, send) = handle
                .next_request()
                .await
                .expect("the controller keeps talking");
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen.push(format!("{method} {uri}"));
            let path = uri.split('?').next().unwrap_or_default().to_owned();
            if uri.contains("watch=true") {
                parked.push(send);
                continue;
            }
            match (method.as_str(), path.as_str()) {
                ("GET", "/apis/ami.refresh.ops/v1alpha1/packerbuilders") => {
                    send.send_response(respond(list("PackerBuilder", vec![pb()])))
                }
                ("GET", "/apis/batch/v1/jobs" | "/apis/batch/v1/namespaces/opsy/jobs") => {
                    send.send_response(respond(list("Job", vec![])))
                }
                ("POST", "/apis/batch/v1/namespaces/opsy/jobs") => {
                    let job: Value = serde_json::from_slice(&body).unwrap();
                    created_job = Some(job.clone());
                    send.send_response(respond(job));
                }
                ("POST" | "PATCH", p) if p.contains("/events") => {
                    send.send_response(respond(serde_json::from_slice(&body).unwrap_or(json!({}))))
                }
                (
                    "PATCH",
                    "/apis/ami.refresh.ops/v1alpha1/namespaces/opsy/packerbuilders/pb/status",
                ) => {
                    send.send_response(respond(pb()));
                    break serde_json::from_slice::<Value>(&body).unwrap();
                }
                _ => panic!("unexpected request {method} {uri}"),
            }
        }
    })
    .await
    .expect("a status patch within 30s");
    // The reconcile ends once its status patch is answered; then it is counted. The process
    // turns ready once the first list of PackerBuilders is in the cache.
    let counted_and_ready = tokio::time::timeout(Duration::from_secs(10), async {
        while !(operator.health.is_ready()
            && metrics
                .render()
                .lines()
                .any(|l| l == "opsy_reconciles_total 1"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        counted_and_ready.await.is_ok(),
        "ready: {}, requests: {seen:#?}, metrics:\n{}",
        operator.health.is_ready(),
        metrics.render()
    );
    running.abort();
    drop(parked);

    // The build start was counted.
    assert!(
        metrics
            .render()
            .contains("opsy_transitions_total{reason=\"BuildStarted\"} 1"),
        "{}",
        metrics.render()
    );

    // Watches: every PackerBuilder, and only build Jobs.
    assert!(
        seen.iter()
            .any(|r| r.starts_with("GET /apis/ami.refresh.ops/v1alpha1/packerbuilders?")),
        "{seen:#?}"
    );
    let job_watch = seen
        .iter()
        .find(|r| r.starts_with("GET /apis/batch/v1/jobs?"))
        .expect("Jobs are watched");
    assert!(
        job_watch.contains("labelSelector=app.kubernetes.io%2Fcomponent%3Dpacker-build"),
        "{job_watch}"
    );

    let job = created_job.expect("a Job was created");
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["uid"],
        "5f0c8a1e-2222-4b0d-8c11-0a1b2c3d4e5f"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
    let status = &status_patch["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["jobStatus"], "running");
    assert_eq!(status["lastRunBaseImageID"], base.as_str());
    assert_eq!(status["jobName"], job["metadata"]["name"]);
}
