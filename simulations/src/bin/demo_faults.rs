//! Faulty releases for the demo and for fault drills: a package whose smoke test fails on the device, published
//! around the hub's own checks, and a model that passes its smoke test yet answers NaN on real inputs.
//!
//! Neither can come from `outpost-hub package add` alone, which refuses both kinds of breakage that it can see:
//! this tool plays a build pipeline that went wrong, so the devices' own defences can be shown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use outpost_hub::Registry;
use outpost_hub::blobs::BlobStore;
use outpost_hub::clock::SystemClock;
use outpost_hub::config::{CONFIG_FILE, HubConfig};
use outpost_hub::registry::PackageRecord;
use outpost_hub::tuf::{Key, PublishOutcome, TufRepo};
use outpost_shared::clock::Clock;
use outpost_shared::manifest::{LineageOperator, Manifest, RiskTier};
use outpost_shared::{Digest, package, testkit};

/// Makes broken releases on purpose, to show that devices refuse or roll them back.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The hub's data directory.
    #[arg(long, value_name = "DIR", env = "OUTPOST_HUB_DIR")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Copy a registered package under a new version whose smoke-test expectations are wrong (the outputs
    /// swapped), and publish it to a channel with a targets key, bypassing `package add` (which would refuse
    /// it). Devices download and verify it, fail its smoke test in the inactive slot and never activate it.
    BrokenSmoke {
        /// The package to copy: a package file (`outpost-hub reconstruct REF --out DIR` writes one, also while the
        /// hub serves), or, with no hub serving, a digest, prefix, name@version or alias.
        package: String,
        /// Version of the broken copy.
        #[arg(long)]
        version: String,
        /// Channel to publish to.
        #[arg(long, value_name = "NAME")]
        channel: String,
        /// Targets key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Write a copy of a registered package's model that answers NaN whenever an input element is below
    /// --threshold (its smoke test still passes), with its manifest, for `outpost-hub package add`. Devices
    /// activate it, then fail their health window on real traffic and roll back.
    NanOnDark {
        /// The package to derive from (a package file, or a reference as for `broken-smoke`).
        package: String,
        /// Version of the derived package.
        #[arg(long)]
        version: String,
        /// Inputs below this value make the model answer NaN.
        #[arg(long, default_value_t = 0.25)]
        threshold: f32,
        /// Where to write model.onnx and manifest.toml.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    outpost_sim::log_warnings();
    let cli = Cli::parse();
    match cli.command {
        Cmd::BrokenSmoke { package, version, channel, key } => {
            broken_smoke(&cli.data_dir, &package, &version, &channel, &key)
        }
        Cmd::NanOnDark { package, version, threshold, out_dir } => {
            nan_on_dark(&cli.data_dir, &package, &version, threshold, &out_dir)
        }
    }
}

/// A package's digest, manifest and model bytes: `reference` is a package file (what `outpost-hub reconstruct`
/// writes, the way to reach a serving hub's packages), or a reference the registry resolves when no hub serves.
fn source(dir: &Path, reference: &str) -> Result<(Digest, Manifest, Vec<u8>)> {
    let file = Path::new(reference);
    let bytes = if file.is_file() {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    } else {
        let reg = Registry::open(dir, Arc::new(SystemClock))?;
        let digest = reg.resolve(reference)?;
        std::fs::read(reg.blobs().path_of(&digest)).with_context(|| format!("reading package {digest}"))?
    };
    let pkg = package::Package::decode(&bytes, &package::PackageLimits::default())?;
    Ok((Digest::of(&bytes), pkg.manifest, pkg.model.to_vec()))
}

fn derived(mut manifest: Manifest, parent: Digest, version: &str) -> Result<Manifest> {
    manifest.version = version.parse().with_context(|| format!("version `{version}`"))?;
    manifest.lineage.operator = LineageOperator::Convert;
    manifest.lineage.parents = vec![parent];
    Ok(manifest)
}

fn broken_smoke(dir: &Path, reference: &str, version: &str, channel: &str, key: &Path) -> Result<()> {
    let clock = Arc::new(SystemClock);
    let (parent, manifest, model) = source(dir, reference)?;
    let mut manifest = derived(manifest, parent, version)?;
    let mut swapped = false;
    for t in &mut manifest.smoke_test.expected {
        if let Some(values) = t.values.as_mut().filter(|v| v.len() > 1 && v.first() != v.last()) {
            values.reverse();
            swapped = true;
        } else if let Some(fill) = t.fill.as_mut() {
            *fill += 1.0;
            swapped = true;
        }
    }
    if !swapped {
        bail!("{reference}: its smoke test has no expected output this tool knows how to falsify");
    }
    let bytes = package::encode(&manifest, &model);
    // Write-once blobs need no index: the package is published around the registry, as a broken pipeline would.
    let blobs = BlobStore::new(dir.join("blobs"));
    let (digest, _) = blobs.put(&bytes)?;
    let (model_digest, _) = blobs.put(&model)?;
    let record = PackageRecord {
        digest,
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        package_len: bytes.len() as u64,
        model_digest,
        model_len: model.len() as u64,
        added_at: clock.wall(),
    };
    let config = HubConfig::load(&dir.join(CONFIG_FILE))?;
    let repo = TufRepo::new(dir, config.repository);
    match repo.publish(&record, &manifest, channel, &Key::load(key)?, key, clock.wall())? {
        PublishOutcome::Published { path, .. } => {
            eprintln!("published {path} ({}@{version}, smoke-test expectations swapped; never checked by the hub)", {
                &manifest.name
            });
        }
        PublishOutcome::AwaitingSignatures { path, .. } => {
            bail!("{path} awaits more signatures: use a low-risk package")
        }
    }
    println!("{digest}");
    Ok(())
}

fn nan_on_dark(dir: &Path, reference: &str, version: &str, threshold: f32, out: &Path) -> Result<()> {
    let (parent, manifest, model) = source(dir, reference)?;
    let mut manifest = derived(manifest, parent, version)?;
    // The NaN guard adds operator types a `convert` does not explain, so the hub derives high risk and refuses a
    // lower declared tier: declare it, as an honest pipeline would (publishing then takes a second signature).
    manifest.risk_tier = RiskTier::High;
    let input = manifest.contract.inputs.first().context("the model has no inputs")?.name.clone();
    let model = testkit::nan_below(&model, &input, threshold).context("the registered model is not ONNX")?;
    let text = toml::to_string(&manifest).context("writing the manifest as TOML")?;
    Manifest::from_toml(&text, "manifest.toml").context("the derived manifest does not read back")?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("model.onnx"), model)?;
    std::fs::write(out.join("manifest.toml"), text)?;
    eprintln!(
        "wrote {}/model.onnx and manifest.toml: {}@{version} answers NaN when `{input}` has an element below {threshold}",
        out.display(),
        manifest.name
    );
    Ok(())
}
