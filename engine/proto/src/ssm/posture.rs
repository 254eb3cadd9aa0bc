//! Which combinations of `--source-mode`, `--scope`, `--bind-source` and
//! the SSM source-list flags make a valid configuration.
//!
//! The rules, in the order they are checked (lightwebinc/retry-endpoint
//! `config/config.go`, shard-common `shard/mode.go`):
//! 1. `--ssm-bootstrap-refresh` must be positive, whatever the mode.
//! 2. ASM groups exist at link, site and org scope; ASM at global scope is
//!    refused, as RFC 8815 deprecates inter-domain ASM (shard-common
//!    `shard.Prefix` refuses it; the reference endpoint's own scope table
//!    still accepts FF0E, so this is stricter than the endpoint).
//! 3. SSM groups exist at site (FF35) and global (FF3E) scope only.
//! 4. `--bind-source` is an IPv6 unicast literal (never IPv4 or
//!    IPv4-mapped). The reference checks it only under SSM; ricochet checks
//!    it whenever it is set, as a wrong literal is never useful.
//! 5. Under SSM at least one of the four source lists is set — fail closed
//!    rather than fall back to any-source joins.
//! 6. Under SSM more than 16 `--ssm-publishers-static` entries need
//!    `--ssm-bootstrap-manifest`: a static list is a lab tool.
//! 7. (ricochet) A list entry that is an IP literal must be a usable IPv6
//!    source; the reference skips IPv4 literals silently, which can leave a
//!    list that resolves to nothing.
//!
//! Under ASM the source lists are not used; [`SsmPosture::unused`] names
//! the ones that were set so the driver can say so.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ricochet_wire::group::{self, Scope, SourceMode};

use super::joins::SourceList;
use super::usable_source;

/// Most `--ssm-publishers-static` entries allowed without
/// `--ssm-bootstrap-manifest`.
pub const MAX_STATIC_WITHOUT_MANIFEST: usize = 16;

/// The configuration flags this module judges, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    /// `--source-mode` / `SOURCE_MODE`.
    SourceMode,
    /// `--scope` / `MC_SCOPE`.
    Scope,
    /// `--bind-source` / `BIND_SOURCE`.
    BindSource,
    /// `--ssm-bootstrap-manifest` / `SSM_BOOTSTRAP_MANIFEST`.
    BootstrapManifest,
    /// `--ssm-bootstrap-beacon` / `SSM_BOOTSTRAP_BEACON`.
    BootstrapBeacon,
    /// `--ssm-bootstrap-subtree-announce` / `SSM_BOOTSTRAP_SUBTREE_ANNOUNCE`.
    BootstrapSubtreeAnnounce,
    /// `--ssm-publishers-static` / `SSM_PUBLISHERS_STATIC`.
    PublishersStatic,
    /// `--ssm-bootstrap-refresh` / `SSM_BOOTSTRAP_REFRESH`.
    BootstrapRefresh,
}

impl Flag {
    /// The command-line flag.
    pub const fn cli(self) -> &'static str {
        match self {
            Flag::SourceMode => "--source-mode",
            Flag::Scope => "--scope",
            Flag::BindSource => "--bind-source",
            Flag::BootstrapManifest => "--ssm-bootstrap-manifest",
            Flag::BootstrapBeacon => "--ssm-bootstrap-beacon",
            Flag::BootstrapSubtreeAnnounce => "--ssm-bootstrap-subtree-announce",
            Flag::PublishersStatic => "--ssm-publishers-static",
            Flag::BootstrapRefresh => "--ssm-bootstrap-refresh",
        }
    }

    /// The environment variable.
    pub const fn env(self) -> &'static str {
        match self {
            Flag::SourceMode => "SOURCE_MODE",
            Flag::Scope => "MC_SCOPE",
            Flag::BindSource => "BIND_SOURCE",
            Flag::BootstrapManifest => "SSM_BOOTSTRAP_MANIFEST",
            Flag::BootstrapBeacon => "SSM_BOOTSTRAP_BEACON",
            Flag::BootstrapSubtreeAnnounce => "SSM_BOOTSTRAP_SUBTREE_ANNOUNCE",
            Flag::PublishersStatic => "SSM_PUBLISHERS_STATIC",
            Flag::BootstrapRefresh => "SSM_BOOTSTRAP_REFRESH",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.cli(), self.env())
    }
}

