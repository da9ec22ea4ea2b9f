//! `gpushare explain`: what create would do with a bundle, from the very
//! pipeline create runs (`placement::prepare`), without doing it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::bundle::Bundle;
use crate::config::Config;
use crate::decide::Decision;
use crate::edits::ContainerEdits;
use crate::placement::{DriverInjection, PlacementError};
use crate::text::visible;

/// The explain document (`--json`, a contract: see the README).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explain {
    pub decision: Verdict,
    pub gpu: Option<GpuRef>,
    pub thread_percentage: Option<f64>,
    pub pinned_mem_limit: Option<String>,
    pub reason: Option<String>,
    /// Only on an assignment: whether the container is an MPS client, the
    /// driver's files it gets, and warnings.
    #[serde(flatten)]
    pub assigned: Option<Assigned>,
    pub edits: ContainerEdits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Assign,
    Reject,
    Untouched,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuRef {
    pub index: u32,
    pub uuid: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assigned {
    pub mps: bool,
    pub driver: Option<DriverInjection>,
    pub warnings: Vec<String>,
}

impl Explain {
    fn without(decision: Verdict, reason: String) -> Explain {
        Explain {
            decision,
            gpu: None,
            thread_percentage: None,
            pinned_mem_limit: None,
            reason: Some(reason),
            assigned: None,
            edits: ContainerEdits::default(),
        }
    }

    /// Create would refuse it (exit 2).
    pub fn refused(&self) -> bool {
        self.decision == Verdict::Reject
    }
}

pub fn explain(bundle_dir: &Path, cfg: &Config) -> Result<Explain, PlacementError> {
    let bundle = Bundle::open(bundle_dir)?;
    let untouched = || {
        Explain::without(
            Verdict::Untouched,
            "NVIDIA_VISIBLE_DEVICES is unset, empty or void: not a GPU container".into(),
        )
    };
    // The very pipeline create runs, from the holds that count now.
    let plan = match crate::placement::preview(&bundle, cfg) {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(untouched()),
        Err(PlacementError::Request(e)) => {
            return Ok(Explain::without(Verdict::Reject, e.to_string()))
        }
        Err(PlacementError::Refused(r)) => return Ok(Explain::without(Verdict::Reject, r.0)),
        Err(e) => return Err(e),
    };
    let Decision::Assign(a) = &plan.decision else {
        return Ok(untouched());
    };
    Ok(Explain {
        decision: Verdict::Assign,
        gpu: a.gpus.first().map(|g| GpuRef {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
        }),
        thread_percentage: a.thread_percentage.as_ref().map(|t| t.value),
        pinned_mem_limit: a.pinned_mem_limit.clone(),
        reason: a
            .gpus
            .is_empty()
            .then(|| "NVIDIA_VISIBLE_DEVICES=none: a GPU container with no GPU".into()),
        assigned: Some(Assigned {
            mps: a.mps,
            driver: plan.driver,
            warnings: plan.warnings,
        }),
        edits: plan.edits,
    })
}

/// The explain document for people.
pub fn explain_text(e: &Explain) -> String {
    let mut out = String::new();
    let verdict = match e.decision {
        Verdict::Assign => "assign",
        Verdict::Reject => "reject",
        Verdict::Untouched => "untouched",
    };
    let _ = writeln!(out, "decision: {verdict}");
    if let Some(g) = &e.gpu {
        let _ = writeln!(
            out,
            "gpu:      {} {} ({})",
            g.index,
            visible(&g.uuid),
            visible(&g.name)
        );
    }
    if let Some(p) = e.thread_percentage {
        let _ = writeln!(out, "share:    {}", super::percent(p));
    }
    if let Some(l) = &e.pinned_mem_limit {
        let _ = writeln!(out, "pinned:   {}", visible(l));
    }
    if let Some(r) = &e.reason {
        let _ = writeln!(out, "reason:   {}", visible(r));
    }
    if let Some(a) = &e.assigned {
        if let Some(d) = &a.driver {
            let line = match d.inject {
                "gpushare" => format!(
                    "{} from driver {} into {}",
                    d.capabilities,
                    d.version.as_deref().unwrap_or("(version unknown)"),
                    d.library_dir.as_deref().unwrap_or("")
                ),
                _ => format!(
                    "{}, brought by the chained runtime (driver.inject = \"none\")",
                    d.capabilities
                ),
            };
            let _ = writeln!(out, "driver:   {}", visible(&line));
        }
        for w in &a.warnings {
            let _ = writeln!(out, "warning:  {}", visible(w));
        }
    }
    for d in &e.edits.devices {
        let _ = writeln!(
            out,
            "device:   {} c {}:{} (host {})",
            visible(&d.path),
            d.major,
            d.minor,
            visible(&d.host_path.display().to_string())
        );
    }
    for m in &e.edits.mounts {
        let _ = writeln!(
            out,
            "mount:    {} -> {}",
            visible(&m.source.display().to_string()),
            visible(&m.destination)
        );
    }
    for kv in &e.edits.env {
        let _ = writeln!(out, "env:      {}", visible(kv));
    }
    out
}
