//! Shell completions and man pages generated from a binary's clap definition (`outpost-hub completions SHELL`,
//! `outpost-hub man --out DIR`, the same on `outpost-agent`), so what the Debian packages install cannot disagree
//! with `--help`. One page per command and subcommand (`outpost-hub-package-add.1`), hidden ones left out.

use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Why the pages could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// The output directory or a page in it could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The directory or page.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The completion script for `shell`, for the program `cmd` describes (its name is the command name).
pub fn completions(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

/// One man page (section 1, roff) per command and visible subcommand, as (file name, page), the program's own first.
pub fn man_pages(cmd: clap::Command) -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
        let subcommands: Vec<clap::Command> = cmd.get_subcommands().filter(|s| shown(s)).cloned().collect();
        let man = clap_mangen::Man::new(cmd);
        let mut page = Vec::new();
        // Rendering into a Vec cannot fail: `Write` for Vec<u8> never returns an error.
        if man.render(&mut page).is_ok() {
            pages.push((man.get_filename(), page));
        }
        for sub in subcommands {
            walk(sub, pages);
        }
    }
    // clap's `help` subcommands get no page and no mention: `--help` says the same.
    fn without_help(cmd: clap::Command) -> clap::Command {
        cmd.disable_help_subcommand(true).mut_subcommands(without_help)
    }
    let mut cmd = without_help(cmd);
    cmd.build(); // names each subcommand's page after its path: `outpost-hub-package-add`
    let mut pages = Vec::new();
    walk(cmd, &mut pages);
    pages
}

/// Writes [`man_pages`] into `dir` (created if missing); returns the files written.
///
/// # Errors
/// [`DocsError::Write`] naming the directory or page that could not be written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    std::fs::create_dir_all(dir).map_err(|source| DocsError::Write { path: dir.into(), source })?;
    let mut written = Vec::new();
    for (name, page) in man_pages(cmd) {
        let path = dir.join(name);
        std::fs::write(&path, page).map_err(|source| DocsError::Write { path: path.clone(), source })?;
        written.push(path);
    }
    Ok(written)
}

/// Whether a subcommand gets a page and a place in the paths: not hidden, and not clap's `help`.
fn shown(cmd: &clap::Command) -> bool {
    !cmd.is_hide_set() && cmd.get_name() != "help"
}

/// Every visible subcommand path of `cmd`, space-separated below the program's name (`package add`), for tests that
/// check the generated pages and scripts against the definition.
pub fn subcommand_paths(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| shown(s)) {
            let path =
                if prefix.is_empty() { sub.get_name().to_owned() } else { format!("{prefix} {}", sub.get_name()) };
            walk(sub, &path, out);
            out.push(path);
        }
    }
    let mut out = Vec::new();
    walk(cmd, "", &mut out);
    out.sort();
    out
}

/// What the generated pages and scripts lack against `cmd` itself, one line each (empty when all is well): a man
/// page per subcommand path, and each subcommand and long option named in the bash, zsh and fish scripts.
pub fn missing(cmd: &clap::Command) -> Vec<String> {
    let program = cmd.get_name().to_owned();
    let paths = subcommand_paths(cmd);
    let pages: Vec<String> = man_pages(cmd.clone()).into_iter().map(|(name, _)| name).collect();
    let mut missing: Vec<String> = std::iter::once(format!("{program}.1"))
        .chain(paths.iter().map(|path| format!("{program}-{}.1", path.replace(' ', "-"))))
        .filter(|page| !pages.contains(page))
        .map(|page| format!("no man page {page}"))
        .collect();
    let mut words: Vec<String> = paths.iter().filter_map(|p| p.rsplit(' ').next()).map(str::to_owned).collect();
    words.extend(cmd.get_arguments().filter_map(|a| a.get_long()).map(str::to_owned));
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let script = String::from_utf8_lossy(&completions(cmd.clone(), shell)).into_owned();
        missing.extend(words.iter().filter(|w| !script.contains(w.as_str())).map(|w| format!("{shell}: no `{w}`")));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("tool")
            .version("1.0")
            .about("A tool.")
            .subcommand(clap::Command::new("thing").about("Things.").subcommand(clap::Command::new("add")))
            .subcommand(clap::Command::new("other").subcommand(clap::Command::new("x")))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_command_named_after_its_path() {
        let names: Vec<String> = man_pages(cmd()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["tool.1", "tool-thing.1", "tool-thing-add.1", "tool-other.1", "tool-other-x.1"]);
        let (_, page) = man_pages(cmd()).remove(0);
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains("tool\\-thing") && !page.contains("tool\\-help"), "no help subcommand: {page}");
        assert!(page.starts_with(".ie") || page.contains(".TH tool 1"), "{page}");
        assert!(page.contains("thing"), "{page}");
        assert_eq!(subcommand_paths(&cmd()), ["other", "other x", "thing", "thing add"]);
        assert_eq!(missing(&cmd()), Vec::<String>::new());
    }

    #[test]
    fn completions_name_the_subcommands_and_pages_land_in_the_directory() {
        let bash = String::from_utf8(completions(cmd(), Shell::Bash)).unwrap();
        assert!(bash.contains("thing") && bash.contains("add") && bash.contains("complete -F"), "{bash}");
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(cmd(), &dir.path().join("man1")).unwrap();
        assert_eq!(written.len(), 5);
        assert!(written.iter().all(|p| p.is_file()));
    }
}
