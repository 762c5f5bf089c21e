//! The testkit's control plane is a real one: RBAC is enforced, the Job controller creates Pods,
//! the audit log records requests, and the project's CRDs are served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use opsy_testkit::ControlPlane;

#[tokio::test]
async fn jobs_get_pods_rbac_is_on_and_requests_are_audited() {
    let cp = ControlPlane::shared().unwrap();
    let ns = cp.namespace("smoke").await.unwrap();

    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}],
        }}},
    }))
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(ns.client.clone(), &ns.name);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut found = 0;
    for _ in 0..100 {
        found = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=hello"))
            .await
            .unwrap()
            .items
            .len();
        if found > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found, 1, "the Job controller created no Pod");

    // A user with no role binding is refused.
    let nobody = cp
        .client_as("nobody", &["system:authenticated"])
        .await
        .unwrap();
    let err = Api::<Job>::namespaced(nobody, &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 403),
        "{err}"
    );

    let audit = cp.audit_events().unwrap();
    assert!(
        audit.iter().any(|e| e.verb == "create"
            && e.namespace() == ns.name
            && e.object_ref.as_ref().is_some_and(|o| o.resource == "jobs")),
        "the audit log has no create of the Job"
    );

    // The CRDs are installed and served.
    let builders: Api<opsy_api::PackerBuilder> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        builders
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
