//! The web console in a real browser: headless Chromium (Debian's `chromium`, driven through `chromium-driver` over
//! WebDriver) against a serving hub holding the demo's packages (PP-OCR 2.0.0 and its converted 2.0.1, silero-vad),
//! a release of 2.0.1 in stages and devices at two sites. Pages render, the device filter works, an operator
//! pauses the release and the hub's state changes, a viewer cannot, a form whose CSRF token was tampered with is
//! refused. Screenshots of each page go to the target directory, or with `OUTPOST_CONSOLE_SHOTS=docs/console` to the
//! ones the README shows.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::TestHub;
use support::webdriver::{Driver, Session};

#[allow(dead_code, unused_imports)]
#[path = "../src/cli/mod.rs"]
mod cli;

fn models(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(name).to_string_lossy().into_owned()
}

/// Where the screenshots go: `$OUTPOST_CONSOLE_SHOTS` (`docs/console` to refresh the committed ones), else the
/// test's own directory under the target directory, so a test run leaves the repository as it was.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("OUTPOST_CONSOLE_SHOTS")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-shots"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the page's HTML contains `text` (a form posted from a script navigates after the call returns).
#[allow(clippy::disallowed_methods)] // waiting for a real browser
fn wait_for(s: &Session<'_>, text: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page = s.source();
        if page.contains(text) {
            return page;
        }
        assert!(std::time::Instant::now() < deadline, "`{text}` never appeared on {}:\n{page}", s.url());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the browser's URL contains `part` (a click's navigation may finish after the call returns).
