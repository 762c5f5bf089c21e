//! The notification outbox on a real API server: what a reconcile queued in status is sent
//! outside it, at least once per transition with the same idempotency key, again after a
//! failure only to the destinations that did not take it, given up after its attempts run
//! out, and never by a replica that lost its Lease.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Event, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
};
use opsy_api::PackerBuilder;
use opsy_aws::{AwsOptions, CallCounter, ClientSet};
use opsy_notify::{Event as Transition, Message, ResourceRef, outbox::MAX_ATTEMPTS};
use opsy_runtime::{context::Context, metrics::Metrics};
use opsy_testkit::{ControlPlane, Moto, TestNamespace};
use wiremock::{Mock, MockServer, Request, ResponseTemplate, matchers::method};

struct World {
    ns: TestNamespace,
    client: Client,
    ctx: Arc<Context>,
    now: Arc<Mutex<Timestamp>>,
    leader: Arc<AtomicBool>,
    _moto: Moto,
}

fn builder(notifier: serde_json::Value) -> PackerBuilder {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ami.refresh.ops/v1alpha1",
        "kind": "PackerBuilder",
        "metadata": {"name": "al2023"},
        "spec": {
            "region": "us-west-2",
            "clusterName": "prod-east",
            "amiFilters": [
                {"name": "name", "values": ["base-al2023-*"]},
                {"name": "owner-id", "values": ["123456789012"]},
            ],
            "builder": {"repoURL": "https://github.com/example-org/eks-node-images"},
            "notifier": notifier,
        },
    }))
    .unwrap()
}

impl World {
    async fn new(notifier: serde_json::Value) -> Self {
        let ns = ControlPlane::shared()
            .unwrap()
            .namespace("outbox")
            .await
            .unwrap();
        let client = ns.client.clone();
        Api::<PackerBuilder>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &builder(notifier))
            .await
            .unwrap();
        let moto = Moto::start().unwrap();
        let calls = CallCounter::default();
        let aws = ClientSet::with_counter(AwsOptions::emulator(moto.endpoint()), calls.clone());
        let leader = Arc::new(AtomicBool::new(true));
        let held = leader.clone();
        aws.calls()
            .set_fence(Arc::new(move || held.load(Ordering::SeqCst)));
        let now = Arc::new(Mutex::new(Timestamp::now()));
        let clock = now.clone();
        let mut ctx = Context::new(
            "packer-builder-operator",
            client.clone(),
            aws,
            Arc::new(move || *clock.lock().unwrap()),
            Arc::new(Metrics::new(calls)),
        );
        Arc::get_mut(&mut ctx).unwrap().webhook_addresses = opsy_notify::AddressPolicy {
            private: true,
            loopback: true,
        };
        Self {
            ns,
            client,
            ctx,
            now,
            leader,
            _moto: moto,
        }
    }

    fn api(&self) -> Api<PackerBuilder> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn hook(&self, secret: &str, url: &str) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret.into()),
                ..ObjectMeta::default()
            },
            data: Some([("url".to_owned(), ByteString(url.as_bytes().to_vec()))].into()),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// What a reconcile does: queues `keys` in status, writes it, hands it to the outbox;
    /// then waits until the outbox is done with it.
    async fn queue(&self, keys: &[&str]) -> PackerBuilder {
        let pb = self.api().get("al2023").await.unwrap();
        let mut status = pb.status.clone().unwrap_or_default();
        let now = *self.now.lock().unwrap();
        let notifications = keys
            .iter()
            .map(|key| {
                let message = Message::new(
                    Transition::BuildFailed,
                    ResourceRef {
                        kind: "PackerBuilder".into(),
                        namespace: self.ns.name.clone(),
                        name: "al2023".into(),
                    },
                    "prod-east",
                    "us-west-2",
                    format!("build {key} failed"),
                )
                .at(now);
                ((*key).to_owned(), message)
            })
            .collect();
        opsy_runtime::outbox::queue(
            &mut status.outbox,
            &mut status.last_notified,
            &mut status.conditions,
            notifications,
            now,
            None,
        );
        let written = opsy_runtime::patch_status(&self.client, &pb, "test", &status)
            .await
            .unwrap();
        self.send(&written).await;
        self.api().get("al2023").await.unwrap()
    }

    async fn send(&self, pb: &PackerBuilder) {
        self.ctx.send_notifications(pb);
        self.ctx.outbox.idle().await;
    }

    fn later(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap();
        *now = now.checked_add(by).unwrap();
    }

    async fn warnings(&self) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                )
            })
            .collect()
    }
}

