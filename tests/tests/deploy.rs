//! The shipped deployment files (`deploy/`) against the binary and the
//! operator guide: the environment file and example TOML pass
//! `check-config` with the values they say, the unit's key lines are the
//! ones docs/OPERATIONS.md shows, and `systemd-analyze verify` accepts the
//! unit where it is installed. Also `ricochet --version`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ricochet_e2e::bin;

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `NAME=value` lines of an environment file; with `commented`, also the
/// `#NAME=value` ones (every reference variable the file lists).
fn env_lines(text: &str, commented: bool) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| match l.strip_prefix('#') {
            Some(rest) if commented => Some(rest),
            Some(_) => None,
            None => Some(l),
        })
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `ricochet check-config --config deploy/ricochet.toml` with exactly
/// `env` as its environment and the host's NACK address given as a flag.
fn check_config(env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(bin("ricochet"));
    cmd.arg("check-config");
    with_shipped_files(cmd, env)
}

/// The shipped env file, with the interface it names (`eth0`) replaced by
/// loopback, which every test host has.
fn env_on_this_host(commented: bool) -> Vec<(String, String)> {
    env_lines(&read("deploy/systemd/ricochet.env"), commented)
        .into_iter()
        .map(|(k, v)| {
            let v = if v == "eth0" { "lo".to_owned() } else { v };
            (k, v)
        })
        .collect()
}

#[test]
fn shipped_env_file_and_toml_pass_check_config_with_their_values() {
    let env = env_on_this_host(false);
    assert!(env.iter().any(|(k, _)| k == "MC_IFACE"), "{env:?}");
    let out = check_config(&env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));

    // Every set env var is in force, from the environment. The shipped
    // file sets only variables named like their setting.
    for (name, value) in &env {
        let key = name.to_ascii_lowercase();
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} line for {name}:\n{stdout}"));
        assert!(line.ends_with("# env") && line.contains(value.as_str()), "{name}={value}: {line}");
    }

    // Every key the TOML sets is shown with the file's value, written as
    // check-config prints it.
    let toml = read("deploy/ricochet.toml");
    let keys: Vec<&str> =
        toml.lines().filter(|l| !l.starts_with('#') && l.contains(" = ")).collect();
    assert!(keys.len() >= 5, "{toml}");
    for line in keys {
        let want = format!("{line}  # file");
        assert!(stdout.lines().any(|l| l == want), "missing {want:?}:\n{stdout}");
    }
    // No CPU list in the file: the affinity mask decides (the unit's
    // CPUAffinity=), so the example cannot be refused on a smaller host.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("cpus = ") && l.ends_with("# default (affinity mask)")),
        "{stdout}"
    );
}

#[test]
fn every_variable_the_env_file_lists_is_a_setting_it_accepts() {
    let env = env_on_this_host(true);
    assert!(env.len() >= 50, "{env:?}");
    let ops = read("docs/OPERATIONS.md");
    for (name, _) in &env {
        assert!(ops.contains(&format!("`{name}`")), "{name} is not in docs/OPERATIONS.md");
    }
    // Uncommented, every example value is valid and in force from the
    // environment: one `# env` line per variable with a value (an empty
    // one counts as unset), but NACK_ADDR, which the flag overrides.
    let out = check_config(&env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let from_env = stdout.lines().filter(|l| l.contains("# env")).count();
    let set = env.iter().filter(|(k, v)| !v.is_empty() && k != "NACK_ADDR").count();
    assert_eq!(from_env, set, "{stdout}");
}

/// A `Key=value` line of the unit.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let values: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix(&prefix)).collect();
    assert_eq!(values.len(), 1, "{key}= lines: {values:?}");
    values[0]
}

/// The body of the first fenced block of `lang` in `section` of `doc`.
fn fenced<'a>(doc: &'a str, section: &str, lang: &str) -> &'a str {
    let start = doc.find(&format!("\n## {section}\n")).unwrap_or_else(|| panic!("## {section}"));
    let body = &doc[start..];
    let open = format!("```{lang}\n");
    let from = body.find(&open).unwrap_or_else(|| panic!("no {open:?} in {section}")) + open.len();
    let len = body[from..].find("```\n").expect("closing fence");
    &body[from..from + len]
}

