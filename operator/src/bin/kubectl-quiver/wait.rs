//! `wait NAME --for=Ready [--timeout 300s]`: polls the index until the condition holds.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use quiver_api::VectorIndex;
use quiver_api::v1alpha1::{IndexPhase, VersionPhase, conditions};

use crate::connect::{Global, connect};
use crate::versions::{pinned, retrain_token};

/// What `wait` help says `--for` accepts.
pub const FOR_HELP: &str = "\
--for takes:
  Ready            the index serves (phase Ready, condition Ready=True) and has caught up
                   with what was asked: the spec's generation observed, the retrain token
                   acted on, the pinned version active, no version in preparation. After
                   retrain, pin, rollback or unpin this waits for the change to finish.
  condition=Ready  only the Ready condition (as kubectl wait --for=condition=Ready); also
                   condition=Progressing, condition=Degraded, with =False to wait for False
  active=VERSION   VERSION is the active version and the index serves
  phase=PHASE      status.phase is PHASE (Pending, Building, Ready, Degraded, Failed)";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex.
    pub name: String,
    /// The condition to wait for (see below).
    #[arg(long = "for", value_name = "CONDITION", default_value = "Ready")]
    pub for_: String,
    /// How long to wait: 300s, 5m, 1h30m, or seconds.
    #[arg(long, default_value = "300s")]
    pub timeout: String,
    /// Print nothing while waiting.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitFor {
    /// Serving and caught up with what was asked.
    Ready,
    /// A condition with a status.
    Condition(String, String),
    /// This version active and serving.
    Active(String),
    /// status.phase.
    Phase(String),
}

pub fn parse_for(s: &str) -> Result<WaitFor, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("ready") {
        return Ok(WaitFor::Ready);
    }
    let bad = || {
        format!(
            "--for={s}: expected Ready, condition=TYPE[=True|False], active=VERSION or phase=PHASE"
        )
    };
    let (k, v) = s.split_once('=').ok_or_else(bad)?;
    match k.to_ascii_lowercase().as_str() {
        "condition" => {
            let (ty, status) = v.split_once('=').unwrap_or((v, "True"));
            let ty = [
                conditions::READY,
                conditions::PROGRESSING,
                conditions::DEGRADED,
            ]
            .into_iter()
            .find(|t| t.eq_ignore_ascii_case(ty))
            .ok_or_else(|| format!("--for={s}: conditions are Ready, Progressing, Degraded"))?;
            let status = match status.to_ascii_lowercase().as_str() {
                "true" => "True",
                "false" => "False",
                _ => return Err(format!("--for={s}: a condition is True or False")),
            };
            Ok(WaitFor::Condition(ty.into(), status.into()))
        }
        "active" if !v.is_empty() => Ok(WaitFor::Active(v.into())),
        "phase" => ["Pending", "Building", "Ready", "Degraded", "Failed"]
            .into_iter()
            .find(|p| p.eq_ignore_ascii_case(v))
            .map(|p| WaitFor::Phase(p.into()))
            .ok_or_else(|| {
                format!("--for={s}: phases are Pending, Building, Ready, Degraded, Failed")
            }),
        _ => Err(bad()),
    }
}

/// `300s`, `5m`, `1h30m`, `2h`, `1.5s`, `250ms`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return to_duration(secs, s);
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: a number needs a unit (ms, s, m, h)"))?;
        let n: f64 = rest[..end]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 300s, 5m or 1h30m"))?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h)")),
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    to_duration(total, s)
}

fn to_duration(secs: f64, s: &str) -> Result<Duration, String> {
    if (0.0..1e9).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{s:?} is not a duration like 300s, 5m or 1h30m"))
    }
}

fn cond_status<'a>(vi: &'a VectorIndex, ty: &str) -> Option<&'a str> {
    vi.status.as_ref()?.condition(ty).map(|c| c.status.as_str())
}

