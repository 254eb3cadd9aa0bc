use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Latency, Net, Node, Transmit};

/// A node that logs what reaches it, sends what it is told to, and can
/// keep a periodic timer.
#[derive(Debug, Default)]
struct Probe {
    addr: Option<SocketAddr>,
    /// `(virtual ms since base, from, payload)` of every delivery.
    got: Vec<(Duration, SocketAddr, Vec<u8>)>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Sends a datagram to `.1` every `.0`.
    tick: Option<(Duration, SocketAddr)>,
    next: Option<Instant>,
    base: Option<Instant>,
    /// Answers every datagram with the same payload.
    echo: bool,
    /// Asks for a timer at the instant it last saw, forever.
    stuck: bool,
    timeouts: u32,
}

impl Node for Probe {
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        let base = *self.base.get_or_insert(now);
        self.got.push((now - base, from, payload.to_vec()));
        if self.echo {
            self.outbox.push((from, payload.to_vec()));
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.timeouts += 1;
        if self.stuck {
            self.next = Some(now);
            return;
        }
        if let Some((every, to)) = self.tick
            && self.next.is_some_and(|t| t <= now)
        {
            self.outbox.push((to, self.timeouts.to_be_bytes().to_vec()));
            self.next = Some(now + every);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn drain_transmits(&mut self, _now: Instant, out: &mut Vec<Transmit>) {
        let from = self.addr.expect("an address");
        out.extend(self.outbox.drain(..).map(|(to, payload)| Transmit { from, to, payload }));
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 9000)
}

/// `n` probes at 10.0.0.1…; every probe's clock starts at `base`.
fn probes(n: u8, seed: u64) -> (Net<Probe>, Instant) {
    let base = Instant::now();
    let mut net = Net::new(base, seed);
    for i in 1..=n {
        net.add(addr(i), Probe { addr: Some(addr(i)), base: Some(base), ..Probe::default() });
    }
    (net, base)
}

/// Node `from` sends `count` datagrams to node `to` now, payload = index.
fn burst(net: &mut Net<Probe>, from: usize, to: usize, count: u32) {
    let dest = net.addr(to);
    for k in 0..count {
        net.node_mut(from).outbox.push((dest, k.to_be_bytes().to_vec()));
    }
    net.flush(from);
}

fn payloads(got: &[(Duration, SocketAddr, Vec<u8>)]) -> Vec<u32> {
    got.iter().map(|(_, _, p)| u32::from_be_bytes(p[..4].try_into().unwrap())).collect()
}

#[test]
fn a_fixed_latency_delivers_exactly_that_late() {
    let (mut net, _) = probes(2, 1);
    net.set_latency(Latency::Fixed(Duration::from_millis(7)));
    net.run_for(Duration::from_millis(3));
    burst(&mut net, 0, 1, 5);
    net.run_for(Duration::from_millis(6));
    assert!(net.node(1).got.is_empty(), "not before 10 ms");
    net.run_for(Duration::from_millis(1));
    let got = &net.node(1).got;
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(t, from, _)| *t == Duration::from_millis(10) && *from == addr(1)));
    assert_eq!(payloads(got), [0, 1, 2, 3, 4], "equal delays keep the sending order");
    assert_eq!(net.elapsed(), Duration::from_millis(10));
}

#[test]
fn a_uniform_latency_spans_its_range_in_its_steps() {
    let (mut net, _) = probes(2, 2);
    let (lo, hi) = (Duration::from_millis(5), Duration::from_millis(60));
    net.set_latency(Latency::uniform(lo, hi, Duration::from_millis(1)));
    burst(&mut net, 0, 1, 2000);
    net.run_for(Duration::from_secs(1));
    let got = &net.node(1).got;
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|(t, _, _)| lo <= *t && *t <= hi && t.subsec_micros() % 1000 == 0));
    let min = got.iter().map(|g| g.0).min().unwrap();
    let max = got.iter().map(|g| g.0).max().unwrap();
    assert_eq!((min, max), (lo, hi), "2000 draws over 56 values reach both ends");
    let mean = got.iter().map(|g| g.0.as_secs_f64()).sum::<f64>() / got.len() as f64;
    assert!((0.031..0.034).contains(&mean), "mean {mean}");
}

