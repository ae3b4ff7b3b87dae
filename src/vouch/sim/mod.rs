//! A deterministic simulation of peer vouching: hosts with their own clock rates, a
//! lossy, reordering, partitionable network, a linearizable etcd with a lease sweep,
//! crashes, freezes and etcd outages. The holder and witness state machines, the lease
//! deadline and the revocation rule are the real ones; after every event it checks
//! that no two hosts are lit for one exclusive IP (address present, fence open).

mod agent;
mod etcd;
mod witnessing;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::wire::Packet;
use super::Timing;
use agent::Proc;
use etcd::{Etcd, Reply, Req, Snap};

/// splitmix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Rules broken on purpose: each must make the simulation find two lit hosts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Breakage {
    /// Witnesses vote this much inside their promise.
    pub promise_cut: Duration,
    /// Revoke with one vote fewer than the quorum.
    pub small_vote_quorum: bool,
    /// Holders ignore the configuration they are writing.
    pub ignore_pending: bool,
}

/// One simulation's shape.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub nodes: usize,
    pub ips: usize,
    pub duration: Duration,
    pub ttl_secs: i64,
    pub timing: Timing,
    pub breakage: Breakage,
    /// No faults and no loss: a healthy cluster (for the traffic a host sends).
    pub quiet: bool,
}

/// A host's monotonic clock: `offset + real × (1 + ppm/1e6)`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_us: u64,
    ppm: i64,
}

impl Clock {
    fn local(&self, real: u64) -> u64 {
        let scaled = real as i128 * (1_000_000 + self.ppm as i128) / 1_000_000;
        self.offset_us + scaled as u64
    }

    /// The first real µs at which the local clock reads `local` or more.
    fn real(&self, local: u64) -> u64 {
        let since = local.saturating_sub(self.offset_us) as i128;
        let rate = 1_000_000 + self.ppm as i128;
        ((since * 1_000_000 + rate - 1) / rate) as u64
    }
}

/// Where a process is in its life.
pub struct Host {
    pub clock: Clock,
    /// IPs with an address on this host (the kernel's; kept across crashes).
    pub addresses: BTreeSet<usize>,
    /// Real µs the fence closes at (`None`: closed).
    pub fence_until: Option<u64>,
    pub proc: Option<Proc>,
    pub frozen_until: u64,
    /// The lease file a restarted agent re-attaches from.
    pub state_lease: Option<i64>,
    /// Watch and reply streams are FIFO: the last delivery time on each.
    last_view: u64,
    last_reply: u64,
    next_proc: u64,
}

/// What happens next.
#[derive(Debug)]
pub enum Ev {
    Tick(usize, u64),
    Keepalive(usize, u64),
    Udp(usize, Packet),
    AtEtcd(usize, u64, Req),
    Reply(usize, u64, Reply),
    View(usize, u64, Rc<Snap>),
    Sweep,
    Fault,
    Restart(usize),
    Heal(Heal),
}

/// A fault that ends.
#[derive(Debug)]
pub enum Heal {
    Link(usize, usize),
    EtcdLink(usize),
}

/// The simulated world.
pub struct World {
    pub now: u64,
    pub rng: Rng,
    pub params: Params,
    pub base: Instant,
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    seq: u64,
    /// Directed peer links that drop everything.
    pub cut: BTreeMap<(usize, usize), u32>,
    /// Hosts cut from etcd.
    pub etcd_cut: BTreeMap<usize, u32>,
    pub etcd_down_until: u64,
    pub loss: f64,
    /// Packets kept for replay attacks.
    recorded: Vec<(usize, Packet)>,
    /// Two lit hosts found: (real µs, ip, hosts).
    pub violation: Option<(u64, usize, Vec<usize>)>,
    /// Real µs summed over IPs while no host was lit for them.
    pub dark_total_us: u64,
    /// Datagrams sent by all hosts (heartbeats and acknowledgements).
    pub datagrams: u64,
    /// Print what happens (`EXTIP_SIM_TRACE=<seed>`).
    pub trace: bool,
}

