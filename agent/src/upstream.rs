//! The hub as the agent and the site node reach it: its replicas (`[hub] addresses`, one pinned key for all), which
//! failures mean a replica cannot be reached (and so call for the next one), and the log line of each switch.
//!
//! Which replica comes next and when is decided in `outpost_shared::update::failover`; this is the glue to QUIC.

use std::net::SocketAddr;

use outpost_net::client::ClientError;
use outpost_shared::update::failover::{Replicas, Switch};
use outpost_shared::wire::codes;

/// The replicas of `config`'s hub, starting with the first configured.
pub fn replicas(config: &crate::config::AgentConfig) -> Replicas<SocketAddr> {
    // The parser never yields an empty list; a configuration built by hand that does gets the unspecified
    // address, which no connection reaches, rather than a panic.
    let unspecified = || vec![SocketAddr::from(([0, 0, 0, 0], 0))];
    Replicas::new(config.hub_addresses.clone())
        .or_else(|| Replicas::new(unspecified()))
        .expect("a list of one address is never empty")
}

/// Whether `e` means the replica could not be reached or stopped answering: connecting failed or timed out, the
/// connection was lost (a stream failing with it is reported as the connection's error) or closed by a replica
/// shutting down, or the replica went silent past the stall timeout. Not: the hub's answers and refusals (not
/// attested, unknown device, a stream it reset), protocol errors and local failures, which another replica of the
/// same hub, serving the same data, would give too.
pub fn unreachable(e: &ClientError) -> bool {
    match e {
        ClientError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
            close.error_code.into_inner() == u64::from(codes::CLOSE_NORMAL)
        }
        ClientError::Connection(_) | ClientError::Timeout(_) => true,
        ClientError::Stream(_)
        | ClientError::Tls(_)
        | ClientError::Setup(_)
        | ClientError::Wire(_)
        | ClientError::Hub { .. }
        | ClientError::TooLarge { .. }
        | ClientError::Io(_) => false,
    }
}

/// Whether `e`, or an error it was caused by, is a hub [`ClientError`] that is [`unreachable`] (the TUF client
/// and downloads keep the transport's error as a source).
pub fn unreachable_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(client) = e.downcast_ref::<ClientError>() {
            return unreachable(client);
        }
        next = e.source();
    }
    false
}

/// Logs a move to the next replica (nothing with one replica: there is nowhere to move).
pub fn log_switch(switch: &Switch<SocketAddr>, error: &dyn std::fmt::Display) {
    let Switch { from, to, round_over } = switch;
    if from == to {
        return;
    }
    if *round_over {
        tracing::warn!(%from, %to, %error, "no hub replica reached ({from} failed last: {error}); the next round starts at {to}");
    } else {
        tracing::info!(%from, %to, %error, "hub replica {from} unreachable ({error}): switching to {to}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_net::transport::TransportError;
    use outpost_shared::wire::ErrorCode;

    fn closed(code: u32) -> ClientError {
        let close =
            quinn::ApplicationClose { error_code: quinn::VarInt::from_u32(code), reason: b"bye".to_vec().into() };
        ClientError::Connection(quinn::ConnectionError::ApplicationClosed(close))
    }

    #[test]
    fn a_replica_gone_silent_lost_or_shutting_down_is_unreachable_but_a_hub_decision_is_not() {
        let timeout = || ClientError::Timeout(std::time::Duration::from_secs(15));
        assert!(unreachable(&timeout()));
        assert!(unreachable(&ClientError::Connection(quinn::ConnectionError::TimedOut)));
        assert!(unreachable(&ClientError::Connection(quinn::ConnectionError::Reset)));
        assert!(unreachable(&closed(codes::CLOSE_NORMAL)), "a replica shutting down");
        assert!(!unreachable(&closed(codes::CLOSE_UNKNOWN_DEVICE)), "every replica refuses an unknown device");
        let refused = ClientError::Hub { code: ErrorCode::NotAttested, message: "not attested: revoked".into() };
        assert!(!unreachable(&refused));
        assert!(!unreachable(&ClientError::Stream("reset by the hub".into())));

        // Through the download and the TUF client, which keep the transport's error as a source.
        let download = TransportError::failed("targets/x.opkg", timeout());
        assert!(unreachable_in_chain(&download));
        assert!(unreachable_in_chain(&sigstore_tuf::Error::transport_with_source("fetching 2.root.json", download)));
        let mirror = TransportError::failed("timestamp.json", std::io::Error::other("HTTP 503"));
        assert!(!unreachable_in_chain(&sigstore_tuf::Error::transport_with_source("fetching", mirror)), "a mirror's");
    }
}