/// The SSM-related settings as the configuration layer parsed them (lists
/// already split on commas and trimmed).
#[derive(Debug, Clone, Copy)]
pub struct SsmFlags<'a> {
    /// `--source-mode`.
    pub source_mode: SourceMode,
    /// `--scope`.
    pub scope: Scope,
    /// `--bind-source`, if set.
    pub bind_source: Option<&'a str>,
    /// `--ssm-bootstrap-manifest` entries.
    pub bootstrap_manifest: &'a [String],
    /// `--ssm-bootstrap-beacon` entries.
    pub bootstrap_beacon: &'a [String],
    /// `--ssm-bootstrap-subtree-announce` entries.
    pub bootstrap_subtree_announce: &'a [String],
    /// `--ssm-publishers-static` entries.
    pub publishers_static: &'a [String],
    /// `--ssm-bootstrap-refresh`.
    pub bootstrap_refresh: Duration,
}

/// One entry of a source list: an address to use as it is, or a DNS name
/// whose AAAA records the driver resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BootstrapEntry {
    /// An IPv6 literal.
    Literal(Ipv6Addr),
    /// A DNS name.
    Name(String),
}

impl BootstrapEntry {
    /// Classifies one entry of `flag`'s list.
    pub fn parse(entry: &str, flag: Flag) -> Result<Self, PostureError> {
        match entry.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) if usable_source(&a) => Ok(BootstrapEntry::Literal(a)),
            Ok(_) => Err(PostureError::BadEntry { flag, entry: entry.to_owned() }),
            Err(_) => Ok(BootstrapEntry::Name(entry.to_owned())),
        }
    }
}

/// A valid SSM posture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmPosture {
    /// ASM or SSM.
    pub mode: SourceMode,
    /// Group scope.
    pub scope: Scope,
    /// The 2-byte group prefix (FF02/FF05/FF08, FF35/FF3E).
    pub prefix: u16,
    /// The address this node sends from; never joined as a source.
    pub bind_source: Option<Ipv6Addr>,
    /// Re-resolution interval of the bootstrap lists.
    pub refresh: Duration,
    /// `--ssm-bootstrap-manifest`, empty under ASM.
    pub bootstrap_manifest: Vec<BootstrapEntry>,
    /// `--ssm-bootstrap-beacon`, empty under ASM.
    pub bootstrap_beacon: Vec<BootstrapEntry>,
    /// `--ssm-bootstrap-subtree-announce`, empty under ASM.
    pub bootstrap_subtree_announce: Vec<BootstrapEntry>,
    /// `--ssm-publishers-static`, empty under ASM.
    pub publishers_static: Vec<BootstrapEntry>,
    /// Source-list flags that were set but mean nothing under ASM.
    pub unused: Vec<Flag>,
}

impl SsmPosture {
    /// Whether groups are joined per source.
    pub fn is_ssm(&self) -> bool {
        self.mode == SourceMode::Ssm
    }

    /// The configured entries of a source list ([`SourceList::ManifestPublishers`]
    /// is learned, never configured, so always empty).
    pub fn entries(&self, list: SourceList) -> &[BootstrapEntry] {
        match list {
            SourceList::PublishersStatic => &self.publishers_static,
            SourceList::ManifestPublishers => &[],
            SourceList::BootstrapManifest => &self.bootstrap_manifest,
            SourceList::BootstrapBeacon => &self.bootstrap_beacon,
            SourceList::BootstrapSubtreeAnnounce => &self.bootstrap_subtree_announce,
        }
    }
}

