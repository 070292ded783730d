//! The router package a device's assignment names: fetched and verified like any package (TUF-listed, length and
//! hash), refused unless it is a router, and installed into the inference API's routes; kept as `router.opkg` so a
//! restart routes at once. When the assignment names another router (a newer one, or the one before a revoked
//! one) it replaces the rules alone, models untouched; when it names none, routing stops. A verified package that
//! does not load as a router is reported as failed (`RouterReport::failed`), so its release counts it and the
//! director stops offering it; a download that fails is retried at the next check.

use outpost_shared::manifest::PackageKind;
use outpost_shared::route::Router;

use super::*;

impl Agent {
    /// Installs the router `assigned` names, or stops routing when it names none (without routes, nothing).
    pub(super) async fn update_router(&mut self, source: &dyn Transport, assigned: Option<&director::AssignedTarget>) {
        let Some(routes) = self.routes.clone() else { return };
        let Some(t) = assigned else {
            if let Some(d) = self.router.take() {
                routes.set_router(None);
                let _ = std::fs::remove_file(self.layout.root().join(ROUTER_FILE));
                self.outbox.push(format!("stopped routing by {}: the assignment names no router", d.short()));
            }
            return;
        };
        if self.router == Some(t.sha256) {
            return;
        }
        let target = Target { path: t.path.clone(), digest: t.sha256, length: t.length };
        let loaded = match self.try_download(source, &target).await {
            Ok(()) => std::fs::read(self.layout.staging(&target.digest))
                .map_err(|e| e.to_string())
                .and_then(|bytes| self.keep_router(&target.digest, &bytes)),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(router) => {
                let _ = std::fs::remove_file(self.layout.staging(&target.digest));
                let message = format!("routing by {}@{} ({})", router.name, router.version, t.sha256.short());
                tracing::info!(package = t.sha256.short(), "{message}");
                routes.set_router(Some(router));
                self.router = Some(t.sha256);
                self.outbox.push(message);
            }
            // The router installed before keeps routing.
            Err(e) => self.outbox.push(format!("router package {} not installed: {e}", t.sha256.short())),
        }
    }

    /// Checks a verified package is a router (else records it as failed) and keeps it for the next start.
    fn keep_router(&mut self, digest: &Digest, bytes: &[u8]) -> Result<Router, String> {
        let router = router_of(digest, bytes).inspect_err(|e| {
            let failed = &mut self.router_failed;
            failed.failed.retain(|d| d != digest);
            failed.failed.push(*digest);
            let excess = failed.failed.len().saturating_sub(MAX_FAILED_ROUTERS);
            failed.failed.drain(..excess);
            failed.last_error = Some(e.clone());
        })?;
        device::write_atomic(&self.layout.root().join(ROUTER_FILE), bytes).map_err(|e| e.to_string())?;
        Ok(router)
    }

    /// The router kept from the last run, installed into `routes` at once (the next check confirms or replaces
    /// it).
    pub(super) fn restore_router(&mut self, routes: &crate::inference::Routes) {
        let Ok(bytes) = std::fs::read(self.layout.root().join(ROUTER_FILE)) else { return };
        let digest = Digest::of(&bytes);
        match router_of(&digest, &bytes) {
            Ok(router) => {
                routes.set_router(Some(router));
                self.router = Some(digest);
            }
            Err(e) => tracing::warn!(error = %e, "the router kept from the last run does not load"),
        }
    }
}

/// Where the installed router package is kept, in the device directory.
const ROUTER_FILE: &str = "router.opkg";

/// Most router packages a report names as failed (the newest kept).
const MAX_FAILED_ROUTERS: usize = 16;

fn router_of(digest: &Digest, bytes: &[u8]) -> Result<Router, String> {
    if Digest::of(bytes) != *digest {
        return Err("does not match its digest".into());
    }
    let package = Package::decode(bytes, &PackageLimits::default()).map_err(|e| e.to_string())?;
    if package.manifest.kind != PackageKind::Router {
        let m = &package.manifest;
        return Err(format!("{}@{} is a {} package, not a router", m.name, m.version, m.kind));
    }
    Router::from_cbor(package.model)
}
