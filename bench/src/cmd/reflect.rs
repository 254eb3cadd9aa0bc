//! `reflect` and `sink`: the kernel's floor for each workload on this
//! machine.
//!
//! - `reflect` answers every datagram with one 16-byte datagram and does
//!   nothing else (recvmmsg in, sendmmsg out). So the `nack` command can
//!   time it, the reply is laid out as an ACK echoing the NACK's EndSeq;
//!   building it is a 16-byte copy.
//! - `sink` joins the data groups and counts what recvmmsg hands it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::{self, Batch, UdpCounters};
use crate::out::{self, Clock, Common, Progress, row};
use crate::proc;

/// `reflect` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReflectArgs {
    /// UDP port to answer on (127.0.0.1).
    #[arg(long, default_value_t = 9300)]
    pub port: u16,
    /// Datagrams per recvmmsg/sendmmsg.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `sink` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Data port (the publisher's --port).
    #[arg(long, default_value_t = 9001)]
    pub port: u16,
    /// Group indices to join (default: shard groups 0-3 and the block group).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,65534")]
    pub groups: Vec<u16>,
    /// Datagrams per recvmmsg.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// What a `reflect` or `sink` run saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerResult {
    /// Datagrams received.
    pub received: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Datagrams sent (reflect).
    pub replied: u64,
    /// Seconds from the first datagram to the last.
    pub active_s: f64,
    /// `received / active_s`.
    pub rate: f64,
    /// Machine-wide UDP counter deltas.
    pub udp: UdpCounters,
}

fn serve(
    common: &Common,
    sock: &socket2::Socket,
    batch: usize,
    title: &str,
    mut reply: Option<&mut Batch>,
) -> Result<ServerResult, String> {
    common.pin()?;
    net::set_read_timeout(sock, Duration::from_millis(50)).map_err(|e| e.to_string())?;
    let mut rx = Batch::new(batch, 65_536);
    let udp0 = UdpCounters::read();
    let duration = common.duration.0;
    let dur_ns = duration.as_nanos() as u64;
    let progress = Progress::new(duration, common.quiet);
    let clock = Clock::default();
    let iv_ns = common.interval.0.as_nanos().max(1) as u64;
    let (mut next_iv, mut iv_rx) = (iv_ns, 0u64);
    let mut r = ServerResult::default();
    let (mut first, mut last) = (None, 0u64);
    let mut resp = [0u8; 16];
    loop {
        let now = clock.now_ns();
        if now >= dur_ns || proc::stopped() {
            break;
        }
        let n = rx.recv(sock.as_raw_fd(), true).map_err(|e| e.to_string())?;
        if n > 0 {
            let t = clock.now_ns();
            first.get_or_insert(t);
            last = t;
            r.received += n as u64;
            if let Some(out) = reply.as_deref_mut() {
                for i in 0..n {
                    let (bytes, from) = rx.get(i);
                    r.bytes += bytes.len() as u64;
                    if bytes.len() >= 32 {
                        resp[..6].copy_from_slice(&bytes[..6]);
                        resp[6] = 0x12;
                        resp[7] = 0;
                        resp[8..16].copy_from_slice(&bytes[24..32]);
                    } else {
                        resp = [0; 16];
                    }
                    out.push_copy(&resp, from);
                }
                r.replied += out.send(sock.as_raw_fd()).unwrap_or(0) as u64;
            } else {
                for i in 0..n {
                    r.bytes += rx.get(i).0.len() as u64;
                }
            }
        }
        let now = clock.now_ns();
        if now >= next_iv {
            let secs = iv_ns as f64 / 1e9;
            progress.line(&format!(
                "t={:5.1}s  received {}",
                next_iv as f64 / 1e9,
                out::rate((r.received - iv_rx) as f64 / secs)
            ));
            progress.set(Duration::from_nanos(now));
            iv_rx = r.received;
            next_iv += iv_ns;
        }
    }
    progress.finish();
    r.active_s = first.map_or(0.0, |f| (last - f) as f64 / 1e9);
    r.rate = if r.active_s > 0.0 { r.received as f64 / r.active_s } else { 0.0 };
    r.udp = UdpCounters::read().since(&udp0);
    out::print_table(
        title,
        &[
            row("received", r.received),
            row("replied", r.replied),
            row("rate (first to last datagram)", out::rate(r.rate)),
            row("kernel receive-buffer drops (machine)", r.udp.rcvbuf_errors),
        ],
    );
    out::maybe_json(&common.json, &r)?;
    Ok(r)
}

/// Runs `reflect` until --duration or SIGTERM.
pub fn reflect(a: ReflectArgs) -> Result<ServerResult, String> {
    let sock = net::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port), false)
        .map_err(|e| e.to_string())?;
    let mut out = Batch::new(a.batch.max(1), 16);
    serve(&a.common, &sock, a.batch.max(1), "reflect summary", Some(&mut out))
}

/// Runs `sink` until --duration or SIGTERM.
pub fn sink(a: SinkArgs) -> Result<ServerResult, String> {
    let sock = net::group_receiver(a.port, &a.groups, false).map_err(|e| e.to_string())?;
    serve(&a.common, &sock, a.batch.max(1), "sink summary", None)
}
