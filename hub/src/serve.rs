//! Placeholder: filled by the QUIC service work in progress.