#[test]
fn unit_file_agrees_with_the_operations_guide() {
    let unit = read("deploy/systemd/ricochet.service");
    let ops = read("docs/OPERATIONS.md");

    let exec = unit_value(&unit, "ExecStart");
    assert_eq!(exec, "/usr/local/bin/ricochet run --config /etc/ricochet/ricochet.toml");
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    // A configuration error exits 2 (see invocation.rs): never restarted.
    assert_eq!(unit_value(&unit, "RestartPreventExitStatus"), "2");
    assert_eq!(unit_value(&unit, "EnvironmentFile"), "/etc/ricochet/ricochet.env");
    assert_eq!(unit_value(&unit, "User"), "ricochet");
    assert_eq!(unit_value(&unit, "CapabilityBoundingSet"), "");
    // The shipped unit pins nothing: the example TOML sets no CPUs either.
    assert!(!unit.lines().any(|l| l.starts_with("CPUAffinity=")), "{unit}");

    // Every line the guide shows of the unit is a line of the unit.
    let shown = fenced(&ops, "systemd", "ini");
    for line in shown.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        assert!(unit.lines().any(|l| l == line), "OPERATIONS.md shows {line:?}, not in the unit");
    }
    for key in ["ExecStart", "EnvironmentFile", "RestartPreventExitStatus", "Restart", "User"] {
        assert!(shown.contains(&format!("\n{key}=")), "OPERATIONS.md does not show {key}=");
    }
    // The install steps put each file where the unit looks for it.
    let steps = fenced(&ops, "systemd", "sh");
    let binary = exec.split_whitespace().next().expect("ExecStart binary");
    for want in [
        format!("install -m 0755 target/release/ricochet {binary}"),
        "deploy/ricochet.toml /etc/ricochet/ricochet.toml".to_owned(),
        format!("deploy/systemd/ricochet.env {}", unit_value(&unit, "EnvironmentFile")),
        "deploy/systemd/ricochet.service /etc/systemd/system/ricochet.service".to_owned(),
    ] {
        assert!(steps.contains(&want), "install steps lack {want:?}:\n{steps}");
    }
    // The guide's example config is the shipped one.
    assert_eq!(fenced(&ops, "The config file", "toml"), read("deploy/ricochet.toml"));
    // And the control thread's CPU is described one way only.
    assert!(!ops.contains("shares the first listed CPU"), "stale CPU text");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    // verify checks that ExecStart's binary exists: point it at this
    // build's, as installing it to /usr/local/bin would.
    let unit = read("deploy/systemd/ricochet.service").replace(
        "ExecStart=/usr/local/bin/ricochet ",
        &format!("ExecStart={} ", bin("ricochet").display()),
    );
    let dir = std::env::temp_dir().join(format!("ricochet-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("ricochet.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("verify");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify:\n{stderr}");
    assert!(!stderr.contains("ricochet.service:"), "warnings about the unit:\n{stderr}");
}

/// `git` in the workspace; its stdout when it exits 0.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root()).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn version_names_the_commit_and_profile_and_build_info_agrees() {
    let out = Command::new(bin("ricochet")).arg("--version").output().expect("ricochet --version");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim_end();
    // `ricochet 0.1.0 (commit 1a2b3c4, profile debug)`
    let rest = line.strip_prefix(&format!("ricochet {} (commit ", env!("CARGO_PKG_VERSION")));
    let (commit, profile) = rest
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(", profile "))
        .unwrap_or_else(|| panic!("unexpected --version: {line:?}"));

    // The profile is this build's: the directory the binary is in.
    let dir = bin("ricochet").parent().and_then(|d| d.file_name()).map(|d| d.to_owned());
    assert_eq!(Some(profile), dir.as_ref().and_then(|d| d.to_str()), "{line}");

    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
            assert_eq!(hash, head, "{line}");
            // Uncommitted changes to the sources built into the binary
            // (build.rs reruns on them) must show as -dirty.
            let sources = ["engine/src", "engine/proto/src", "wire/src", "engine/build.rs"];
            let mut diff = vec!["diff", "--quiet", "HEAD", "--"];
            diff.extend(sources);
            if git(&diff).is_none() {
                assert!(commit.ends_with("-dirty"), "sources differ from HEAD: {line}");
            }
        }
        None => println!("not a git checkout here: commit {commit:?} not compared"),
    }

    // ricochet_build_info carries the same commit and profile.
    let e = ricochet_e2e::Engine::start(&[]);
    let metrics = e.http("/metrics").expect("scrape").1;
    let want = format!("commit=\"{commit}\",profile=\"{profile}\"");
    assert!(
        metrics.lines().any(|l| l.starts_with("ricochet_build_info{") && l.contains(&want)),
        "no ricochet_build_info with {want}:\n{metrics}"
    );
}

