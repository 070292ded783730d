//! `outpost-agent`: the edge agent's command line. Not yet implemented; see the agent issue.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("outpost-agent: not built yet — the agent arrives with the agent issue (see README.md)");
    ExitCode::from(2)
}
