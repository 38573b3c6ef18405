//! The view service role: decides which server is primary and which is backup.
//!
//! Rules (lab 2 §1, DESIGN.md §5), each cited where it is implemented:
//! - servers ping every ping interval; a server is dead after `dead_pings` missed intervals;
//! - the first ping into view 0 makes view 1 with the pinger as primary;
//! - the view changes only after the current view's primary (its named incarnation) pinged
//!   the current view number: the ack rule;
//! - only the previous backup may be promoted; an idle server becomes backup, never primary;
//! - a member restarted when a ping comes from another incarnation at its address, or when it
//!   pings 0 after having pinged a non-zero view number since it was named; a restart is
//!   handled like a death, by one view change once the view is acknowledged — never as a
//!   flag kept for later;
//! - dead idle servers and dead backups are dropped; a client's GetView is not a ping;
//! - a ping speaks for its sender only: its server address and incarnation must be the ones
//!   the sender's link carries (from its hello), or it is refused, never applied.

mod stored;

use std::collections::BTreeMap;
use std::time::Duration;

pub use stored::{STORED_QUEUE_MAX, StoreSettings, StoredRecord};

use proto::viewservice::{GetViewReply, Member, PingReply, PingRequest, View};
use proto::{Addr, Incarnation, Message};
use runtime::store::StoreResult;
use runtime::{Ctx, MonoTime, Origin, Role};

/// Timing of the view service and its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewTiming {
    /// Interval between pings.
    pub ping_interval: Duration,
    /// Missed intervals after which a server is dead.
    pub dead_pings: u32,
}

impl Default for ViewTiming {
    fn default() -> ViewTiming {
        ViewTiming {
            ping_interval: Duration::from_millis(100),
            dead_pings: 5,
        }
    }
}

impl ViewTiming {
    /// How long a server may stay silent before it is dead.
    pub fn dead_after(&self) -> Duration {
        self.ping_interval * self.dead_pings
    }
}

/// The view service's timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViewServiceTimer {
    /// Periodic check for dead servers.
    Tick,
}

/// What the view service knows of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerState {
    incarnation: Incarnation,
    last_ping: MonoTime,
    /// Pinged a non-zero view number since it was last named in a view.
    pinged_nonzero: bool,
}

/// The servers' ping records and the decisions made from them: the part of the view
/// service both modes share (embedded and etcd-backed).
#[derive(Debug, Default)]
struct Servers {
    map: BTreeMap<Addr, ServerState>,
}

/// A view change the current state calls for: the new view's primary and backup.
type Proposal = (Option<Member>, Option<Member>);

impl Servers {
    fn alive(&self, timing: &ViewTiming, now: MonoTime, addr: Addr) -> bool {
        self.map
            .get(&addr)
            .is_some_and(|server| now.since(server.last_ping) < timing.dead_after())
    }

    /// Whether `member` (as named by the view) is alive and the same incarnation. In a
    /// grace period (a new leader's first dead time, or one after a stall) no member is
    /// declared dead for silence; another incarnation at its address still counts.
    fn member_ok(&self, timing: &ViewTiming, now: MonoTime, member: Member, grace: bool) -> bool {
        let state = self.map.get(&member.addr);
        if grace {
            return state.is_none_or(|s| s.incarnation == member.incarnation);
        }
        self.alive(timing, now, member.addr)
            && state.is_some_and(|s| s.incarnation == member.incarnation)
    }

    /// Records `ping` (already validated) at `now` against `view`; returns whether it is a
    /// Ping(0) restart of a member (V5).
    fn record_ping(&mut self, view: &View, ping: &PingRequest, now: MonoTime) -> bool {
        let previous = self.map.get(&ping.server).copied();
        let is_member = view.primary.map(|m| m.addr) == Some(ping.server)
            || view.backup.map(|m| m.addr) == Some(ping.server);
        // Lab rule: Ping(0) from a member that had pinged a non-zero view since it was named
        // means it restarted. A fresh server pings 0 until it adopts a view, so a slow first
        // reply is not a restart. (A new incarnation at the address is the other sign; it
        // shows in `member_ok` at every ping and tick, so it needs no memory either.)
        let zero_restart = is_member
            && ping.viewnum == 0
            && previous.is_some_and(|s| s.pinged_nonzero && s.incarnation == ping.incarnation);
        let same_incarnation = previous.is_some_and(|s| s.incarnation == ping.incarnation);
        let state = ServerState {
            incarnation: ping.incarnation,
            last_ping: now,
            pinged_nonzero: ping.viewnum != 0
                || (same_incarnation
                    && !zero_restart
                    && previous.is_some_and(|s| s.pinged_nonzero)),
        };
        self.map.insert(ping.server, state);
        zero_restart
    }