/// The result of one run.
#[derive(Debug)]
pub struct Outcome {
    pub violation: Option<(u64, usize, Vec<usize>)>,
    pub dark_share: f64,
    pub revocations: u64,
    /// Datagrams a host sent per simulated second, on average.
    pub datagrams_per_host_second: f64,
}

impl World {
    pub fn new(seed: u64, params: Params) -> Self {
        let mut rng = Rng::new(seed);
        let margin = super::CLOCK_RATE_MARGIN_PPM as i64 - 100;
        let hosts = (0..params.nodes)
            .map(|_| Host {
                clock: Clock {
                    offset_us: rng.between(10_000_000, 100_000_000),
                    ppm: rng.between(0, 2 * margin as u64) as i64 - margin,
                },
                addresses: BTreeSet::new(),
                fence_until: None,
                proc: None,
                frozen_until: 0,
                state_lease: None,
                last_view: 0,
                last_reply: 0,
                next_proc: 1,
            })
            .collect();
        let loss = [0.0, 0.01, 0.05, 0.2][rng.between(0, 3) as usize];
        let loss = if params.quiet { 0.0 } else { loss };
        let mut world = World {
            now: 0,
            rng,
            params,
            base: Instant::now(),
            hosts,
            etcd: Etcd::new(params.ttl_secs as u64 * 1_000_000),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            cut: BTreeMap::new(),
            etcd_cut: BTreeMap::new(),
            etcd_down_until: 0,
            loss,
            recorded: Vec::new(),
            violation: None,
            dark_total_us: 0,
            datagrams: 0,
            trace: std::env::var("EXTIP_SIM_TRACE").is_ok_and(|s| s == seed.to_string()),
        };
        for i in 0..params.nodes {
            let at = world.rng.between(0, 300_000);
            world.at(at, Ev::Restart(i));
        }
        world.at(500_000, Ev::Sweep);
        let first_fault = world.rng.between(500_000, 2_000_000);
        if !params.quiet {
            world.at(first_fault, Ev::Fault);
        }
        world
    }

