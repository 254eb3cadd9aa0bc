//! Embeds what `ricochet --version` and `ricochet_build_info` report about
//! the build: the git commit (short hash, `-dirty` when the tree differs from
//! it, `unknown` outside a git checkout or without git) and the cargo profile
//! (the target directory's profile name: `debug`, `release`, or a custom
//! one). Only std: the build must not gain a dependency for this.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let commit = commit(&manifest).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RICOCHET_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=RICOCHET_BUILD_PROFILE={}", profile());
}

/// `git` in the crate's directory; its stdout when it exits 0.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The short commit hash, with `-dirty` if tracked files differ from it.
fn commit(dir: &Path) -> Option<String> {
    let git_dir = PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?);
    // A new commit or checkout moves HEAD or the branch it names; edits to
    // the sources built into the binary may change the dirty flag. (Not
    // the index: `git status` rewrites it, and the diff below is against
    // HEAD, staged changes included.)
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    println!("cargo:rerun-if-changed={}", git_dir.join("packed-refs").display());
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
    }
    for watched in ["src", "proto/src", "../wire/src", "Cargo.toml", "../Cargo.lock"] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let clean = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .ok()?
        .success();
    Some(if clean { hash } else { format!("{hash}-dirty") })
}

/// The profile's directory name: `OUT_DIR` is
/// `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`.
fn profile() -> String {
    std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .and_then(|out| out.ancestors().nth(3)?.file_name()?.to_str().map(str::to_owned))
        .or_else(|| std::env::var("PROFILE").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