/// `ricochet args…`'s stdout, which must exit 0.
fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(bin("ricochet")).args(args).output().expect("run ricochet");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Runs `tool args… file` on `text` written to a temporary `file` if
/// `tool` is installed; its (success, stderr), or `None` when it is not.
fn check_with(tool: &str, args: &[&str], file: &str, text: &str) -> Option<(bool, String)> {
    Command::new(tool).arg("--version").output().ok()?;
    let dir = std::env::temp_dir().join(format!("ricochet-manual-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write");
    let out = Command::new(tool).args(args).arg(&path).output().expect("run checker");
    let _ = std::fs::remove_file(&path);
    Some((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn completions_and_man_page_cover_the_commands_and_flags() {
    let bash = stdout_of(&["completions", "bash"]);
    let zsh = stdout_of(&["completions", "zsh"]);
    let fish = stdout_of(&["completions", "fish"]);
    for (shell, script) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
        assert!(script.contains("check-config") && script.contains("status"), "{shell}");
        for flag in ["nack-port", "cpus", "watch", "admin"] {
            // fish spells a long flag `-l name`.
            let word = if shell == "fish" { format!("-l {flag}") } else { format!("--{flag}") };
            assert!(script.contains(&word), "{shell} completions lack {word}");
        }
    }
    assert!(zsh.starts_with("#compdef ricochet"), "{zsh}");
    assert!(fish.contains("complete -c ricochet"), "{fish}");
    let syntax = [
        ("bash", &["-n"][..], "ricochet.bash", &bash),
        ("zsh", &["-n"][..], "_ricochet", &zsh),
        ("fish", &["--no-execute"][..], "ricochet.fish", &fish),
    ];
    for (tool, args, file, script) in syntax {
        match check_with(tool, args, file, script) {
            Some((ok, err)) => assert!(ok, "{tool} refuses its completions:\n{err}"),
            None => println!("skipped: {tool} is not installed, its completions' syntax unchecked"),
        }
    }

    let man = stdout_of(&["man"]);
    assert!(man.contains(".TH ricochet 1"), "{man}");
    // The version line is --version's, commit included.
    let version = stdout_of(&["--version"]);
    let long = version.trim_end().trim_start_matches("ricochet ");
    assert!(man.contains(long), "man page lacks {long:?}");
    assert!(man.contains("\\-\\-nack\\-port") && man.contains("check\\-config"), "{man}");
    if let Some((ok, err)) =
        check_with("groff", &["-man", "-Tutf8", "-ww", "-z"], "ricochet.1", &man)
    {
        assert!(ok && err.trim().is_empty(), "groff warns about the man page:\n{err}");
    } else {
        println!("skipped: groff is not installed, the man page's roff unchecked");
    }

    // The install steps put each where its tool looks.
    let steps = fenced(&read("docs/OPERATIONS.md"), "systemd", "sh").to_owned();
    for want in [
        "ricochet completions bash > /usr/share/bash-completion/completions/ricochet",
        "ricochet completions zsh > /usr/local/share/zsh/site-functions/_ricochet",
        "ricochet completions fish > /usr/share/fish/vendor_completions.d/ricochet.fish",
        "ricochet man > /usr/local/share/man/man1/ricochet.1",
    ] {
        assert!(steps.contains(want), "install steps lack {want:?}");
    }
}

#[test]
fn cpus_follow_the_affinity_mask_the_unit_would_set() {
    if Command::new("taskset").arg("--version").output().is_err() {
        println!("skipped: taskset is not installed");
        return;
    }
    let env = env_on_this_host(false);
    let cpus = |out: &Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.lines().find(|l| l.starts_with("cpus = ")).map(str::to_owned).unwrap_or(stdout)
    };
    let allowed: Vec<usize> = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|l| expand_cpulist(l.trim()))
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let Some(&last) = allowed.last() else {
        println!("skipped: no Cpus_allowed_list");
        return;
    };
    // CPUAffinity=<last>, no `cpus` in the file: one worker, on that CPU.
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &last.to_string()]).arg(bin("ricochet")).arg("check-config");
    let out = with_shipped_files(cmd, &env);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cpus(&out), format!("cpus = \"{last}\"  # default (affinity mask)"));
    // `cpus` outside the mask: refused, exit 2 — the unit's
    // RestartPreventExitStatus=2 does not restart it.
    if let Some(&other) = allowed.iter().find(|&&c| c != last) {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &last.to_string()]).arg(bin("ricochet")).arg("check-config");
        cmd.args(["--cpus", &other.to_string()]);
        let out = with_shipped_files(cmd, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("outside this process's affinity mask"), "{err}");
    }
}

/// `cmd` (a `check-config` invocation) with the shipped TOML, exactly
/// `env` as its environment, and loopback's NACK address as a flag (the
/// file's is an example).
fn with_shipped_files(mut cmd: Command, env: &[(String, String)]) -> Output {
    cmd.arg("--config")
        .arg(root().join("deploy/ricochet.toml"))
        .args(["--nack-addr", "::1"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run check-config")
}

/// `0-2,5` → [0, 1, 2, 5].
fn expand_cpulist(list: &str) -> Vec<usize> {
    list.split(',')
        .filter_map(|item| match item.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<usize>>()),
            None => Some(vec![item.parse().ok()?]),
        })
        .flatten()
        .collect()
}