/// Whether the index serves and has caught up with what was asked; else what it still waits
/// for.
pub fn settled(vi: &VectorIndex) -> Result<(), String> {
    let Some(st) = vi.status.as_ref() else {
        return Err("no status yet".into());
    };
    if st.phase != Some(IndexPhase::Ready) {
        return Err(format!(
            "phase is {}",
            st.phase.map_or("unset".into(), |p| format!("{p:?}"))
        ));
    }
    if cond_status(vi, conditions::READY) != Some("True") {
        return Err("the Ready condition is not True".into());
    }
    if let (Some(g), Some(o)) = (vi.metadata.generation, st.observed_generation)
        && o < g
    {
        return Err(format!("spec generation {g} not yet observed"));
    }
    let pin = pinned(vi);
    if let Some(p) = pin
        && st.active_version.as_deref() != Some(p)
    {
        return Err(format!("pinned {p} is not active yet"));
    }
    let token = retrain_token(vi);
    // While pinned a retrain waits for the pin to go: not something this wait can see end.
    if pin.is_none()
        && let Some(t) = token
        && st.observed_retrain.as_deref() != Some(t)
    {
        return Err(format!("retrain {t:?} not yet acted on"));
    }
    let rebalance = vi
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(quiver_api::annotations::REBALANCE))
        .map(|t| t.trim())
        .filter(|t| !t.is_empty());
    if pin.is_none()
        && vi.spec.rebalance.mode != quiver_api::v1alpha1::RebalanceMode::Off
        && let Some(t) = rebalance
        && st.observed_rebalance.as_deref() != Some(t)
    {
        return Err(format!("rebalance {t:?} not yet acted on"));
    }
    if let Some(v) = st.versions.iter().find(|v| {
        matches!(
            v.phase,
            VersionPhase::Pending
                | VersionPhase::Training
                | VersionPhase::Building
                | VersionPhase::Warming
                | VersionPhase::Gating
        )
    }) {
        return Err(format!("{} is {:?}", v.name, v.phase));
    }
    Ok(())
}

pub fn met(vi: &VectorIndex, w: &WaitFor) -> bool {
    let st = vi.status.as_ref();
    match w {
        WaitFor::Ready => settled(vi).is_ok(),
        WaitFor::Condition(ty, status) => cond_status(vi, ty) == Some(status.as_str()),
        WaitFor::Active(v) => {
            st.and_then(|s| s.active_version.as_deref()) == Some(v.as_str())
                && cond_status(vi, conditions::READY) == Some("True")
        }
        WaitFor::Phase(p) => {
            st.and_then(|s| s.phase)
                .map(|x| format!("{x:?}"))
                .as_deref()
                == Some(p.as_str())
        }
    }
}

/// One line on where the index is: phase, active version, what is in preparation.
pub fn progress_line(vi: &VectorIndex) -> String {
    let st = vi.status.clone().unwrap_or_default();
    let mut line = format!(
        "phase {}, active {}",
        st.phase.map_or("unset".into(), |p| format!("{p:?}")),
        st.active_version.as_deref().unwrap_or("none")
    );
    if let Some(v) = st
        .versions
        .iter()
        .find(|v| !v.phase.is_final() && st.active_version.as_deref() != Some(v.name.as_str()))
    {
        line.push_str(&format!("; {} {:?}", v.name, v.phase));
        if let Some(r) = &v.reason {
            line.push_str(&format!(" ({r})"));
        }
    }
    line
}