    /// Moves every ping record `gap` later (not past `now`): the loop was stalled for
    /// `gap`, and silence then does not count.
    fn shift(&mut self, gap: Duration, now: MonoTime) {
        for state in self.map.values_mut() {
            let shifted = state.last_ping.plus(gap);
            state.last_ping = shifted.min(now);
        }
    }

    /// Another view-service node heard `server` at `at` (a relay, V20).
    fn heard_from_relay(&mut self, server: Member, at: MonoTime) {
        match self.map.get_mut(&server.addr) {
            Some(state) if state.incarnation == server.incarnation => {
                state.last_ping = state.last_ping.max(at);
            }
            Some(state) if at <= state.last_ping => {}
            _ => {
                self.map.insert(
                    server.addr,
                    ServerState {
                        incarnation: server.incarnation,
                        last_ping: at,
                        pinged_nonzero: false,
                    },
                );
            }
        }
    }

    /// The members of a new view have not pinged it yet.
    fn named(&mut self, view: &View) {
        for member in [view.primary, view.backup].into_iter().flatten() {
            if let Some(state) = self.map.get_mut(&member.addr) {
                state.pinged_nonzero = false;
            }
        }
    }

    /// Dead idle servers are forgotten; members stay known until a view drops them.
    fn forget_dead_idle(&mut self, timing: &ViewTiming, view: &View, now: MonoTime) {
        let dead_after = timing.dead_after();
        self.map.retain(|addr, state| {
            let member = view.primary.map(|m| m.addr) == Some(*addr)
                || view.backup.map(|m| m.addr) == Some(*addr);
            member || now.since(state.last_ping) < dead_after
        });
    }

    /// The one view change the state calls for, given an acknowledged view `view` with a
    /// primary. `restarted` is a member that just pinged 0: it counts as failed.
    fn decide(
        &self,
        timing: &ViewTiming,
        view: &View,
        now: MonoTime,
        restarted: Option<Addr>,
        grace: bool,
    ) -> Option<Proposal> {
        let primary = view.primary?;
        let ok = |member: Member| {
            Some(member.addr) != restarted && self.member_ok(timing, now, member, grace)
        };
        let primary_ok = ok(primary);
        let backup_ok = view.backup.map(ok);
        match (primary_ok, backup_ok) {
            (true, Some(true)) => None,
            (true, Some(false)) => {
                // Backup dead or restarted: an idle server replaces it, or none.
                let failed = view.backup?;
                let idle = self.pick_idle(timing, now, primary.addr, failed);
                let idle = idle.or_else(|| self.pick_restarted(timing, now, restarted));
                Some((Some(primary), idle))
            }
            (true, None) => {
                let idle = self.pick_idle(timing, now, primary.addr, primary)?;
                Some((Some(primary), Some(idle)))
            }
            (false, Some(true)) => {
                // Only the previous backup may be promoted; an idle server becomes backup.
                let backup = view.backup?;
                let idle = self.pick_idle(timing, now, backup.addr, primary);
                let idle = idle.or_else(|| self.pick_restarted(timing, now, restarted));
                Some((Some(backup), idle))
            }
            // Primary dead and no usable backup: an idle server may never become primary;
            // the service stalls (the lab's accepted limit).
            (false, _) => None,
        }
    }

    /// The member that just restarted, now alive and idle, as a backup candidate (the
    /// handout's example names the restarted S1 backup of the very next view).
    fn pick_restarted(
        &self,
        timing: &ViewTiming,
        now: MonoTime,
        restarted: Option<Addr>,
    ) -> Option<Member> {
        let addr = restarted?;
        let state = self.map.get(&addr)?;
        self.alive(timing, now, addr).then_some(Member {
            addr,
            incarnation: state.incarnation,
        })
    }

    /// A live server, as its current incarnation, that is neither the primary-to-be nor the
    /// member that just failed (a restarted process at that address is a new server and may
    /// be chosen); lowest address first.
    fn pick_idle(
        &self,
        timing: &ViewTiming,
        now: MonoTime,
        primary: Addr,
        failed: Member,
    ) -> Option<Member> {
        self.map
            .iter()
            .map(|(addr, state)| Member {
                addr: *addr,
                incarnation: state.incarnation,
            })
            .filter(|member| member.addr != primary && *member != failed)
            .find(|member| self.alive(timing, now, member.addr))
    }

    /// Any live server, lowest address first: the primary of view 1 in the etcd mode.
    fn any_alive(&self, timing: &ViewTiming, now: MonoTime) -> Option<Member> {
        self.map
            .iter()
            .find(|(addr, _)| self.alive(timing, now, **addr))
            .map(|(addr, state)| Member {
                addr: *addr,
                incarnation: state.incarnation,
            })
    }
}

