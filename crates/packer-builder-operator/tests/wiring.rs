//! The controller wiring on a real API server: the watches it opens (PackerBuilders, and Jobs
//! by label, read from the audit log), and that a watched object is reconciled into an owned
//! Job and a status write. AWS is the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use opsy_api::PackerBuilder;
use opsy_aws::{AwsOptions, ClientSet};
use opsy_runtime::operator::Operator;
use opsy_testkit::{ACCOUNT_ID, ControlPlane, Fixture, Moto};
use packer_builder_operator::{controller, reconcile::MANAGER};
use serde_json::json;

#[tokio::test]
async fn a_watched_packer_builder_is_reconciled_into_a_job_and_a_status_write() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("wiring").await.unwrap();
    let moto = Moto::start().unwrap();
    let fixture = Fixture::new(&moto, "us-west-2").await;
    let base = fixture.register_image("base-v1", &[]).await.unwrap();
    let builders: Api<PackerBuilder> = Api::namespaced(ns.client.clone(), &ns.name);
    let pb: PackerBuilder = serde_json::from_value(json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": "pb"},
        "spec": {
            "region": "us-west-2",
            "clusterName": "prod",
            "amiFilters": [{"name": "name", "values": ["base-*"]}, {"name": "owner-id", "values": [ACCOUNT_ID]}],
            "builder": {"repoURL": "https://github.com/example-org/images"},
        },
    }))
    .unwrap();
    let pb = builders.create(&PostParams::default(), &pb).await.unwrap();

    let aws = ClientSet::new(AwsOptions::emulator(moto.endpoint()));
    let operator = Arc::new(Operator::new(ns.client.clone(), aws));
    let metrics = operator.metrics.clone();
    let ctx = operator.context(MANAGER, Arc::new(jiff::Timestamp::now));
    assert!(!operator.health.is_ready());
    let running = tokio::spawn({
        let operator = operator.clone();
        async move { controller::run(ctx, 2, &operator, &[]).await }
    });

    // The reconcile ends with its status write; then it is counted. The process turns ready
    // once the first list of PackerBuilders is in the cache.
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let status = builders.get("pb").await.unwrap().status.unwrap_or_default();
            if status.job_name.is_some()
                && operator.health.is_ready()
                && metrics
                    .render()
                    .lines()
                    .any(|l| l.starts_with("opsy_reconciles_total "))
            {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    running.abort();
    let status = done.unwrap_or_else(|_| {
        panic!(
            "no Job recorded in status within 30s; ready: {}, metrics:\n{}",
            operator.health.is_ready(),
            metrics.render()
        )
    });

    assert!(
        metrics
            .render()
            .contains("opsy_transitions_total{reason=\"BuildStarted\"} 1"),
        "{}",
        metrics.render()
    );
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    let all = jobs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 1, "one Job");
    let job = &all[0];
    let owner = &job.owner_references()[0];
    assert_eq!(Some(&owner.uid), pb.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.job_status.as_deref(), Some("running"));
    assert_eq!(
        status.last_run_base_image_id.as_deref(),
        Some(base.as_str())
    );
    assert_eq!(status.job_name.as_deref(), Some(job.name_any().as_str()));

    // Watches, from the API server's audit log: every PackerBuilder, and only build Jobs.
    let watches: Vec<String> = cp
        .audit_events()
        .unwrap()
        .into_iter()
        .filter(|e| e.verb == "watch" && e.user.username == "opsy-admin")
        .map(|e| e.request_u_r_i)
        .collect();
    assert!(
        watches
            .iter()
            .any(|u| u.starts_with("/apis/ami.refresh.ops/v1alpha1/packerbuilders?")),
        "{watches:#?}"
    );
    let job_watch = watches
        .iter()
        .find(|u| u.starts_with("/apis/batch/v1/jobs?"))
        .expect("Jobs are watched");
    assert!(
        job_watch.contains("labelSelector=app.kubernetes.io%2Fcomponent%3Dpacker-build"),
        "{job_watch}"
    );
}