/// Why the wait did not end: the progress line, what it waited for, and every condition that
/// says something is wrong or going on.
pub fn timeout_message(vi: &VectorIndex, w: &WaitFor) -> String {
    let mut parts = vec![progress_line(vi)];
    if *w == WaitFor::Ready
        && let Err(why) = settled(vi)
    {
        parts.push(format!("waiting because {why}"));
    }
    for c in vi.status.iter().flat_map(|s| s.conditions.iter()) {
        let notable = match c.type_.as_str() {
            conditions::READY => c.status != "True",
            _ => c.status == "True",
        };
        if notable {
            parts.push(format!(
                "{}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            ));
        }
    }
    parts.join("; ")
}

fn describe(w: &WaitFor) -> String {
    match w {
        WaitFor::Ready => "Ready".into(),
        WaitFor::Condition(t, s) => format!("condition {t}={s}"),
        WaitFor::Active(v) => format!("{v} active"),
        WaitFor::Phase(p) => format!("phase {p}"),
    }
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let what = parse_for(&args.for_).map_err(|e| anyhow!(e))?;
    let timeout = parse_duration(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
    let kube = connect(g).await?;
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let vi = kube.index(&args.name).await?;
        if met(&vi, &what) {
            println!(
                "vectorindex.quiver.dev/{} condition met ({}: {})",
                args.name,
                describe(&what),
                progress_line(&vi)
            );
            return Ok(());
        }
        let now = progress_line(&vi);
        if !args.quiet && now != last {
            eprintln!("[{:6.1}s] {}: {now}", t0.elapsed().as_secs_f64(), args.name);
            last = now;
        }
        if t0.elapsed() >= timeout {
            return Err(anyhow!(
                "timed out after {} waiting for {} to be {}: {}",
                args.timeout,
                args.name,
                describe(&what),
                timeout_message(&vi, &what)
            ));
        }
        let left = timeout.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::versions::tests::sample;

    #[test]
    fn durations_in_kubectl_style() {
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .contains("unknown unit \"x\"")
        );
        assert!(parse_duration("-3").is_err());
    }

    #[test]
    fn for_values() {
        assert_eq!(parse_for("Ready").unwrap(), WaitFor::Ready);
        assert_eq!(parse_for("ready").unwrap(), WaitFor::Ready);
        assert_eq!(
            parse_for("condition=Ready").unwrap(),
            WaitFor::Condition("Ready".into(), "True".into())
        );
        assert_eq!(
            parse_for("condition=degraded=false").unwrap(),
            WaitFor::Condition("Degraded".into(), "False".into())
        );
        assert_eq!(
            parse_for("active=v2-0a0b0c0d").unwrap(),
            WaitFor::Active("v2-0a0b0c0d".into())
        );
        assert_eq!(
            parse_for("phase=failed").unwrap(),
            WaitFor::Phase("Failed".into())
        );
        assert!(parse_for("Serving").is_err());
        assert!(parse_for("condition=Happy").is_err());
        assert!(parse_for("active=").is_err());
    }

    #[test]
    fn ready_means_serving_and_caught_up() {
        let mut vi = sample();
        // v3 is still Building: serving, but not caught up.
        assert_eq!(settled(&vi).unwrap_err(), "v3-0a0b0c0d is Building");
        assert!(met(&vi, &parse_for("condition=Ready").unwrap()));
        assert!(met(&vi, &parse_for("active=v2-0a0b0c0d").unwrap()));
        assert!(!met(&vi, &WaitFor::Ready));
        let st = vi.status.as_mut().unwrap();
        st.versions.remove(0);
        st.target_version = None;
        assert!(met(&vi, &WaitFor::Ready));
        // A new retrain token, a spec change, a pin: not caught up until acted on.
        let mut t = vi.clone();
        t.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(quiver_api::annotations::RETRAIN.into(), "x".into());
        assert_eq!(settled(&t).unwrap_err(), "retrain \"x\" not yet acted on");
        let mut t = vi.clone();
        t.metadata.generation = Some(3);
        assert_eq!(
            settled(&t).unwrap_err(),
            "spec generation 3 not yet observed"
        );
        let mut t = vi.clone();
        t.spec.pinned_version = Some("v1-0a0b0c0d".into());
        assert_eq!(
            settled(&t).unwrap_err(),
            "pinned v1-0a0b0c0d is not active yet"
        );
        t.status.as_mut().unwrap().active_version = Some("v1-0a0b0c0d".into());
        assert!(settled(&t).is_ok());
        // Degraded is not Ready.
        vi.status.as_mut().unwrap().phase = Some(IndexPhase::Degraded);
        assert_eq!(settled(&vi).unwrap_err(), "phase is Degraded");
        vi.status = None;
        assert_eq!(settled(&vi).unwrap_err(), "no status yet");
    }

    #[test]
    fn a_timeout_says_what_the_index_is_doing() {
        let vi = sample();
        let m = timeout_message(&vi, &WaitFor::Ready);
        assert_eq!(
            m,
            "phase Ready, active v2-0a0b0c0d; v3-0a0b0c0d Building (build part 1 failed: no space left on device); \
             waiting because v3-0a0b0c0d is Building; \
             Progressing=True Building: v3-0a0b0c0d is Building: build part 1 failed: no space left on device"
        );
    }
}
