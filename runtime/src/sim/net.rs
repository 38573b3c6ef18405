//! The simulated network: connections, the event queue, partitions and drops.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proto::{Addr, NodeId};
use rand::RngExt;
use rand::rngs::StdRng;

use super::{SimConfig, SimStats};
use crate::node::{PeerInfo, Transport};
use crate::role::{ConnId, Dest, Link};

/// One input waiting in a node's inbox for its next turn.
pub(super) enum Input {
    Start,
    Frame {
        conn: ConnId,
        inbound: bool,
        peer: PeerInfo,
        bytes: Bytes,
    },
    Link {
        to: Dest,
        link: Link,
    },
    Closed {
        conn: ConnId,
    },
}

/// Direction of travel on a connection.
const TO_SERVER: usize = 0;
const TO_CLIENT: usize = 1;

enum Payload {
    Frame(Bytes),
    /// The accepting end's hello: the link is up once it reaches the connecting end.
    Hello,
}

enum Event {
    Turn {
        node: usize,
        epoch: u64,
    },
    Connect {
        conn: u64,
    },
    Arrive {
        conn: u64,
        direction: usize,
        payload: Payload,
    },
    HoldTimeout {
        conn: u64,
        direction: usize,
    },
    Notify {
        node: usize,
        epoch: u64,
        input: NotifyInput,
    },
}