/// The view service.
#[derive(Debug)]
pub struct ViewService {
    timing: ViewTiming,
    /// The current view (embedded mode); the last view read back from etcd (etcd mode).
    view: View,
    /// Whether the current view is acknowledged by its primary (embedded mode).
    acked: bool,
    servers: Servers,
    /// The etcd mode's state; `None` in the embedded mode.
    stored: Option<Box<stored::Stored>>,
    /// Views made so far (for `pbkv info` and tests).
    view_changes: u64,
    /// Pings refused because they named another server or incarnation than their link's.
    refused_pings: u64,
    /// Refusal warnings, rate-limited.
    warnings: runtime::warn::Warnings,
}

impl ViewService {
    /// An embedded view service with `timing`: it decides and keeps views in memory.
    pub fn new(timing: ViewTiming) -> ViewService {
        ViewService {
            timing,
            view: View::initial(Incarnation(0)),
            acked: false,
            servers: Servers::default(),
            stored: None,
            view_changes: 0,
            refused_pings: 0,
            warnings: runtime::warn::Warnings::default(),
        }
    }

    /// A view-service node whose views live in a store (etcd) as `settings` say: one of
    /// several, only the leader decides (docs/protocol.md, "View service in etcd").
    pub fn with_store(timing: ViewTiming, settings: StoreSettings) -> ViewService {
        let mut service = ViewService::new(timing);
        service.stored = Some(Box::new(stored::Stored::new(settings)));
        service
    }

    /// The current view (etcd mode: the last one read back from the store).
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether the current view is acknowledged by its primary.
    pub fn acked(&self) -> bool {
        match &self.stored {
            Some(stored) => stored.acked(),
            None => self.acked,
        }
    }

    /// Pings refused so far (an identity other than the sender's link's).
    pub fn refused_pings(&self) -> u64 {
        self.refused_pings
    }

    /// Views this node made so far.
    pub fn view_changes(&self) -> u64 {
        self.view_changes
    }

    /// In the etcd mode: whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.stored
            .as_ref()
            .is_some_and(|stored| stored.is_leader())
    }

    /// In the etcd mode: every view this node answered with, by number (the simulator's
    /// one-view-per-number check across nodes).
    pub fn answered_views(&self) -> Vec<View> {
        self.stored
            .as_ref()
            .map(|stored| stored.answered.values().copied().collect())
            .unwrap_or_default()
    }

    /// State for `pbkv info`, as JSON.
    pub fn info(&self) -> serde_json::Value {
        let mut info = serde_json::json!({
            "role": "viewservice",
            "view": crate::view_json(&self.view),
            "acked": self.acked(),
            "servers": self.servers.map.len(),
            "view_changes": self.view_changes,
            "refused_pings": self.refused_pings,
        });
        if let (Some(stored), Some(object)) = (&self.stored, info.as_object_mut()) {
            object.insert("store".into(), stored.info());
        }
        info
    }

    /// Whether `ping` speaks for the server whose link it came on: the address and
    /// incarnation it names are the ones the sender's hello gave (authenticated by the link
    /// layer). Anything else could make a view name a server that never pinged.
    fn validate_ping(origin: &Origin, ping: &PingRequest) -> Result<(), String> {
        if origin.addr != Some(ping.server) {
            let addr = origin
                .addr
                .map_or("no address".to_string(), |addr| addr.to_string());
            return Err(format!("names server {}, its link {addr}", ping.server));
        }
        if origin.incarnation != ping.incarnation {
            return Err(format!(
                "names incarnation {}, its link {}",
                ping.incarnation, origin.incarnation
            ));
        }
        Ok(())
    }

    fn on_ping(&mut self, ctx: &mut Ctx<ViewServiceTimer>, origin: &Origin, ping: PingRequest) {
        if let Err(why) = ViewService::validate_ping(origin, &ping) {
            self.refused_pings += 1;
            let line = format!("viewservice: refused a ping from {}: {why}", origin.node);
            self.warnings.warn("viewservice-refused", ctx.now(), &line);
            return;
        }
        if self.stored.is_some() {
            self.on_stored_ping(ctx, origin, ping);
            return;
        }
        let now = ctx.now();
        let member = Member {
            addr: ping.server,
            incarnation: ping.incarnation,
        };
        let zero_restart = self.servers.record_ping(&self.view, &ping, now);
        if zero_restart {
            ctx.event(format!("server {} restarted (pinged 0)", ping.server));
        }
        if self.view.viewnum == 0 {
            // Lab rule: the very first view takes any server as primary.
            self.change_view(ctx, Some(member), None);
        } else if self.view.is_primary(member) && ping.viewnum == self.view.viewnum {
            // The ack rule: only the named primary incarnation's ping acknowledges.
            self.acked = true;
        }
        // A Ping(0) restart is acted on now, by at most one view change, or not at all if
        // the view is not acknowledged: never remembered for later.
        let restarted = zero_restart.then_some(ping.server);
        self.decide(ctx, restarted);
        ctx.reply(origin, PingReply { view: self.view });
    }

    /// Makes the one view change the current state calls for, if the view is acknowledged.
    /// `restarted` is a member that just pinged 0: it counts as failed.
    fn decide(&mut self, ctx: &mut Ctx<ViewServiceTimer>, restarted: Option<Addr>) {
        if !self.acked || self.view.viewnum == 0 {
            return; // The ack rule: never more than one view ahead of the primary.
        }
        let proposal = self
            .servers
            .decide(&self.timing, &self.view, ctx.now(), restarted, false);
        if let Some((primary, backup)) = proposal {
            self.change_view(ctx, primary, backup);
        }
    }

    fn change_view(
        &mut self,
        ctx: &mut Ctx<ViewServiceTimer>,
        primary: Option<Member>,
        backup: Option<Member>,
    ) {
        self.view = View {
            viewnum: self.view.viewnum + 1,
            primary,
            backup,
            service: ctx.incarnation(),
        };
        self.acked = false;
        self.view_changes += 1;
        self.servers.named(&self.view);
        // The host logs the change at info (old and new view on one line).
        ctx.event(format!("view {}", crate::view_text(&self.view)));
    }

    fn on_tick(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        if self.stored.is_some() {
            self.on_stored_tick(ctx);
            return;
        }
        let now = ctx.now();
        self.servers.forget_dead_idle(&self.timing, &self.view, now);
        self.decide(ctx, None);
        ctx.set_timer(ViewServiceTimer::Tick, self.timing.ping_interval);
    }

    fn on_get_view(&mut self, ctx: &mut Ctx<ViewServiceTimer>, origin: &Origin) {
        if self.stored.is_some() {
            self.on_stored_get_view(ctx, origin);
            return;
        }
        ctx.reply(origin, GetViewReply { view: self.view });
    }

    fn check(&self) {
        check_view(&self.view);
        if let Some(stored) = &self.stored {
            stored.check();
        }
    }
}

