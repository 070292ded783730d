//! Section `failover`: from a failed health check of a package on trial until the previous model serves again,
//! against a cold load of that model in process (and, for reference, a swap of a model kept in memory).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use outpost_agent::config::AgentConfig;
use outpost_agent::driver::Agent;
use outpost_agent::inference::{ModelHandle, Served};
use outpost_shared::update::Phase;

use crate::fixtures::Loaded;
use crate::hub::Hub;
use crate::{FAILOVER_RUNS, HEALTH, now, real_wall};

pub(crate) struct Failover {
    pub(crate) ours: Vec<f64>,
    pub(crate) cold_load: Vec<f64>,
    pub(crate) swap_in_memory: Vec<f64>,
}

pub(crate) fn bench_failover(l: &Loaded) -> Result<Failover> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hub = Hub::new(real_wall())?;
    let addr = hub.serve(&rt)?;
    let v1 = hub.publish(&l.model_path, &l.manifest_text, None, "stable")?;
    let config_path = hub.device("dev", 1, addr, "stable", "127.0.0.1:0")?;
    let config = AgentConfig::load(&config_path)?;
    let models = Arc::new(ModelHandle::new());
    let mut agent = Agent::open_with(config, hub.clock.clone(), models.clone())?;
    rt.block_on(agent.check())?;
    for _ in 0..HEALTH {
        agent.record_inference(true)?;
    }
    ensure!(agent.state().phase == Phase::Idle, "v1 not confirmed: {:?}", agent.state().phase);
    let current = || models.current().map(|s| *s.digest());
    ensure!(current() == Some(v1), "v1 is not serving");

    let mut f = Failover { ours: vec![], cold_load: vec![], swap_in_memory: vec![] };
    for i in 1..=FAILOVER_RUNS {
        hub.clock.advance(Duration::from_secs(2));
        let vi = hub.publish(&l.model_path, &l.manifest_text, Some(&format!("9.0.{i}")), "stable")?;
        rt.block_on(agent.check())?;
        ensure!(agent.on_trial() == Some(vi) && current() == Some(vi), "new package {i} is not on trial");
        let previous_in_memory = models.current().context("serving")?;

        let start = now();
        agent.record_inference(false)?; // the failed health check
        let back = current() == Some(v1);
        f.ours.push(start.elapsed().as_secs_f64());
        ensure!(back, "not serving the previous model after the failure");

        // Baseline: loading the previous model for serving from bytes already in memory (what activation does
        // after reading the slot's files).
        let start = now();
        let served = Served::load(l.manifest.clone(), &l.model_bytes, v1)?;
        f.cold_load.push(start.elapsed().as_secs_f64());
        // Reference: swapping in a model kept in memory.
        let start = now();
        let old = models.swap(previous_in_memory);
        f.swap_in_memory.push(start.elapsed().as_secs_f64());
        models.swap(old.context("a model was active")?);
        drop(served);
    }
    Ok(f)
}