/// Why a configuration was refused; `Display` names the flags to change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostureError {
    /// `--ssm-bootstrap-refresh` is zero.
    ZeroRefresh,
    /// ASM at global scope (RFC 8815).
    AsmAtGlobalScope,
    /// SSM at a scope that has no SSM range.
    NoSsmAtScope(Scope),
    /// `--bind-source` is not an IPv6 unicast literal.
    BadBindSource(String),
    /// SSM with no source list at all.
    NoSources,
    /// Too many static publishers without manifest discovery.
    TooManyStaticPublishers(usize),
    /// A list entry that is an IP literal but not a usable IPv6 source.
    BadEntry {
        /// The list.
        flag: Flag,
        /// The entry.
        entry: String,
    },
}

impl fmt::Display for PostureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostureError::ZeroRefresh => {
                write!(f, "{} must be greater than zero", Flag::BootstrapRefresh)
            }
            PostureError::AsmAtGlobalScope => write!(
                f,
                "{} global with {} asm: RFC 8815 deprecates any-source multicast across \
                 domains; set {} to ssm (FF3E groups) or {} to site",
                Flag::Scope,
                Flag::SourceMode,
                Flag::SourceMode,
                Flag::Scope
            ),
            PostureError::NoSsmAtScope(s) => write!(
                f,
                "{} {} with {} ssm: SSM groups exist only at site (FF35) and global (FF3E) \
                 scope; set {} to site or global, or {} to asm",
                Flag::Scope,
                s.name(),
                Flag::SourceMode,
                Flag::Scope,
                Flag::SourceMode
            ),
            PostureError::BadBindSource(v) => write!(
                f,
                "{} {v:?} is not an IPv6 unicast address; set it to the IPv6 literal this \
                 node sends from",
                Flag::BindSource
            ),
            PostureError::NoSources => write!(
                f,
                "{} ssm needs at least one source list: set {}, {}, {} or {} (lab only), or \
                 set {} to asm",
                Flag::SourceMode,
                Flag::BootstrapManifest,
                Flag::BootstrapBeacon,
                Flag::BootstrapSubtreeAnnounce,
                Flag::PublishersStatic,
                Flag::SourceMode
            ),
            PostureError::TooManyStaticPublishers(n) => write!(
                f,
                "{} has {n} entries; more than {MAX_STATIC_WITHOUT_MANIFEST} publishers need \
                 manifest discovery: set {}",
                Flag::PublishersStatic,
                Flag::BootstrapManifest
            ),
            PostureError::BadEntry { flag, entry } => write!(
                f,
                "{flag} entry {entry:?} is not a usable IPv6 source (IPv4, IPv4-mapped, \
                 multicast and unspecified addresses cannot be SSM sources); list IPv6 \
                 unicast addresses or DNS names with AAAA records"
            ),
        }
    }
}

impl std::error::Error for PostureError {}