enum NotifyInput {
    LinkDown(Dest),
    Closed(ConnId),
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Scheduled) -> Ordering {
        // BinaryHeap is a max-heap: reverse for earliest (time, sequence) first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

enum ConnState {
    Connecting { queued: Vec<Bytes> },
    Open,
}

struct Conn {
    client: usize,
    server: Option<usize>,
    dest: Dest,
    client_peer: PeerInfo,
    server_peer: Option<PeerInfo>,
    state: ConnState,
    last_arrival: [u64; 2],
    held: [VecDeque<Payload>; 2],
}

#[derive(Clone, Copy)]
struct Backoff {
    next_attempt_at: u64,
    delay: Duration,
}

pub(super) struct Endpoint {
    node_id: NodeId,
    alive: bool,
    epoch: u64,
    peer: Option<PeerInfo>,
    inbox: Vec<Input>,
    next_turn: Option<u64>,
    links: BTreeMap<Dest, u64>,
    inbound: BTreeSet<u64>,
    backoff: BTreeMap<Dest, Backoff>,
}

pub(super) struct Net {
    pub(super) now: u64,
    pub(super) rng: StdRng,
    pub(super) config: SimConfig,
    pub(super) stats: SimStats,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    next_conn: u64,
    conns: BTreeMap<u64, Conn>,
    endpoints: Vec<Endpoint>,
    by_addr: BTreeMap<Addr, usize>,
    blocked: BTreeSet<(usize, usize)>,
    /// Extra one-way latency by (from, to): an asymmetric path.
    extra_latency: BTreeMap<(usize, usize), u64>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Net {
    pub(super) fn new(rng: StdRng, config: SimConfig) -> Net {
        Net {
            now: 0,
            rng,
            config,
            stats: SimStats::default(),
            queue: BinaryHeap::new(),
            seq: 0,
            next_conn: 1,
            conns: BTreeMap::new(),
            endpoints: Vec::new(),
            by_addr: BTreeMap::new(),
            blocked: BTreeSet::new(),
            extra_latency: BTreeMap::new(),
        }
    }

    pub(super) fn register_addr(&mut self, addr: Addr, index: usize) -> bool {
        self.by_addr.insert(addr, index).is_none()
    }

    pub(super) fn add_endpoint(&mut self, node_id: NodeId) {
        self.endpoints.push(Endpoint {
            node_id,
            alive: false,
            epoch: 0,
            peer: None,
            inbox: Vec::new(),
            next_turn: None,
            links: BTreeMap::new(),
            inbound: BTreeSet::new(),
            backoff: BTreeMap::new(),
        });
    }

    pub(super) fn boot(&mut self, index: usize, peer: PeerInfo) {
        let endpoint = &mut self.endpoints[index];
        endpoint.alive = true;
        endpoint.epoch += 1;
        endpoint.peer = Some(peer);
        endpoint.inbox.clear();
        endpoint.next_turn = None;
        endpoint.backoff.clear();
    }

    pub(super) fn crash(&mut self, index: usize) {
        let endpoint = &mut self.endpoints[index];
        endpoint.alive = false;
        endpoint.epoch += 1;
        endpoint.inbox.clear();
        endpoint.next_turn = None;
        let mut conns: Vec<u64> = endpoint.links.values().copied().collect();
        conns.extend(endpoint.inbound.iter().copied());
        for conn in conns {
            self.break_conn(conn);
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    pub(super) fn next_event_at(&self) -> Option<u64> {
        self.queue.peek().map(|scheduled| scheduled.at)
    }

    fn latency(&mut self) -> u64 {
        let min = nanos(self.config.latency_min);
        let max = nanos(self.config.latency_max).max(min);
        let mut latency = self.rng.random_range(min..=max);
        if self.config.latency_tail_rate > 0.0
            && self.rng.random_bool(self.config.latency_tail_rate)
        {
            latency += nanos(self.config.latency_tail);
        }
        latency
    }

    fn turn_latency(&mut self) -> u64 {
        self.rng
            .random_range(0..=nanos(self.config.turn_latency_max))
    }

    /// Makes sure `node` has a turn at or before `at`.
    pub(super) fn schedule_turn(&mut self, node: usize, at: u64) {
        let endpoint = &mut self.endpoints[node];
        if !endpoint.alive || endpoint.next_turn.is_some_and(|scheduled| scheduled <= at) {
            return;
        }
        endpoint.next_turn = Some(at);
        let epoch = endpoint.epoch;
        self.schedule(at, Event::Turn { node, epoch });
    }

    pub(super) fn push_input(&mut self, node: usize, input: Input) {
        if !self.endpoints[node].alive {
            return;
        }
        self.endpoints[node].inbox.push(input);
        let at = self.now + self.turn_latency();
        self.schedule_turn(node, at);
    }

    pub(super) fn take_inbox(&mut self, node: usize) -> Vec<Input> {
        std::mem::take(&mut self.endpoints[node].inbox)
    }

    /// Pops the next event and handles it unless it is a node's turn, which is returned
    /// for the caller to run: `Some(Some(node))` a turn, `Some(None)` another event,
    /// `None` an empty queue.
    pub(super) fn pop_due_turn(&mut self) -> Option<Option<usize>> {
        let scheduled = self.queue.pop()?;
        self.now = self.now.max(scheduled.at);
        match scheduled.event {
            Event::Turn { node, epoch } => {
                let endpoint = &mut self.endpoints[node];
                if endpoint.epoch != epoch || endpoint.next_turn != Some(scheduled.at) {
                    return Some(None); // superseded by an earlier turn, or the node crashed
                }
                endpoint.next_turn = None;
                Some(Some(node))
            }
            Event::Connect { conn } => {
                self.connect(conn);
                Some(None)
            }
            Event::Arrive {
                conn,
                direction,
                payload,
            } => {
                self.arrive(conn, direction, payload);
                Some(None)
            }
            Event::HoldTimeout { conn, direction } => {
                let still_held = self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| !c.held[direction].is_empty());
                if still_held {
                    self.break_conn(conn);
                }
                Some(None)
            }
            Event::Notify { node, epoch, input } => {
                if self.endpoints[node].epoch == epoch {
                    let input = match input {
                        NotifyInput::LinkDown(to) => Input::Link {
                            to,
                            link: Link::Down,
                        },
                        NotifyInput::Closed(conn) => Input::Closed { conn },
                    };
                    self.push_input(node, input);
                }
                Some(None)
            }
        }
    }

    fn open_link(&mut self, client: usize, dest: Dest, frame: Bytes) {
        let id = self.next_conn;
        self.next_conn += 1;
        let client_peer = self.endpoints[client]
            .peer
            .clone()
            .expect("a live node has a peer");
        self.conns.insert(
            id,
            Conn {
                client,
                server: None,
                dest,
                client_peer,
                server_peer: None,
                state: ConnState::Connecting {
                    queued: vec![frame],
                },
                last_arrival: [0; 2],
                held: [VecDeque::new(), VecDeque::new()],
            },
        );
        self.endpoints[client].links.insert(dest, id);
        let not_before = self.endpoints[client]
            .backoff
            .get(&dest)
            .map_or(0, |b| b.next_attempt_at);
        let at = self.now.max(not_before) + self.latency();
        self.schedule(at, Event::Connect { conn: id });
    }

    fn connect(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (client, dest) = (conn.client, conn.dest);
        let server = self
            .by_addr
            .get(&dest.addr)
            .copied()
            .filter(|s| self.endpoints[*s].alive);
        let Some(server) = server else {
            // Refused: nobody listens there.
            self.fail_connect(id);
            return;
        };
        if self.blocked.contains(&(client, server)) || self.blocked.contains(&(server, client)) {
            // The SYN (or its answer) is lost: the connect times out.
            let at = self.now + nanos(self.config.link_timeout);
            self.schedule(
                at,
                Event::HoldTimeout {
                    conn: id,
                    direction: TO_SERVER,
                },
            );
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.held[TO_SERVER].push_back(Payload::Hello);
            }
            return;
        }
        self.endpoints[client].backoff.remove(&dest);
        self.endpoints[server].inbound.insert(id);
        let server_peer = self.endpoints[server].peer.clone();
        let conn = self.conns.get_mut(&id).expect("checked above");
        conn.server = Some(server);
        conn.server_peer = server_peer;
        let ConnState::Connecting { queued } = std::mem::replace(&mut conn.state, ConnState::Open)
        else {
            return;
        };
        self.transmit(id, TO_CLIENT, Payload::Hello);
        for frame in queued {
            self.transmit(id, TO_SERVER, Payload::Frame(frame));
        }
    }

    fn fail_connect(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (client, dest) = (conn.client, conn.dest);
        let backoff = self.endpoints[client].backoff.get(&dest).copied();
        let delay = backoff.map_or(self.config.backoff_min, |b| {
            (b.delay * 2).min(self.config.backoff_max)
        });
        let next_attempt_at = self.now + nanos(delay);
        self.endpoints[client].backoff.insert(
            dest,
            Backoff {
                next_attempt_at,
                delay,
            },
        );
        self.break_conn(id);
    }

    fn transmit(&mut self, id: u64, direction: usize, payload: Payload) {
        if matches!(payload, Payload::Frame(_))
            && self.config.drop_rate > 0.0
            && self.rng.random_bool(self.config.drop_rate)
        {
            // A lost segment that is never retransmitted: the connection eventually breaks.
            self.stats.frames_dropped += 1;
            self.break_conn(id);
            return;
        }
        let mut latency = self.latency();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(server) = conn.server {
            let path = if direction == TO_SERVER {
                (conn.client, server)
            } else {
                (server, conn.client)
            };
            latency += self.extra_latency.get(&path).copied().unwrap_or(0);
        }
        let at = (self.now + latency).max(conn.last_arrival[direction]);
        conn.last_arrival[direction] = at;
        self.schedule(
            at,
            Event::Arrive {
                conn: id,
                direction,
                payload,
            },
        );
    }

    fn arrive(&mut self, id: u64, direction: usize, payload: Payload) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(server) = conn.server else { return };
        let (from, to) = if direction == TO_SERVER {
            (conn.client, server)
        } else {
            (server, conn.client)
        };
        if !conn.held[direction].is_empty() || self.blocked.contains(&(from, to)) {
            let first = conn.held[direction].is_empty();
            conn.held[direction].push_back(payload);
            if first {
                let at = self.now + nanos(self.config.link_timeout);
                self.schedule(
                    at,
                    Event::HoldTimeout {
                        conn: id,
                        direction,
                    },
                );
            }
            return;
        }
        self.deliver(id, direction, payload);
    }

    fn deliver(&mut self, id: u64, direction: usize, payload: Payload) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let Some(server) = conn.server else { return };
        let input = match payload {
            Payload::Hello => Input::Link {
                to: conn.dest,
                link: Link::Up,
            },
            Payload::Frame(bytes) => {
                self.stats.frames_delivered += 1;
                let inbound = direction == TO_SERVER;
                let peer = if inbound {
                    conn.client_peer.clone()
                } else {
                    conn.server_peer
                        .clone()
                        .expect("an open connection knows its server")
                };
                Input::Frame {
                    conn: ConnId(id),
                    inbound,
                    peer,
                    bytes,
                }
            }
        };
        let to = if direction == TO_SERVER {
            server
        } else {
            conn.client
        };
        self.push_input(to, input);
    }

    /// Breaks a connection: what is in flight is lost; both live ends hear of it.
    pub(super) fn break_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.stats.connections_broken += 1;
        let client = &mut self.endpoints[conn.client];
        if client.links.get(&conn.dest) == Some(&id) {
            client.links.remove(&conn.dest);
        }
        let at = self.now + nanos(self.config.latency_min);
        let (client_alive, client_epoch) = (client.alive, client.epoch);
        if client_alive {
            let input = NotifyInput::LinkDown(conn.dest);
            self.schedule(
                at,
                Event::Notify {
                    node: conn.client,
                    epoch: client_epoch,
                    input,
                },
            );
        }
        if let Some(server) = conn.server {
            let endpoint = &mut self.endpoints[server];
            endpoint.inbound.remove(&id);
            if endpoint.alive {
                let epoch = endpoint.epoch;
                let input = NotifyInput::Closed(ConnId(id));
                self.schedule(
                    at,
                    Event::Notify {
                        node: server,
                        epoch,
                        input,
                    },
                );
            }
        }
    }

    pub(super) fn set_extra_latency(&mut self, from: usize, to: usize, extra: Duration) {
        if extra.is_zero() {
            self.extra_latency.remove(&(from, to));
        } else {
            self.extra_latency.insert((from, to), nanos(extra));
        }
    }

    pub(super) fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    pub(super) fn unblock(&mut self, from: usize, to: usize) {
        if self.blocked.remove(&(from, to)) {
            self.release_held();
        }
    }

    pub(super) fn heal(&mut self) {
        self.blocked.clear();
        self.release_held();
    }

    /// Delivers, in order, frames held on directions no longer blocked.
    fn release_held(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for direction in [TO_SERVER, TO_CLIENT] {
                let Some(conn) = self.conns.get_mut(&id) else {
                    break;
                };
                let Some(server) = conn.server else {
                    // A connect held by a partition: retry it now.
                    if direction == TO_SERVER && !conn.held[TO_SERVER].is_empty() {
                        let (client, dest) = (conn.client, conn.dest);
                        let server = self.by_addr.get(&dest.addr).copied();
                        let free = server.is_none_or(|s| {
                            !self.blocked.contains(&(client, s))
                                && !self.blocked.contains(&(s, client))
                        });
                        if free {
                            conn.held[TO_SERVER].clear();
                            self.connect(id);
                        }
                    }
                    break;
                };
                let (from, to) = if direction == TO_SERVER {
                    (conn.client, server)
                } else {
                    (server, conn.client)
                };
                if self.blocked.contains(&(from, to)) {
                    continue;
                }
                let held: Vec<Payload> = conn.held[direction].drain(..).collect();
                for payload in held {
                    self.deliver(id, direction, payload);
                }
            }
        }
    }

    pub(super) fn transport(&mut self, node: usize) -> SimTransport<'_> {
        SimTransport { net: self, node }
    }
}

