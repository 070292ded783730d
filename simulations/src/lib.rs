//! Simulations for Outpost: fleets of agents against a real hub, fault scenarios and benchmark drivers.
//!
//! Holds no product logic: it only drives the hub and agent crates. Empty until the agent and fleet issues
//! give it agents to drive.
