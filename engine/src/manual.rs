//! `ricochet completions <shell>` and `ricochet man`: bash, zsh and fish
//! completions and the ricochet(1) man page, generated from the clap
//! definition the binary parses with, so they cannot drift from its flags.
//! Packaging writes them where each shell and `man` look
//! (docs/OPERATIONS.md, "systemd").

use std::io::Write as _;
use std::process::ExitCode;

/// A shell `ricochet completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// For `/usr/share/bash-completion/completions/ricochet`.
    Bash,
    /// For a `$fpath` directory, as `_ricochet`.
    Zsh,
    /// For `/usr/share/fish/vendor_completions.d/ricochet.fish`.
    Fish,
}

/// Writes `shell`'s completion script for `cmd` (the whole `ricochet`
/// command) to stdout.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> ExitCode {
    let mut out = Vec::new();
    let name = cmd.get_name().to_owned();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, &mut out)
        }
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, &mut out),
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, &mut out)
        }
    }
    emit(&out)
}

/// Writes the man page of `cmd` (roff, section 1) to stdout.
pub fn man(cmd: clap::Command) -> ExitCode {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
        eprintln!("ricochet man: {e}");
        return ExitCode::from(1);
    }
    emit(&out)
}

fn emit(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ricochet: writing to stdout: {e}");
            ExitCode::from(1)
        }
    }
}