fn keys(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

async fn server(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn every_transition_is_sent_once_with_its_idempotency_key_and_leaves_the_outbox() {
    let hook = server(200).await;
    let world = World::new(
        serde_json::json!({"webhooks": [{"secret": "hook", "key": "url", "allowPlainHttp": true}]}),
    )
    .await;
    world.hook("hook", &format!("{}/in", hook.uri())).await;

    // Two transitions of one reconcile.
    let pb = world.queue(&["BuildFailed:1", "BuildStalled:x"]).await;
    let uid = pb.uid().unwrap();
    let requests = hook.received_requests().await.unwrap();
    assert_eq!(
        keys(&requests),
        [
            format!("{uid}/BuildFailed:1"),
            format!("{uid}/BuildStalled:x")
        ]
    );
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["idempotencyKey"], format!("{uid}/BuildFailed:1"));
    assert_eq!(body["summary"], "build BuildFailed:1 failed");
    let status = pb.status.unwrap();
    assert!(status.outbox.is_empty(), "{:?}", status.outbox);
    assert_eq!(status.last_notified.as_deref(), Some("BuildStalled:x"));

    // Decided again by a later reconcile: not queued, not sent.
    let pb = world.queue(&["BuildStalled:x"]).await;
    assert!(pb.status.unwrap().outbox.is_empty());
    assert_eq!(hook.received_requests().await.unwrap().len(), 2);
    assert!(world.warnings().await.is_empty());
}

#[tokio::test]
async fn a_failed_destination_is_retried_alone_until_it_lands_or_its_attempts_run_out() {
    let good = server(200).await;
    let bad = server(500).await;
    let world = World::new(serde_json::json!({"webhooks": [
        {"secret": "good", "key": "url", "allowPlainHttp": true},
        {"secret": "bad", "key": "url", "allowPlainHttp": true},
    ]}))
    .await;
    world.hook("good", &format!("{}/in", good.uri())).await;
    world.hook("bad", &format!("{}/in", bad.uri())).await;

    let pb = world.queue(&["BuildFailed:1"]).await;
    let status = pb.status.clone().unwrap();
    let entry = &status.outbox[0];
    assert_eq!(entry.delivered, ["webhook #1"]);
    assert_eq!(entry.attempts, 1);
    assert_eq!(
        entry.last_error.as_deref(),
        Some("webhook #2 (generic): HTTP 500")
    );
    let failed = opsy_api::conditions::find(&status.conditions, "NotificationFailed");
    // The condition follows at the next reconcile; the Warning event is there at once.
    assert!(failed.is_none() || failed.unwrap().status == "True");
    let warnings = world.warnings().await;
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "NotificationFailed: notification BuildFailed:1 not delivered (attempt 1 of 8"
        )),
        "{warnings:?}"
    );
    let bad_before = bad.received_requests().await.unwrap().len();

    // Not due yet: nothing is sent.
    world.send(&pb).await;
    assert_eq!(bad.received_requests().await.unwrap().len(), bad_before);

    // Due: only the failed destination gets it again, with the same key.
    world.later(SignedDuration::from_secs(31));
    let pb = world.api().get("al2023").await.unwrap();
    world.send(&pb).await;
    assert_eq!(good.received_requests().await.unwrap().len(), 1);
    let to_bad = bad.received_requests().await.unwrap();
    assert!(to_bad.len() > bad_before);
    let keys = keys(&to_bad);
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    let pb = world.api().get("al2023").await.unwrap();
    assert_eq!(pb.status.as_ref().unwrap().outbox[0].attempts, 2);

    // The condition says so at the next reconcile.
    let pb = world.queue(&[]).await;
    let status = pb.status.unwrap();
    let failed = opsy_api::conditions::find(&status.conditions, "NotificationFailed").unwrap();
    assert_eq!(failed.status, "True");
    assert!(
        failed.message.contains("webhook #2 (generic): HTTP 500"),
        "{}",
        failed.message
    );

    // Every attempt fails: given up after MAX_ATTEMPTS, with a Warning event.
    for _ in 2..MAX_ATTEMPTS {
        world.later(SignedDuration::from_mins(31));
        let pb = world.api().get("al2023").await.unwrap();
        world.send(&pb).await;
    }
    let pb = world.api().get("al2023").await.unwrap();
    assert!(pb.status.as_ref().unwrap().outbox.is_empty());
    assert!(
        world.warnings().await.iter().any(|w| {
            w.starts_with(&format!(
            "NotificationDropped: notification BuildFailed:1 given up after {MAX_ATTEMPTS} attempts"
        ))
        }),
        "{:?}",
        world.warnings().await
    );
    // The condition clears once nothing fails any more.
    let status = world.queue(&[]).await.status.unwrap();
    let failed = opsy_api::conditions::find(&status.conditions, "NotificationFailed").unwrap();
    assert_eq!(failed.status, "False");
    assert_eq!(good.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_replica_that_lost_its_lease_sends_nothing_and_the_leader_sends_it() {
    let hook = server(200).await;
    let world = World::new(
        serde_json::json!({"webhooks": [{"secret": "hook", "key": "url", "allowPlainHttp": true}]}),
    )
    .await;
    world.hook("hook", &format!("{}/in", hook.uri())).await;
    world.leader.store(false, Ordering::SeqCst);
    let pb = world.queue(&["RolloutHalted:ami-1"]).await;
    assert!(hook.received_requests().await.unwrap().is_empty());
    let outbox = &pb.status.as_ref().unwrap().outbox;
    assert_eq!(outbox.len(), 1, "kept for the next leader");
    assert_eq!(outbox[0].attempts, 0);

    // The next leader (its first reconcile) sends it.
    world.leader.store(true, Ordering::SeqCst);
    world.send(&pb).await;
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);
    let pb = world.api().get("al2023").await.unwrap();
    assert!(pb.status.unwrap().outbox.is_empty());
}

#[tokio::test]
async fn a_write_between_sending_and_recording_loses_nothing() {
    // The outbox records against the version it read; a reconcile that wrote in between (and
    // queued one more transition) is read again, and its entry stays queued.
    let hook = server(200).await;
    let world = World::new(
        serde_json::json!({"webhooks": [{"secret": "hook", "key": "url", "allowPlainHttp": true}]}),
    )
    .await;
    world.hook("hook", &format!("{}/in", hook.uri())).await;
    world.leader.store(false, Ordering::SeqCst);
    let stale = world.queue(&["BuildFailed:1"]).await;
    world.queue(&["BuildFailed:2"]).await;
    world.leader.store(true, Ordering::SeqCst);
    // Sends from the older copy: BuildFailed:1 only, then finds BuildFailed:2 in a fresh read.
    world.send(&stale).await;
    let sent = keys(&hook.received_requests().await.unwrap());
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].ends_with("/BuildFailed:1") && sent[1].ends_with("/BuildFailed:2"));
    let pb = world.api().get("al2023").await.unwrap();
    assert!(pb.status.unwrap().outbox.is_empty());
}
