//! Fuzzes the router rules: any bytes give a router or an error from `Router::from_cbor` (the signed form an agent
//! reads), any TOML a router or a `ConfigError`, never a panic. Rules that load survive their signed form, and
//! ordering a route's candidates for a request of the route's own shapes never panics and always ends with the
//! fallback.
#![no_main]
use std::path::Path;

use outpost_shared::manifest::Dim;
use outpost_shared::route::Router;
use outpost_shared::route::select::{RequestFacts, plan};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Router::from_cbor(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(router) = Router::from_toml(text, Path::new("fuzz.toml")) else { return };
    let cbor = router.to_cbor().expect("rules that load encode");
    assert_eq!(Router::from_cbor(&cbor).as_ref(), Ok(&router));
    for route in &router.routes {
        let size = |d: &Dim| match d {
            Dim::Fixed(n) => *n,
            Dim::Symbol(_) => 1,
        };
        let shapes = route.contract.inputs.iter().map(|s| (s.name.clone(), s.shape.iter().map(size).collect()));
        let request = RequestFacts { shapes: shapes.collect(), parameters: Default::default() };
        let order = plan(route, &request, |_| Ok(())).order;
        assert_eq!(order.last(), Some(&(route.candidates.len() - 1)), "the fallback takes every request");
    }
});