/// Checks the rules in the module docs and returns the posture to run.
pub fn validate(flags: &SsmFlags<'_>) -> Result<SsmPosture, PostureError> {
    if flags.bootstrap_refresh.is_zero() {
        return Err(PostureError::ZeroRefresh);
    }
    let prefix = match (flags.source_mode, flags.scope) {
        (SourceMode::Asm, Scope::Global) => return Err(PostureError::AsmAtGlobalScope),
        (mode, scope) => {
            group::prefix(mode, scope).map_err(|_| PostureError::NoSsmAtScope(scope))?
        }
    };
    let bind_source = match flags.bind_source {
        None => None,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) if usable_source(&a) && !a.is_loopback() => Some(a),
            _ => return Err(PostureError::BadBindSource(s.to_owned())),
        },
    };
    let lists = [
        (Flag::BootstrapManifest, flags.bootstrap_manifest),
        (Flag::BootstrapBeacon, flags.bootstrap_beacon),
        (Flag::BootstrapSubtreeAnnounce, flags.bootstrap_subtree_announce),
        (Flag::PublishersStatic, flags.publishers_static),
    ];
    let mut posture = SsmPosture {
        mode: flags.source_mode,
        scope: flags.scope,
        prefix,
        bind_source,
        refresh: flags.bootstrap_refresh,
        bootstrap_manifest: Vec::new(),
        bootstrap_beacon: Vec::new(),
        bootstrap_subtree_announce: Vec::new(),
        publishers_static: Vec::new(),
        unused: Vec::new(),
    };
    if flags.source_mode == SourceMode::Asm {
        posture.unused = lists.iter().filter(|(_, l)| !l.is_empty()).map(|(f, _)| *f).collect();
        return Ok(posture);
    }
    if lists.iter().all(|(_, l)| l.is_empty()) {
        return Err(PostureError::NoSources);
    }
    if flags.publishers_static.len() > MAX_STATIC_WITHOUT_MANIFEST
        && flags.bootstrap_manifest.is_empty()
    {
        return Err(PostureError::TooManyStaticPublishers(flags.publishers_static.len()));
    }
    let parse = |flag: Flag, list: &[String]| -> Result<Vec<BootstrapEntry>, PostureError> {
        list.iter().map(|e| BootstrapEntry::parse(e, flag)).collect()
    };
    posture.bootstrap_manifest = parse(Flag::BootstrapManifest, flags.bootstrap_manifest)?;
    posture.bootstrap_beacon = parse(Flag::BootstrapBeacon, flags.bootstrap_beacon)?;
    posture.bootstrap_subtree_announce =
        parse(Flag::BootstrapSubtreeAnnounce, flags.bootstrap_subtree_announce)?;
    posture.publishers_static = parse(Flag::PublishersStatic, flags.publishers_static)?;
    Ok(posture)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    struct Case {
        mode: SourceMode,
        scope: Scope,
        bind: Option<&'static str>,
        manifest: Vec<String>,
        beacon: Vec<String>,
        subtree: Vec<String>,
        statics: Vec<String>,
        refresh: Duration,
    }

    impl Case {
        fn ssm() -> Self {
            Case {
                mode: SourceMode::Ssm,
                scope: Scope::Site,
                bind: None,
                manifest: vec![],
                beacon: strings(&["retry.svc.cluster.local"]),
                subtree: vec![],
                statics: vec![],
                refresh: Duration::from_secs(30),
            }
        }

        fn run(&self) -> Result<SsmPosture, PostureError> {
            validate(&SsmFlags {
                source_mode: self.mode,
                scope: self.scope,
                bind_source: self.bind,
                bootstrap_manifest: &self.manifest,
                bootstrap_beacon: &self.beacon,
                bootstrap_subtree_announce: &self.subtree,
                publishers_static: &self.statics,
                bootstrap_refresh: self.refresh,
            })
        }
    }

    #[test]
    fn prefixes_per_mode_and_scope() {
        let table = [
            (SourceMode::Asm, Scope::Link, Ok(0xFF02)),
            (SourceMode::Asm, Scope::Site, Ok(0xFF05)),
            (SourceMode::Asm, Scope::Org, Ok(0xFF08)),
            (SourceMode::Asm, Scope::Global, Err(PostureError::AsmAtGlobalScope)),
            (SourceMode::Ssm, Scope::Link, Err(PostureError::NoSsmAtScope(Scope::Link))),
            (SourceMode::Ssm, Scope::Site, Ok(0xFF35)),
            (SourceMode::Ssm, Scope::Org, Err(PostureError::NoSsmAtScope(Scope::Org))),
            (SourceMode::Ssm, Scope::Global, Ok(0xFF3E)),
        ];
        for (mode, scope, want) in table {
            let got = Case { mode, scope, ..Case::ssm() }.run().map(|p| p.prefix);
            assert_eq!(got, want, "{mode:?} {scope:?}");
        }
    }

    #[test]
    fn errors_name_the_flags_to_set() {
        let msg = |c: Case| c.run().unwrap_err().to_string();
        let m = msg(Case { mode: SourceMode::Asm, scope: Scope::Global, ..Case::ssm() });
        assert!(m.contains("RFC 8815") && m.contains("--source-mode (SOURCE_MODE)"), "{m}");
        let m = msg(Case { scope: Scope::Org, ..Case::ssm() });
        assert!(m.contains("--scope (MC_SCOPE)") && m.contains("site or global"), "{m}");
        let m = msg(Case { beacon: vec![], ..Case::ssm() });
        assert!(m.contains("--ssm-bootstrap-manifest (SSM_BOOTSTRAP_MANIFEST)"), "{m}");
        assert!(m.contains("--ssm-publishers-static"), "{m}");
        let m = msg(Case { refresh: Duration::ZERO, ..Case::ssm() });
        assert!(m.contains("--ssm-bootstrap-refresh (SSM_BOOTSTRAP_REFRESH)"), "{m}");
    }

    #[test]
    fn bind_source_must_be_ipv6_unicast() {
        for bad in ["10.0.0.1", "::ffff:10.0.0.1", "ff05::1", "::", "::1", "host.example"] {
            let e = Case { bind: Some(bad), ..Case::ssm() }.run().unwrap_err();
            assert_eq!(e, PostureError::BadBindSource(bad.to_owned()));
            assert!(e.to_string().contains("--bind-source (BIND_SOURCE)"));
        }
        let p = Case { bind: Some("fd20::7"), ..Case::ssm() }.run().unwrap();
        assert_eq!(p.bind_source, Some("fd20::7".parse().unwrap()));
    }

    #[test]
    fn static_publishers_fail_closed_past_sixteen() {
        let many: Vec<String> = (1..=17).map(|i| format!("fd20::{i:x}")).collect();
        let c = Case { statics: many.clone(), beacon: vec![], ..Case::ssm() };
        assert_eq!(c.run(), Err(PostureError::TooManyStaticPublishers(17)));
        assert!(c.run().unwrap_err().to_string().contains("set --ssm-bootstrap-manifest"));
        let ok = Case { statics: many[..16].to_vec(), beacon: vec![], ..Case::ssm() };
        assert_eq!(ok.run().unwrap().publishers_static.len(), 16);
        let with_manifest =
            Case { statics: many, manifest: strings(&["manifest.example"]), ..Case::ssm() };
        assert_eq!(with_manifest.run().unwrap().publishers_static.len(), 17);
    }

    #[test]
    fn entries_are_literals_or_names() {
        let c = Case { subtree: strings(&["fd20::1", "announce.example"]), ..Case::ssm() };
        let p = c.run().unwrap();
        assert_eq!(
            p.entries(SourceList::BootstrapSubtreeAnnounce),
            [
                BootstrapEntry::Literal("fd20::1".parse().unwrap()),
                BootstrapEntry::Name("announce.example".into())
            ]
        );
        let c = Case { manifest: strings(&["192.0.2.1"]), ..Case::ssm() };
        assert_eq!(
            c.run(),
            Err(PostureError::BadEntry {
                flag: Flag::BootstrapManifest,
                entry: "192.0.2.1".into()
            })
        );
    }

    #[test]
    fn asm_ignores_the_lists_and_says_so() {
        let c = Case {
            mode: SourceMode::Asm,
            statics: (0..40).map(|i| format!("fd20::{i:x}")).collect(),
            ..Case::ssm()
        };
        let p = c.run().unwrap();
        assert!(!p.is_ssm());
        assert_eq!(p.unused, [Flag::BootstrapBeacon, Flag::PublishersStatic]);
        assert!(p.publishers_static.is_empty() && p.bootstrap_beacon.is_empty());
    }
}