/// The [`Transport`] a node's core uses during its turn.
pub(super) struct SimTransport<'a> {
    net: &'a mut Net,
    node: usize,
}

impl SimTransport<'_> {
    pub(super) fn count_decode_error(&mut self) {
        self.net.stats.decode_errors += 1;
    }

    pub(super) fn close_conn(&mut self, conn: ConnId) {
        self.net.break_conn(conn.0);
    }
}

impl Transport for SimTransport<'_> {
    fn send(&mut self, to: Dest, frame: &[u8]) {
        let frame = Bytes::copy_from_slice(frame);
        let Some(&id) = self.net.endpoints[self.node].links.get(&to) else {
            self.net.open_link(self.node, to, frame);
            return;
        };
        let queue_max = self.net.config.connecting_queue_max;
        let conn = self
            .net
            .conns
            .get_mut(&id)
            .expect("links name live connections");
        match &mut conn.state {
            ConnState::Connecting { queued } if queued.len() >= queue_max => {
                self.net.break_conn(id);
            }
            ConnState::Connecting { queued } => queued.push(frame),
            ConnState::Open => self.net.transmit(id, TO_SERVER, Payload::Frame(frame)),
        }
    }

    fn peer_name(&self, conn: ConnId) -> Option<&str> {
        let conn = self.net.conns.get(&conn.0)?;
        let server = conn.server?;
        let other = if conn.client == self.node {
            server
        } else {
            conn.client
        };
        Some(self.net.endpoints[other].node_id.as_str())
    }

    fn reply(&mut self, conn: ConnId, frame: &[u8]) {
        let Some(state) = self.net.conns.get(&conn.0) else {
            return;
        };
        let direction = if state.client == self.node {
            TO_SERVER
        } else {
            TO_CLIENT
        };
        self.net.transmit(
            conn.0,
            direction,
            Payload::Frame(Bytes::copy_from_slice(frame)),
        );
    }

    fn close(&mut self, conn: ConnId) {
        self.net.break_conn(conn.0);
    }
}
