//! The shadow package a rollout's shadow stage names: loaded beside the primary model (downloaded and checked like
//! any package, smoke-tested, never written to a slot, never serving), fed a share of answered requests, and its
//! agreement with the active model collected into telemetry and the next report.

use super::*;

impl Agent {
    /// Loads the shadow package the assignment names beside the active model (downloaded and checked like any
    /// package, smoke-tested, never written to a slot and never serving), or drops the one running.
    pub(super) async fn update_shadow(&mut self, source: &dyn Transport, shadow: Option<&director::AssignedTarget>) {
        let Some(t) = shadow else {
            if let Some(d) = self.models.shadow() {
                self.collect_shadow();
                self.models.set_shadow(None, 0);
                self.outbox.push(format!("stopped running {} in shadow", d.short()));
            }
            return;
        };
        if self.models.shadow() == Some(t.sha256) {
            return;
        }
        let target = Target { path: t.path.clone(), digest: t.sha256, length: t.length };
        let loaded = match self.try_download(source, &target).await {
            Ok(()) => self.load_shadow(&target),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(served) => {
                self.models.set_shadow(Some(Arc::new(served)), self.config.shadow_percent);
                self.outbox.push(format!(
                    "running {} in shadow on {}% of requests",
                    t.sha256.short(),
                    self.config.shadow_percent
                ));
            }
            Err(e) => self.outbox.push(format!("shadow package {} not loaded: {e}", t.sha256.short())),
        }
    }

    fn load_shadow(&self, t: &Target) -> Result<Served, String> {
        let bytes = std::fs::read(self.layout.staging(&t.digest)).map_err(|e| e.to_string())?;
        if Digest::of(&bytes) != t.digest {
            return Err("does not match its digest".into());
        }
        let package = Package::decode(&bytes, &PackageLimits::default()).map_err(|e| e.to_string())?;
        refuse_non_model(&package.manifest)?;
        if let Some(policy) = &self.policy {
            let now = self.clock.wall().max(self.state().last_known_time);
            let len = package.model.len() as u64;
            if let Some(r) = policy.after_download(t.digest, &package.manifest, len, None, now, false) {
                return Err(format!("refused by site policy: rule `{}`: {}", r.rule, r.reason));
            }
        }
        Served::load(package.manifest, package.model, t.digest).map_err(|e| e.to_string())
    }

    /// Takes the shadow's comparisons since the last call into telemetry and the next report.
    pub(super) fn collect_shadow(&mut self) {
        let Some((package, stats)) = self.models.take_shadow_stats() else { return };
        if stats.samples == 0 {
            return;
        }
        self.queue(EventKind::ShadowDivergence {
            package,
            max_abs_diff: if stats.max_abs_diff.is_finite() { stats.max_abs_diff } else { f64::MAX },
            top1_agreement: stats.agreed as f64 / stats.samples as f64,
            latency_ratio: stats.latency_ratio_sum / stats.samples as f64,
            samples: stats.samples,
        });
        let pending =
            self.pending_shadow.get_or_insert(outpost_shared::update::ShadowReport { package, agreed: 0, compared: 0 });
        if pending.package != package {
            *pending = outpost_shared::update::ShadowReport { package, agreed: 0, compared: 0 };
        }
        pending.agreed += stats.agreed;
        pending.compared += stats.samples;
        self.outbox.push(format!(
            "shadow {}: {} of {} answers agree on top-1",
            package.short(),
            stats.agreed,
            stats.samples
        ));
    }
}