#[allow(clippy::disallowed_methods)] // waiting for a real browser
fn wait_url(s: &Session<'_>, part: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !s.url().contains(part) {
        assert!(std::time::Instant::now() < deadline, "the browser never reached `{part}`: {}", s.url());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn login(s: &Session<'_>, base: &str, user: &str, password: &str) {
    s.goto(&format!("{base}releases"));
    assert!(s.url().ends_with("/login"), "a page without a session goes to the login page: {}", s.url());
    s.find("input[name=user]").send_keys(user);
    s.find("input[name=password]").send_keys(password);
    s.find("form.login button").click();
    wait_url(s, "/releases");
}

#[test]
fn the_console_in_a_real_browser_renders_filters_and_only_lets_an_operator_pause() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    for (model, manifest) in [
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-direction.toml"),
        ("ppocr_direction_fixed48x192.onnx", "ppocr-direction-fixed.toml"),
        ("silero_vad_16k_sequence.onnx", "silero-vad.toml"),
    ] {
        hub.ok(&["package", "add", &models(model), "--manifest", &models(manifest)]);
    }
    hub.ok(&["alias", "set", "stable", "ppocr-direction@2.0.1"]);
    let key = offline.join("targets-1.key");
    for p in ["ppocr-direction@2.0.0", "ppocr-direction@2.0.1"] {
        hub.ok(&["release", "publish", p, "--channel", "stable", "--key", key.to_str().unwrap()]);
    }
    // Twelve devices: eight at plant-7 (one its site node), four at lab-2.
    let mut keys = Vec::new();
    for i in 0..12u8 {
        let k = hex_key(i);
        let site = if i < 8 { "plant-7" } else { "lab-2" };
        let mut args = vec!["device", "approve", &k, "--channel", "stable", "--site", site];
        if i == 0 {
            args.push("--site-node");
        }
        hub.ok(&args);
        keys.push(k);
    }
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/canary.toml");
    assert_eq!(hub.ok(&["release", "start", "ppocr-direction@2.0.1", "--plan", plan]).trim(), "r1");
    let ana = hub.ok(&["console", "user", "add", "ana", "--role", "operator"]).trim().to_owned();
    let vic = hub.ok(&["console", "user", "add", "vic", "--role", "viewer"]).trim().to_owned();
    // Sampled often, so the chart of devices per state has points by the time of the screenshot.
    let served = support::console::serve_with(&hub, Arc::new(cli::Commands), |c| {
        c.sample_period = Duration::from_millis(250);
        c.cache_max_age = Duration::from_millis(500);
        c.live_refresh = Duration::from_secs(6); // longer than any interaction with one load of the page
    });
    let base = format!("http://{}/", served.addr);
    let paused = || {
        let reg = served.hub.store().unwrap().registry();
        outpost_hub::rollouts::get(reg, "r1").unwrap().rollout.paused
    };
    let shots = screenshots();

    let driver = Driver::start();
    let s = driver.session(1280, 1400);
    s.goto(&format!("{base}releases"));
    s.screenshot(&shots.join("login.png"));
    login(&s, &base, "ana", &ana);

    // An operator pauses the release: the hub's own state changes, and the page offers Resume.
    assert!(!paused());
    s.find("form[action='/releases/r1/pause'] button").click();
    wait_for(&s, "/releases/r1/resume");
    assert!(paused(), "the click paused the serving hub's release");
    std::thread::sleep(Duration::from_secs(3)); // a few samples for the chart
    s.goto(&format!("{base}releases"));
    assert_eq!(s.count("svg.chart polyline"), 5, "one line per state");
    assert_eq!(s.count("svg.bar rect.pending"), 1, "the shadow stage's two pending devices are drawn");
    s.screenshot(&shots.join("releases.png"));

    // A form whose CSRF token was tampered with is refused, and nothing changes.
    s.execute("document.querySelector(\"form[action='/releases/r1/resume'] input[name=csrf]\").value = 'forged';");
    s.find("form[action='/releases/r1/resume'] button").click();
    wait_for(&s, "CSRF token is missing or wrong");
    assert!(paused(), "a refused resume changed nothing");

    // The device filter, through the form.
    s.goto(&format!("{base}devices"));
    assert_eq!(s.find("#device-count").text(), "12");
    s.find("select[name=site] option[value='plant-7']").click();
    s.find("form.filters button").click();
    wait_url(&s, "site=plant-7");
    assert_eq!(s.find("#device-count").text(), "8");
    assert_eq!(s.count("table.devices tbody tr"), 8);
    s.screenshot(&shots.join("devices.png"));

    s.goto(&format!("{base}devices/{}", keys[3]));
    assert!(s.source().contains("plant-7") && s.source().contains("r1"));
    s.screenshot(&shots.join("device.png"));
    s.goto(&format!("{base}sites"));
    assert!(s.source().contains("plant-7") && s.source().contains("lab-2"));
    s.screenshot(&shots.join("sites.png"));
    s.goto(&format!("{base}packages"));
    assert_eq!(s.count("table.packages tbody tr"), 3);
    s.screenshot(&shots.join("packages.png"));
    s.goto(&format!("{base}packages/ppocr-direction@2.0.1"));
    assert!(s.count("svg.lineage rect") >= 2, "2.0.1 is drawn with its parent 2.0.0");
    assert_eq!(s.count("svg.lineage line"), 1);
    s.screenshot(&shots.join("package.png"));
    s.goto(&format!("{base}audit"));
    let audit = s.source();
    assert!(audit.contains("Chain intact") && audit.contains("console:ana"), "{audit}");
    s.screenshot(&shots.join("audit.png"));

    // A viewer is offered no action, and a pause posted anyway is refused.
    s.clear_cookies();
    login(&s, &base, "vic", &vic);
    assert_eq!(s.count("form[action^='/releases/r1/']"), 0);
    assert!(s.source().contains("need an operator"));
    s.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/releases/r1/resume'; \
         const c = document.createElement('input'); c.name = 'csrf'; \
         c.value = document.querySelector('form.logout input[name=csrf]').value; f.appendChild(c); \
         document.body.appendChild(f); f.submit();",
    );
    wait_for(&s, "only an operator");
    assert!(paused(), "a viewer's resume changed nothing");
    s.screenshot(&shots.join("viewer-refused.png"));

    // The Releases page keeps itself up to date (live.js): a resume from the command line shows without a reload.
    s.goto(&format!("{base}releases"));
    assert_eq!(s.count("script[src='/assets/live.js']"), 1);
    assert!(s.source().contains("paused in shadow"));
    hub.ok(&["release", "resume", "r1"]);
    assert!(!paused());
    let before = s.url();
    wait_for(&s, "running shadow");
    assert_eq!(s.url(), before, "no navigation: the page swapped its content");
}

fn hex_key(i: u8) -> String {
    format!("{:02x}", 0xa0 + i).repeat(32)
}
