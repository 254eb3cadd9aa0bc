//! Datagrams the kernel dropped before ricochet read them, per socket: a
//! receive queue that overflowed (the count `SO_RXQ_OVFL` reports, the
//! socket's `sk_drops`), read from `/proc/net/udp` and `/proc/net/udp6` at
//! each scrape by the sockets' inodes, so the packet path pays nothing.
//! Without it, a burst that overran a worker shows only as NACKs or frames
//! that never arrived.

use std::fmt::Write as _;

use crate::rt::SocketInfo;

use crate::metrics as prom;

/// Drops by inode, from the text of `/proc/net/udp` or `/proc/net/udp6`:
/// the inode is the 10th column, the drop count the 13th (the last).
pub fn parse(table: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let inode = cols.get(9)?.parse().ok()?;
        let drops = cols.get(12)?.parse().ok()?;
        Some((inode, drops))
    })
}

/// `ricochet_kernel_drops_total{socket,core}` for `sockets`, reading the
/// kernel's tables through `read` (a path → its text).
pub fn render(sockets: &[SocketInfo], read: impl Fn(&str) -> Option<String>, out: &mut String) {
    let mut drops = std::collections::HashMap::new();
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Some(text) = read(path) {
            drops.extend(parse(&text));
        }
    }
    prom::family(
        out,
        "ricochet_kernel_drops_total",
        "counter",
        "Datagrams the kernel dropped on a socket before ricochet read them (receive queue full), by socket and core.",
    );
    for s in sockets {
        let n = drops.get(&s.inode).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "ricochet_kernel_drops_total{{socket=\"{}\",core=\"{}\"}} {n}",
            s.kind, s.worker
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  715: 00000000:2454 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 81234 2 0000000000000000 17
  716: 0100007F:2455 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 81235 2 0000000000000000 0
";

    #[test]
    fn drops_are_read_by_inode() {
        assert_eq!(parse(TABLE).collect::<Vec<_>>(), [(81234, 17), (81235, 0)]);
        assert_eq!(parse("header only\n").count(), 0);
        assert_eq!(parse("h\n garbage line\n").count(), 0);
    }

    #[test]
    fn every_socket_gets_a_series() {
        let sockets = [
            SocketInfo { kind: "nack", worker: 0, inode: 81234 },
            SocketInfo { kind: "ingress", worker: 1, inode: 99 },
        ];
        let mut out = String::new();
        render(&sockets, |p| (p == "/proc/net/udp").then(|| TABLE.to_owned()), &mut out);
        assert!(
            out.contains("ricochet_kernel_drops_total{socket=\"nack\",core=\"0\"} 17\n"),
            "{out}"
        );
        assert!(
            out.contains("ricochet_kernel_drops_total{socket=\"ingress\",core=\"1\"} 0\n"),
            "{out}"
        );
    }
}