#[test]
fn the_loss_rate_is_what_was_asked_for() {
    for (seed, loss) in [(3, 0.01), (4, 0.05), (5, 0.25)] {
        let (mut net, _) = probes(2, seed);
        net.set_loss(loss);
        let n = 20_000;
        burst(&mut net, 0, 1, n);
        net.run_for(Duration::from_secs(1));
        let lost = net.stats().lost_random;
        assert_eq!(lost + net.node(1).got.len() as u64, u64::from(n));
        assert_eq!(net.stats().lost(), lost);
        // Within four standard deviations of the binomial mean.
        let (mean, sd) = (f64::from(n) * loss, (f64::from(n) * loss * (1.0 - loss)).sqrt());
        assert!((lost as f64 - mean).abs() < 4.0 * sd, "loss {loss}: {lost} of {n} lost");
    }
}

#[test]
fn jitter_reorders_and_so_does_a_hold_back() {
    let (mut net, _) = probes(2, 6);
    net.set_latency(Latency::uniform(
        Duration::from_millis(1),
        Duration::from_millis(20),
        Duration::from_micros(1),
    ));
    burst(&mut net, 0, 1, 100);
    net.run_for(Duration::from_secs(1));
    let order = payloads(&net.node(1).got);
    assert_eq!(order.len(), 100);
    assert!(order.windows(2).any(|w| w[0] > w[1]), "jitter reorders");

    // A fixed latency keeps the order, unless datagrams are held back.
    let (mut net, _) = probes(2, 7);
    net.set_latency(Latency::Fixed(Duration::from_millis(1)));
    for _ in 0..100 {
        burst(&mut net, 0, 1, 1);
        net.run_for(Duration::from_micros(100));
    }
    net.run_for(Duration::from_secs(1));
    let order = payloads(&net.node(1).got);
    assert!(order.windows(2).all(|w| w[0] <= w[1]));
    let (mut net, _) = probes(2, 7);
    net.set_latency(Latency::Fixed(Duration::from_millis(1)));
    net.set_reorder(0.1, Duration::from_millis(2));
    for k in 0..100u32 {
        let to = net.addr(1);
        net.node_mut(0).outbox.push((to, k.to_be_bytes().to_vec()));
        net.flush(0);
        net.run_for(Duration::from_micros(100));
    }
    net.run_for(Duration::from_secs(1));
    let order = payloads(&net.node(1).got);
    assert_eq!(order.len(), 100, "held back, not lost");
    let overtaken = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!((3..30).contains(&overtaken), "{overtaken} out of order: {order:?}");
}

#[test]
fn a_partition_blocks_and_healing_restores_delivery() {
    let (mut net, _) = probes(4, 8);
    net.set_latency(Latency::Fixed(Duration::from_millis(1)));
    net.partition().split(&[vec![addr(1), addr(2)], vec![addr(3)]]);
    for to in 1..4 {
        burst(&mut net, 0, to, 1);
    }
    net.run_for(Duration::from_millis(5));
    assert_eq!(net.node(1).got.len(), 1, "same side");
    assert!(net.node(2).got.is_empty(), "other side");
    assert_eq!(net.node(3).got.len(), 1, "in no group: reaches every group");
    assert_eq!(net.stats().blocked, 1);

    // Changed during the run: a pair block and an isolation, then heal.
    net.partition().heal();
    net.partition().block(addr(2), addr(1));
    net.partition().isolate(addr(4));
    for to in 1..4 {
        burst(&mut net, 0, to, 1);
    }
    burst(&mut net, 3, 0, 1);
    net.run_for(Duration::from_millis(5));
    assert_eq!(net.node(1).got.len(), 1, "pair blocked");
    assert_eq!(net.node(2).got.len(), 1);
    assert_eq!(net.node(3).got.len(), 1, "isolated");
    assert_eq!(net.node(0).got.len(), 0, "isolated, both ways");
    assert_eq!(net.stats().blocked, 4);

    net.partition().restore(addr(4));
    burst(&mut net, 3, 0, 1);
    net.partition().heal();
    assert!(net.partition().is_empty());
    for to in 1..4 {
        burst(&mut net, 0, to, 1);
    }
    net.run_for(Duration::from_millis(5));
    assert_eq!(net.node(0).got.len(), 1);
    assert_eq!([1, 2, 3].map(|i| net.node(i).got.len()), [2, 2, 2], "healed: everything arrives");
    assert_eq!(net.stats().blocked, 4);
    assert_eq!(net.stats().delivered, 7);
}