/// The view service's own invariants on a view it holds.
fn check_view(view: &View) {
    if let (Some(primary), Some(backup)) = (view.primary, view.backup) {
        assert_ne!(
            primary.addr, backup.addr,
            "primary and backup are one server"
        );
    }
    assert!(
        view.primary.is_some() || view.backup.is_none(),
        "backup without primary"
    );
    assert!(
        view.viewnum == 0 || view.primary.is_some(),
        "a view without primary"
    );
}

impl Role for ViewService {
    type Timer = ViewServiceTimer;

    fn on_start(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        if self.stored.is_some() {
            self.on_stored_start(ctx);
            return;
        }
        self.view = View::initial(ctx.incarnation());
        ctx.set_timer(ViewServiceTimer::Tick, self.timing.ping_interval);
    }

    fn on_message(&mut self, ctx: &mut Ctx<ViewServiceTimer>, origin: &Origin, message: Message) {
        match message {
            Message::PingRequest(ping) => self.on_ping(ctx, origin, ping),
            Message::GetViewRequest(_) => self.on_get_view(ctx, origin),
            Message::PingRelayRequest(relay) if self.stored.is_some() => {
                self.on_ping_relay(ctx, origin, relay);
            }
            Message::PingRelayReply(_) => {}
            Message::InfoRequest(_) => {
                let json = self.info().to_string();
                ctx.reply(origin, proto::kv::InfoReply { json });
            }
            other => log::debug!("viewservice: ignoring {}", other.message_type()),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<ViewServiceTimer>, timer: ViewServiceTimer) {
        match timer {
            ViewServiceTimer::Tick => self.on_tick(ctx),
        }
    }

    fn on_store(&mut self, ctx: &mut Ctx<ViewServiceTimer>, id: u64, result: StoreResult) {
        self.on_store_result(ctx, id, result);
    }

    fn on_stop(&mut self, ctx: &mut Ctx<ViewServiceTimer>) {
        if self.stored.is_some() {
            self.on_stored_stop(ctx);
        }
    }

    fn busy(&self) -> bool {
        self.stored.as_deref().is_some_and(stored::Stored::busy)
    }

    fn check_invariants(&self) {
        self.check();
    }
}
