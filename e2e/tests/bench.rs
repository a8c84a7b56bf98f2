//! Watch-list speed with 1,000 objects. Prints the figures; run with
//! `cargo test -p quiver-e2e --test bench -- --nocapture`.

mod common;

use std::time::Instant;

use common::{Cluster, bounded};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[tokio::test]
async fn list_and_watch_1000_objects() {
    bounded(180, async {
        let c = Cluster::start_with(|cfg| {
            cfg.controllers = false;
            cfg.history = 10_000;
        })
        .await;
        let ns = c.namespace("bench").await;
        let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns.name);
        futures::stream::iter(0..1000)
            .map(|i| {
                let api = api.clone();
                async move {
                    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:04}"), "labels": {"bench": "yes"}}, "data": {"i": i.to_string()}})).expect("cm");
                    api.create(&PostParams::default(), &cm).await.expect("create");
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;

        let t = Instant::now();
        // `bench=yes`: the namespace also holds its `kube-root-ca.crt` ConfigMap.
        let list = api.list(&ListParams::default().labels("bench=yes")).await.expect("list");
        let list_time = t.elapsed();
        assert_eq!(list.items.len(), 1000);

        let t = Instant::now();
        let mut stream = api.watch(&WatchParams::default().labels("bench=yes").timeout(60), "0").await.expect("watch").boxed();
        let mut added = 0;
        while added < 1000 {
            match stream.try_next().await.expect("stream").expect("open") {
                WatchEvent::Added(_) => added += 1,
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let watch_time = t.elapsed();
        println!("list of 1000 objects: {:.1} ms; watch from 0 delivering 1000 ADDED events: {:.1} ms", list_time.as_secs_f64() * 1e3, watch_time.as_secs_f64() * 1e3);
        drop(ns);
        c.stop().await;
    })
    .await;
}