#[test]
fn timers_fire_when_asked_and_down_nodes_drop_and_skip() {
    let (mut net, base) = probes(2, 9);
    net.set_latency(Latency::Fixed(Duration::from_millis(2)));
    net.node_mut(0).tick = Some((Duration::from_millis(100), addr(2)));
    net.node_mut(0).next = Some(base + Duration::from_millis(100));
    net.flush(0);
    net.run_for(Duration::from_millis(450));
    let got: Vec<u64> = net.node(1).got.iter().map(|g| g.0.as_millis() as u64).collect();
    assert_eq!(got, [102, 202, 302, 402]);
    assert_eq!(net.node(0).timeouts, 4);

    net.set_up(1, false);
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.node(1).got.len(), 4);
    assert_eq!(net.stats().down, 2);
    net.set_up(0, false);
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.node(0).timeouts, 6, "the pending timer popped, skipped, not re-armed");

    // A new incarnation at the same address, reached by what is in flight.
    let a = addr(2);
    net.node_mut(0).tick = None;
    net.node_mut(0).next = None;
    net.replace(1, Probe { addr: Some(a), base: Some(base), echo: true, ..Probe::default() });
    net.node_mut(0).outbox.push((a, vec![1, 2, 3, 4]));
    net.set_up(0, true);
    net.flush(0);
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.node(1).got.len(), 1);
    assert_eq!(net.node(0).got.len(), 1, "the echo came back");
    assert_eq!(net.index_of(a), Some(1));
}

#[test]
fn inject_delivers_now_past_everything() {
    let (mut net, _) = probes(2, 10);
    net.set_latency(Latency::Fixed(Duration::from_secs(1)));
    net.set_loss(1.0);
    net.partition().isolate(addr(2));
    net.run_for(Duration::from_millis(5));
    net.inject(Transmit { from: addr(9), to: addr(2), payload: vec![7; 4] });
    net.run_until(net.elapsed(), |_, _| false);
    assert_eq!(net.node(1).got, [(Duration::from_millis(5), addr(9), vec![7; 4])]);
}

#[test]
fn after_step_sees_every_step_and_can_stop_the_run() {
    let (mut net, _) = probes(2, 11);
    net.set_latency(Latency::Fixed(Duration::from_millis(1)));
    burst(&mut net, 0, 1, 10);
    let mut seen = Vec::new();
    let stopped = net.run_until(Duration::from_secs(1), |net, idx| {
        seen.push(idx);
        net.node(1).got.len() == 4
    });
    assert!(stopped);
    assert_eq!(seen, [1, 1, 1, 1]);
    assert_eq!(net.elapsed(), Duration::from_millis(1), "the clock stays at the stop");
}

#[test]
#[should_panic(expected = "virtual time stuck")]
fn a_livelock_panics_instead_of_spinning() {
    let (mut net, base) = probes(1, 12);
    net.set_stall_limit(1000);
    net.node_mut(0).stuck = true;
    net.node_mut(0).next = Some(base);
    net.flush(0);
    net.run_for(Duration::from_secs(1));
}

/// Every delivery of a lossy, jittery, echoing, ticking network of 8.
fn trace(seed: u64) -> Vec<(usize, Duration, SocketAddr, Vec<u8>)> {
    let (mut net, base) = probes(8, seed);
    net.set_latency(Latency::uniform(
        Duration::from_millis(1),
        Duration::from_millis(20),
        Duration::from_micros(1),
    ));
    net.set_loss(0.1);
    net.set_reorder(0.05, Duration::from_millis(30));
    for i in 0..8 {
        let to = addr(1 + ((i + 3) % 8) as u8);
        let every = Duration::from_millis(10 + 7 * i as u64);
        let p = net.node_mut(i);
        p.echo = i % 2 == 0;
        p.tick = Some((every, to));
        p.next = Some(base + every);
        net.flush(i);
    }
    net.run_for(Duration::from_millis(500));
    net.partition().split(&[vec![addr(1), addr(2)], vec![addr(5), addr(6)]]);
    net.partition().isolate(addr(8));
    net.run_for(Duration::from_millis(500));
    net.partition().heal();
    net.run_for(Duration::from_millis(500));
    let mut all = Vec::new();
    for i in 0..8 {
        all.extend(net.node(i).got.iter().map(|(t, f, p)| (i, *t, *f, p.clone())));
    }
    all
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = trace(13);
    assert!(a.len() > 300, "{} deliveries", a.len());
    assert_eq!(a, trace(13));
    assert_ne!(a, trace(14));
}
