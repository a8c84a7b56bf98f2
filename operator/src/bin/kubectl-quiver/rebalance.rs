//! `rebalance NAME [--dry-run]`: where the active version's query load falls and what moving
//! whole lists between shards would do, as the operator measured and planned it
//! (`status.load`); without `--dry-run` it asks the operator to apply that plan (a fresh
//! `quiver.dev/rebalance` token): a new version whose manifest reuses the active one's files.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use quiver_api::VectorIndex;
use quiver_api::annotations;
use quiver_api::v1alpha1::{ListSplit, LoadStatus, RebalanceMode};
use serde_json::json;

use crate::connect::{Global, connect};
use crate::output::{self, OutputArg};
use crate::retrain;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex.
    pub name: String,
    /// Print the measurement and the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// json or yaml print `status.load` as it is.
    #[command(flatten)]
    pub out: OutputArg,
}

/// The most loaded shard (by load per replica) and why: its share, its replicas, how far above
/// the mean per replica it is, and its hottest list.
pub fn hot_shard(l: &LoadStatus) -> Option<String> {
    let per_replica = |share: f64, replicas: u32| share / f64::from(replicas.max(1));
    let hot = l.shards.iter().max_by(|a, b| {
        per_replica(a.share, a.replicas)
            .total_cmp(&per_replica(b.share, b.replicas))
            .then(b.shard.cmp(&a.shard))
    })?;
    let mut s = format!(
        "shard {} takes {:.0}% of the load on {} replica{} ({:.2}x the mean per replica)",
        hot.shard,
        hot.share * 100.0,
        hot.replicas,
        if hot.replicas == 1 { "" } else { "s" },
        l.imbalance
    );
    if let Some(top) = l.hottest_lists.iter().find(|h| h.shard == hot.shard) {
        let _ = write!(
            s,
            "; its hottest list {} ({} entries) takes {:.0}%",
            top.list,
            top.entries,
            top.share * 100.0
        );
    }
    Some(s)
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

fn pct(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// The report: the load per shard, the hottest lists, and the plan.
pub fn report(name: &str, load: Option<&LoadStatus>, now: Timestamp) -> String {
    let Some(l) = load else {
        return format!(
            "No load measured for {name} yet: the operator samples the routers' per-list counters of the active version (--load-sample-secs, default 30 s) and publishes status.load once queries flow.\n"
        );
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Load of {} (measured {} ago): imbalance {:.2} (most loaded shard's load per replica over the mean)",
        l.version,
        output::age(Some(&l.measured_at), now),
        l.imbalance
    );
    if let Some(h) = hot_shard(l) {
        let _ = writeln!(out, "{h}");
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = l
        .shards
        .iter()
        .map(|s| vec![s.shard.to_string(), pct(s.share), s.replicas.to_string()])
        .collect();
    out.push_str(&output::table(&["SHARD", "SHARE", "REPLICAS"], &rows));
    out.push_str("\nHottest lists:\n");
    let rows: Vec<Vec<String>> = l
        .hottest_lists
        .iter()
        .map(|h| {
            vec![
                h.list.to_string(),
                h.shard.to_string(),
                pct(h.share),
                h.entries.to_string(),
            ]
        })
        .collect();
    for line in output::table(&["LIST", "SHARD", "SHARE", "ENTRIES"], &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out.push('\n');
    match &l.plan {
        None => out.push_str(
            "Plan: none. No move of a whole list lowers the most loaded shard's load per replica.\n",
        ),
        Some(p) => {
            if p.moves.is_empty() {
                out.push_str("Plan: no move helps.\n");
            } else {
                let _ = writeln!(
                    out,
                    "Plan: move {} list{} ({}); imbalance {:.2} -> {:.2}",
                    p.moves.len(),
                    if p.moves.len() == 1 { "" } else { "s" },
                    bytes(p.bytes),
                    l.imbalance,
                    p.imbalance_after
                );
                let rows: Vec<Vec<String>> = p
                    .moves
                    .iter()
                    .map(|m| {
                        vec![
                            m.list.to_string(),
                            m.from.to_string(),
                            m.to.to_string(),
                            bytes(m.bytes),
                        ]
                    })
                    .collect();
                for line in output::table(&["LIST", "FROM", "TO", "BYTES"], &rows).lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            if let Some(s) = l.split() {
                let _ = writeln!(
                    out,
                    "List {} alone takes more than the mean shard's load: moving it only moves the hot spot. Applying the plan splits it first (2-means inside the list; a new version with one more list, only this list re-encoded), the new half on shard {}; moves wait for the next plan.",
                    s.list, s.to
                );
            }
        }
    }
    out
}

/// Whether the operator would apply the plan of `vi` now: a split or the number of moves, or
/// why not.
pub fn applicable(vi: &VectorIndex) -> Result<Applicable, String> {
    let name = vi.metadata.name.clone().unwrap_or_default();
    if vi.spec.rebalance.mode == RebalanceMode::Off {
        return Err(format!(
            "spec.rebalance.mode is Off, so the operator applies no plan; to allow it: kubectl patch vectorindex {name} --type merge -p '{{\"spec\":{{\"rebalance\":{{\"mode\":\"Manual\"}}}}}}'"
        ));
    }
    let st = vi.status.clone().unwrap_or_default();
    let load = st
        .load
        .filter(|l| st.active_version.as_deref() == Some(l.version.as_str()))
        .ok_or_else(|| {
            format!("no load measured for the active version of {name} yet: nothing to apply")
        })?;
    if let Some(s) = load.split().filter(|_| vi.spec.rebalance.split_lists) {
        return Ok(Applicable::Split(s));
    }
    match load.plan.map(|p| p.moves.len()).unwrap_or(0) {
        0 => Err(format!(
            "no move of a whole list lowers the most loaded shard of {name}: nothing to apply"
        )),
        n => Ok(Applicable::Moves(n)),
    }
}

/// What applying the plan does.
#[derive(Debug, PartialEq)]
pub enum Applicable {
    Moves(usize),
    Split(ListSplit),
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let kube = connect(g).await?;
    let vi = kube.index(&args.name).await?;
    let load = vi.status.as_ref().and_then(|s| s.load.as_ref());
    if args.dry_run {
        match args.out.document(&load)? {
            Some(text) => print!("{text}"),
            None => print!("{}", report(&args.name, load, Timestamp::now())),
        }
        return Ok(());
    }
    let what = match applicable(&vi).map_err(|e| anyhow::anyhow!(e))? {
        Applicable::Moves(n) => format!("{n} list move(s) of the current plan"),
        Applicable::Split(s) => {
            format!("a split of list {}, the new half on shard {}", s.list, s.to)
        }
    };
    let token = retrain::token(Timestamp::now(), retrain::nonce(), None);
    kube.indexes()
        .patch(
            &args.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {annotations::REBALANCE: token}}})),
        )
        .await
        .map_err(|e| anyhow::anyhow!("annotating vectorindex {}: {e}", args.name))?;
    println!("{}={token}", annotations::REBALANCE);
    eprintln!(
        "vectorindex.quiver.dev/{} rebalance requested ({what}): its next version records trigger rebalance:{token}; follow it with kubectl quiver wait {} --for=Ready",
        args.name, args.name
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use quiver_api::v1alpha1::{HotList, ListMove, RebalancePlan, ShardLoad};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    pub fn sample() -> LoadStatus {
        LoadStatus {
            version: "v1-0a0b0c0d".into(),
            imbalance: 1.6,
            shards: vec![
                ShardLoad {
                    shard: 0,
                    share: 0.8,
                    replicas: 1,
                },
                ShardLoad {
                    shard: 1,
                    share: 0.2,
                    replicas: 1,
                },
            ],
            hottest_lists: vec![
                HotList {
                    list: 3,
                    shard: 0,
                    share: 0.4,
                    entries: 1200,
                },
                HotList {
                    list: 9,
                    shard: 1,
                    share: 0.1,
                    entries: 800,
                },
            ],
            plan: Some(RebalancePlan {
                moves: vec![ListMove {
                    list: 5,
                    from: 0,
                    to: 1,
                    bytes: 3 << 20,
                }],
                bytes: 3 << 20,
                imbalance_after: 1.1,
                split_list: None,
            }),
            measured_at: Time(at(1_800_000_000)),
        }
    }

    #[test]
    fn the_hot_shard_is_named_with_its_share_replicas_and_hottest_list() {
        let l = sample();
        assert_eq!(
            hot_shard(&l).unwrap(),
            "shard 0 takes 80% of the load on 1 replica (1.60x the mean per replica); its hottest list 3 (1200 entries) takes 40%"
        );
        // Per replica, not per shard: three replicas carry 60% more lightly than one 40%.
        let mut l = sample();
        l.shards[0].share = 0.6;
        l.shards[0].replicas = 3;
        l.shards[1].share = 0.4;
        assert!(hot_shard(&l).unwrap().starts_with("shard 1 takes 40%"));
    }

    #[test]
    fn the_report_shows_shares_lists_and_the_plan() {
        let r = report("docs", Some(&sample()), at(1_800_000_020));
        assert!(
            r.starts_with("Load of v1-0a0b0c0d (measured 20s ago): imbalance 1.60"),
            "{r}"
        );
        assert!(
            r.contains("SHARD   SHARE   REPLICAS\n0       80%     1\n"),
            "{r}"
        );
        assert!(r.contains("  3      0       40%     1200\n"), "{r}");
        assert!(
            r.contains("Plan: move 1 list (3.0 MiB); imbalance 1.60 -> 1.10\n"),
            "{r}"
        );
        assert!(r.contains("  5      0      1    3.0 MiB\n"), "{r}");

        let mut split = sample();
        split.plan = Some(RebalancePlan {
            moves: vec![],
            bytes: 0,
            imbalance_after: 1.6,
            split_list: Some(3),
        });
        let r = report("docs", Some(&split), at(1_800_000_020));
        assert!(r.contains("Plan: no move helps."), "{r}");
        assert!(r.contains("List 3 alone takes more"), "{r}");
        // Shard 1 is the cooler one: the new half goes there.
        assert!(r.contains("the new half on shard 1;"), "{r}");

        let mut none = sample();
        none.plan = None;
        assert!(report("docs", Some(&none), at(1_800_000_020)).contains("Plan: none."));
        assert!(report("docs", None, at(0)).starts_with("No load measured for docs yet"));
    }

    #[test]
    fn a_plan_applies_only_when_allowed_measured_for_the_active_version_and_not_empty() {
        let mut vi = crate::versions::tests::sample();
        let active = vi.status.as_ref().unwrap().active_version.clone().unwrap();
        let mut load = sample();
        load.version = active.clone();
        vi.status.as_mut().unwrap().load = Some(load.clone());
        assert_eq!(applicable(&vi), Ok(Applicable::Moves(1)));
        vi.spec.rebalance.mode = RebalanceMode::Off;
        assert!(applicable(&vi).unwrap_err().contains("mode is Off"));
        vi.spec.rebalance.mode = RebalanceMode::Auto;
        assert_eq!(applicable(&vi), Ok(Applicable::Moves(1)));
        vi.status.as_mut().unwrap().load.as_mut().unwrap().version = "v0-0a0b0c0d".into();
        assert!(applicable(&vi).unwrap_err().contains("no load measured"));
        let mut split = load.clone();
        if let Some(p) = split.plan.as_mut() {
            p.split_list = Some(3);
        }
        vi.status.as_mut().unwrap().load = Some(split);
        assert_eq!(
            applicable(&vi),
            Ok(Applicable::Split(ListSplit {
                list: 3,
                from: 0,
                to: 1
            })),
            "a split comes before the moves"
        );
        vi.spec.rebalance.split_lists = false;
        assert_eq!(
            applicable(&vi),
            Ok(Applicable::Moves(1)),
            "splitLists: false moves only"
        );
        vi.spec.rebalance.split_lists = true;
        let mut empty = load;
        empty.plan = None;
        vi.status.as_mut().unwrap().load = Some(empty);
        assert!(applicable(&vi).unwrap_err().contains("nothing to apply"));
    }

    #[test]
    fn byte_figures_are_human() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
