//! glibc malloc settings for the long-lived services (`outpost-agent run`, `outpost-hub serve`): both load models
//! with tract, whose large short-lived buffers otherwise leave freed memory held by the process for good.

/// At most two arenas instead of one per thread that ever allocated (tokio's workers and blocking threads each got
/// one), and blocks of 1 MiB or more from `mmap` at a fixed threshold, so that freeing them gives them back.
/// Without them glibc raises its mmap threshold each time tract frees a large buffer while loading a model (its
/// optimiser's node vector reaches 4 MB), later large blocks land in the heap among live ones, and an idle agent
/// serving a 0.6 MB model kept some 10 MiB of freed memory (`malloc_stats` at idle: 18.9 MB held, 8.1 MB in use);
/// a hub adding a package a minute grew from 65 to 212 MiB in a 30-minute soak. A 64 KiB threshold kept 2.5 MiB
/// less but made every inference map and fault in its tensors: ppocr-direction ran 2.5 to 3 times slower.
/// Measured in BENCHMARKS.md ("Agent: idle RSS", "Soak under churn").
pub const MALLOC_TUNABLES: &str = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576";

/// Runs this same binary again, same arguments, with [`MALLOC_TUNABLES`] in `GLIBC_TUNABLES`: glibc reads its
/// tunables once, before `main`, and the workspace forbids the `unsafe` a `mallopt` call would need. Returns (does
/// nothing) when `GLIBC_TUNABLES` already sets a malloc tunable (this is the re-executed process, or whoever
/// started the service chose its own), or off glibc; otherwise returns only if the re-execution failed. Call it
/// first thing, before any thread starts.
pub fn tune() -> std::io::Result<()> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Ok(());
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.") {
        return Ok(());
    }
    let tunables = if current.is_empty() { MALLOC_TUNABLES.to_owned() } else { format!("{current}:{MALLOC_TUNABLES}") };
    let exe = std::env::current_exe()?;
    Err(std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&exe).args(std::env::args_os().skip(1)).env("GLIBC_TUNABLES", tunables),
    ))
}