    /// Say what happened, when tracing.
    pub fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            let lit: Vec<String> = (0..self.params.ips)
                .map(|ip| format!("{:?}", self.lit(ip)))
                .collect();
            eprintln!(
                "{:>9.3} ms lit {} | {}",
                self.now as f64 / 1000.0,
                lit.join(" "),
                what()
            );
        }
    }

    /// Schedule `ev` at real µs `at`.
    pub fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let id = self.seq as usize;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at.max(self.now), self.seq, id)));
    }

    /// The local clock of host `i` now, as an `Instant`.
    pub fn local(&self, i: usize) -> Instant {
        self.base + Duration::from_micros(self.hosts[i].clock.local(self.now))
    }

    /// The real µs at which host `i`'s clock shows `at`.
    pub fn real_of(&self, i: usize, at: Instant) -> u64 {
        let local = at.saturating_duration_since(self.base).as_micros() as u64;
        self.hosts[i].clock.real(local)
    }

    /// Run to the end; the first violation stops the run.
    pub fn run(mut self) -> Outcome {
        let end = self.params.duration.as_micros() as u64;
        let mut revocations = 0;
        while let Some(Reverse((t, _, id))) = self.queue.pop() {
            if t > end || self.violation.is_some() {
                break;
            }
            let dark_before = self.dark_ips();
            let step = t - self.now;
            self.dark_total_us += step * dark_before as u64;
            self.now = t;
            let ev = self.events.remove(&id).expect("scheduled event");
            if matches!(ev, Ev::Reply(_, _, Reply::Revoked(Some(_)))) {
                revocations += 1;
            }
            self.dispatch(ev);
            self.check();
        }
        let total = end as f64 * self.params.ips as f64;
        Outcome {
            violation: self.violation,
            dark_share: self.dark_total_us as f64 / total,
            revocations,
            datagrams_per_host_second: self.datagrams as f64
                / self.params.nodes as f64
                / self.params.duration.as_secs_f64(),
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Sweep => {
                if self.now >= self.etcd_down_until {
                    // Expired leases go; the watchers also catch up (a resync).
                    self.etcd.sweep(self.now);
                    self.publish();
                }
                self.at(self.now + 500_000, Ev::Sweep);
            }
            Ev::AtEtcd(from, proc, req) => self.at_etcd(from, proc, req),
            Ev::Fault => self.fault(),
            Ev::Heal(Heal::Link(a, b)) => release(&mut self.cut, (a, b)),
            Ev::Heal(Heal::EtcdLink(a)) => release(&mut self.etcd_cut, a),
            Ev::Restart(i) => self.start(i),
            Ev::Tick(i, p) | Ev::Keepalive(i, p) | Ev::Reply(i, p, _) | Ev::View(i, p, _)
                if !self.current(i, p) => {}
            Ev::Udp(i, _) if self.hosts[i].proc.is_none() => {}
            ev => {
                let i = match &ev {
                    Ev::Tick(i, _) | Ev::Keepalive(i, _) | Ev::Udp(i, _) => *i,
                    Ev::Reply(i, _, _) | Ev::View(i, _, _) => *i,
                    _ => unreachable!("handled above"),
                };
                if self.hosts[i].frozen_until > self.now {
                    // Stopped: everything waits in its socket or timer until it thaws.
                    let thaw = self.hosts[i].frozen_until;
                    self.at(thaw, ev);
                    return;
                }
                self.agent(i, ev);
                self.arm(i);
            }
        }
    }

    fn current(&self, i: usize, proc: u64) -> bool {
        self.hosts[i].proc.as_ref().is_some_and(|p| p.id == proc)
    }

    /// IPs no host is lit for right now.
    fn dark_ips(&self) -> usize {
        (0..self.params.ips)
            .filter(|ip| self.lit(*ip).is_empty())
            .count()
    }

    /// Hosts lit for `ip` now: the address is there and the fence open.
    pub fn lit(&self, ip: usize) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| {
                let h = &self.hosts[i];
                h.addresses.contains(&ip) && h.fence_until.is_some_and(|u| u > self.now)
            })
            .collect()
    }

    fn check(&mut self) {
        for ip in 0..self.params.ips {
            let lit = self.lit(ip);
            if lit.len() > 1 && self.violation.is_none() {
                self.log(|| format!("VIOLATION ip {ip} lit on {lit:?}"));
                self.violation = Some((self.now, ip, lit));
            }
        }
    }

    /// Send a datagram from `from` to `to`: lost, delayed, reordered, duplicated.
    pub fn send_udp(&mut self, from: usize, to: usize, packet: Packet) {
        self.datagrams += 1;
        if self.cut.contains_key(&(from, to)) || self.rng.chance(self.loss) {
            return;
        }
        let delay = if self.rng.chance(0.02) {
            self.rng.between(5_000, 150_000)
        } else {
            self.rng.between(50, 2_000)
        };
        if self.rng.chance(0.01) {
            self.recorded.push((to, packet.clone()));
            if self.recorded.len() > 64 {
                self.recorded.remove(0);
            }
        }
        if self.rng.chance(0.01) {
            let again = self.now + delay + self.rng.between(0, 50_000);
            self.at(again, Ev::Udp(to, packet.clone()));
        }
        self.at(self.now + delay, Ev::Udp(to, packet));
    }

    /// A request from host `from`'s process `proc` to etcd.
    pub fn send_etcd(&mut self, from: usize, proc: u64, req: Req) {
        if self.etcd_cut.contains_key(&from) {
            return;
        }
        let delay = self.etcd_delay();
        self.at(self.now + delay, Ev::AtEtcd(from, proc, req));
    }

    fn etcd_delay(&mut self) -> u64 {
        if self.rng.chance(0.02) {
            self.rng.between(10_000, 300_000)
        } else {
            self.rng.between(200, 3_000)
        }
    }

    fn at_etcd(&mut self, from: usize, proc: u64, req: Req) {
        if self.now < self.etcd_down_until {
            // No leader: the request waits in the member until one is elected.
            let at = self.etcd_down_until + self.rng.between(0, 20_000);
            self.at(at, Ev::AtEtcd(from, proc, req));
            return;
        }
        let (reply, changed) = self.etcd.handle(from, req, self.now);
        if changed {
            self.publish();
        }
        if self.etcd_cut.contains_key(&from) {
            return;
        }
        let at = (self.now + self.etcd_delay()).max(self.hosts[from].last_reply);
        self.hosts[from].last_reply = at;
        self.at(at, Ev::Reply(from, proc, reply));
    }

    /// Deliver the new state to every watcher that etcd reaches, in order.
    fn publish(&mut self) {
        let snap = self.etcd.snap();
        for i in 0..self.hosts.len() {
            let Some(proc) = self.hosts[i].proc.as_ref().map(|p| p.id) else {
                continue;
            };
            if self.etcd_cut.contains_key(&i) {
                continue;
            }
            let at = (self.now + self.etcd_delay()).max(self.hosts[i].last_view);
            self.hosts[i].last_view = at;
            self.at(at, Ev::View(i, proc, snap.clone()));
        }
    }

    fn fault(&mut self) {
        let n = self.hosts.len();
        let victim = self.rng.between(0, n as u64 - 1) as usize;
        let long = self.rng.between(50_000, 4_000_000);
        let kind = self.rng.between(0, 9);
        self.log(|| format!("FAULT {kind} on n{victim} for {} ms", long / 1000));
        match kind {
            0 | 1 => {
                // Crash: the process dies; its addresses and fence stay in the kernel.
                self.hosts[victim].proc = None;
                let back = self.now + long;
                self.at(back, Ev::Restart(victim));
            }
            2 | 3 => self.hosts[victim].frozen_until = self.now + long,
            4 | 5 => {
                // Cut some directed peer links of the victim (one way or both).
                for other in (0..n).filter(|&o| o != victim) {
                    if self.rng.chance(0.6) {
                        let dirs = match self.rng.between(0, 2) {
                            0 => vec![(victim, other)],
                            1 => vec![(other, victim)],
                            _ => vec![(victim, other), (other, victim)],
                        };
                        for link in dirs {
                            *self.cut.entry(link).or_default() += 1;
                            self.at(self.now + long, Ev::Heal(Heal::Link(link.0, link.1)));
                        }
                    }
                }
            }
            6 => {
                *self.etcd_cut.entry(victim).or_default() += 1;
                self.at(self.now + long, Ev::Heal(Heal::EtcdLink(victim)));
            }
            7 => {
                let down = self.rng.between(100_000, 6_000_000);
                self.etcd_down_until = self.etcd_down_until.max(self.now + down);
            }
            8 => {
                // Replay recorded packets (an attacker with a copy of the traffic).
                let old: Vec<(usize, Packet)> = self.recorded.clone();
                for (to, packet) in old {
                    let at = self.now + self.rng.between(0, 100_000);
                    self.at(at, Ev::Udp(to, packet));
                }
            }
            _ => {
                // A split: hosts on two sides cannot hear each other.
                for a in 0..n {
                    for b in 0..n {
                        if a != b && (a < n / 2) != (b < n / 2) {
                            *self.cut.entry((a, b)).or_default() += 1;
                            self.at(self.now + long, Ev::Heal(Heal::Link(a, b)));
                        }
                    }
                }
            }
        }
        let next = self.now + self.rng.between(200_000, 3_000_000);
        self.at(next, Ev::Fault);
    }

    /// A fresh process on host `i`.
    fn start(&mut self, i: usize) {
        let id = self.hosts[i].next_proc;
        self.hosts[i].next_proc += 1;
        let started = self.local(i);
        let proc = Proc::new(i, id, started, &self.params);
        self.hosts[i].proc = Some(proc);
        self.hosts[i].frozen_until = 0;
        self.begin(i);
        let tick = self.now + self.rng.between(0, 50_000);
        self.at(tick, Ev::Tick(i, id));
        self.at(tick, Ev::Keepalive(i, id));
    }
}

fn release<K: Ord>(map: &mut BTreeMap<K, u32>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// Run `seeds` seeds with `params`; the first seed that finds two lit hosts.
pub fn first_violation(seeds: std::ops::Range<u64>, params: Params) -> Option<(u64, Outcome)> {
    seeds
        .map(|seed| (seed, World::new(seed, params).run()))
        .find(|(_, outcome)| outcome.violation.is_some())
}

#[cfg(test)]
mod tests;
