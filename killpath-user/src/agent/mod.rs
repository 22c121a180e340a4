//! The agent: owns the journal, the target registry and the kernel maps,
//! and serves the socket. Everything that changes state goes through
//! [`State::execute`], which journals intent before and result after.
mod anchor;
mod audit;
mod caller;
mod confinement;
mod confinement_unlocked;
mod deadman;
pub mod defaults;
mod degrade;
mod dispatch;
mod drill;
pub mod enforcer;
mod escalate;
mod escape;
mod isolate;
mod lifecycle;
mod metrics;
mod named;
mod pending;
mod probe;
mod raise;
mod readiness;
mod recovery;
mod restore;
mod ring;
pub mod server;
mod status;
mod stop;
mod stop_first;
mod stop_marks;
mod stop_thread;
mod tamper;
mod throttle;
mod trail;
mod trail_anchor;
mod trail_read;
mod transaction;
mod tripwire;

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use crate::state_dir::{AGENT_FILE, FALLBACK_JOURNAL_FILE, JOURNAL_FILE};
use crate::{
    error::{Error, Result},
    journal::Journal,
    kernel::cgroup::{self, Cgroup},
    target::Registry,
};
pub use caller::Caller;
pub use enforcer::Enforcer;
use transaction::Done;

/// How the agent was started; persisted to `agent.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// cgroup under which `run`/`adopt --pid` create target cgroups.
    pub cgroup_parent: PathBuf,
    /// Group (besides root) allowed to change anything.
    pub group: Option<u32>,
    /// Shell command run for every alert, with the alert as JSON on stdin.
    #[serde(default)]
    pub alert_hook: Option<String>,
    /// Each level's defaults for `escalate` (from `--config FILE`).
    #[serde(default)]
    pub escalation: crate::agent::defaults::Escalation,
    /// HMAC key for journal records (`--journal-key`): root-only, outside the state dir.
    #[serde(default)]
    pub journal_key: Option<PathBuf>,
    /// Group an approver of pending actions must hold, unless a proposal names its own.
    #[serde(default)]
    pub approver_group: Option<u32>,
    /// Address serving Prometheus metrics (`--metrics`), if any.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Bound on each target's trail file (`--trail-max-bytes`); None: the default.
    #[serde(default)]
    pub trail_max_bytes: Option<u64>,
}

impl AgentConfig {
    /// Default cgroup parent: `<parent of the agent's own cgroup>/killpath`,
    /// so targets are siblings of the agent, never its ancestors.
    pub fn default_cgroup_parent() -> Result<PathBuf> {
        let mount = cgroup::cgroup2_mount()?;
        let own = cgroup::cgroup_of(std::process::id() as i32)?;
        let own_abs = mount.join(own.trim_start_matches('/'));
        let parent = if own_abs == mount { mount.clone() } else { own_abs.parent().map(Path::to_path_buf).unwrap_or(mount.clone()) };
        Ok(parent.join("killpath"))
    }
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Denial counters at one moment: (cgroup id, capability index, count).
pub type DenialSnapshot = (std::time::Instant, Vec<(u64, u32, u64)>);

/// Everything the agent owns. Guarded by one mutex: commands are applied
/// one at a time, in journal order.
pub struct State {
    pub config: AgentConfig,
    pub registry: Registry,
    pub enforcer: Enforcer,
    pub journal: Journal,
    pub cgroup_mount: PathBuf,
    /// Alerts and sampled denials, for `events` subscribers.
    pub events: tokio::sync::broadcast::Sender<serde_json::Value>,
    /// Periodic snapshots of denial counters.
    pub denial_history: std::collections::VecDeque<DenialSnapshot>,
    /// Resumes tasks paused by pace ceilings.
    pub pacer: throttle::Pacer,
    /// Periodic snapshots of throttle bucket counts.
    pub throttle_history: throttle::History,
    /// Running drills, by id: what to put back if they end badly.
    pub drills: std::collections::HashMap<u64, drill::Snapshot>,
    /// The journal's head as last published (events subscribers read it).
    pub journal_head: anchor::SharedHead,
    /// Actions waiting for approval (`pending.json`).
    pub pending: pending::Store,
    /// Tripwire rules, their firings, and the agent-evaluated ones' history.
    pub tripwires: tripwire::Tripwires,
    /// The activity trail's open files (`agent::trail`).
    pub trail: trail::Trails,
    /// Reads a stopped target's marks beside the stop (`stop_marks`).
    pub stop_marks: Option<stop_marks::MarkReader>,
}

impl State {
    /// Opens (or recovers) everything under the configured state dir.
    pub fn open(config: AgentConfig) -> Result<Self> {
        // The key is checked before anything is written: a key that others
        // can read, or that sits in the state dir, protects nothing.
        let key = match &config.journal_key {
            Some(path) => Some(crate::journal::Key::load_for_agent(path, &config.state_dir).map_err(|e| Error::InvalidRequest(e.to_string()))?),
            None => None,
        };
        std::fs::create_dir_all(&config.state_dir).map_err(Error::io(format!("creating {}", config.state_dir.display())))?;
        let cgroup_mount = cgroup::cgroup2_mount()?;
        Cgroup::new(&config.cgroup_parent).create()?;
        let (mut journal, recovery) = Journal::open_with(&config.state_dir.join(JOURNAL_FILE), key)?;
        let mut enforcer = Enforcer::open(&config.pin_dir)?;
        if let Err(e) = enforcer.protect_self(&config.state_dir) {
            tracing::warn!("self-protection does not cover the agent and its files: {e}");
        }
        let registry = Registry::open(&config.state_dir)?;
        let pending = pending::Store::load(&config.state_dir)?;
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let journal_head = std::sync::Arc::new(std::sync::Mutex::new(journal.head()));
        journal.set_observer(anchor::observer(events.clone(), journal_head.clone(), config.alert_hook.clone()));
        transaction::reserve_journal(&mut journal);
        let pacer = throttle::Pacer::start(enforcer.throttle_events.take(), enforcer.pacer_maps.take(), cgroup_mount.clone());
        let stop_marks = enforcer.maps.members.as_ref().and_then(stop_marks::MarkReader::start);
        let mut state = Self {
            config,
            registry,
            enforcer,
            journal,
            cgroup_mount,
            events,
            denial_history: Default::default(),
            pacer,
            throttle_history: Default::default(),
            drills: Default::default(),
            journal_head,
            pending,
            tripwires: Default::default(),
            trail: Default::default(),
            stop_marks,
        };
        state.recover(recovery)?;
        if let Some(m) = state.enforcer.maps.members.as_mut() {
            m.set_agent(std::process::id());
        }
        state.mark_all_targets();
        state.trail_sync();
        // Tripwire rules re-armed (a bad rule in --config stops the start),
        // before raises are adopted so they name their rule.
        state.load_tripwires()?;
        // Raises the kernel made while no agent ran (a tripwire, a lease).
        state.adopt_kernel_raises();
        // Dead-man leases: read back from the kernel (the source of truth).
        if let Err(e) = state.sync_leases() {
            tracing::warn!("dead-man leases: {e}");
        }
        // Every feature has re-armed its targets by now (tripwires and leases just above).
        if let Err(e) = state.enforcer.maps.forget_previous_armed() {
            tracing::warn!("dropping the previous agent's armed counts: {e}");
        }
        let cfg = serde_json::to_vec_pretty(&state.config).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        std::fs::write(state.config.state_dir.join(AGENT_FILE), cfg).map_err(Error::io("writing agent.json"))?;
        Ok(state)
    }
}

/// Runs the agent until SIGINT/SIGTERM. Enforcement outlives the agent:
/// exiting (or being killed) detaches nothing.
pub fn run(config: AgentConfig) -> Result<()> {
    // Before any thread starts (nice is per thread, inherited).
    crate::kernel::priority::raise();
    // Before anything is loaded: an address in use fails the start at once.
    let metrics = config.metrics.map(metrics::bind).transpose()?;
    let state = State::open(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| {
            crate::kernel::priority::set_agent_nice();
        })
        .build()
        .map_err(Error::io("starting the async runtime"))?;
    rt.block_on(async move {
        let listener = server::bind(&state)?;
        tracing::info!(socket = %state.config.socket.display(), state_dir = %state.config.state_dir.display(), "agent ready");
        let socket = state.config.socket.clone();
        let mut state = state;
        let ring = state.enforcer.denial_events.take();
        let escapes = state.enforcer.escape_events.take();
        let crossings = state.enforcer.tripwire_events.take();
        let trail_ring = state.enforcer.trail_events.take();
        let state = std::sync::Arc::new(std::sync::Mutex::new(state));
        if let Some(rb) = ring {
            tokio::spawn(server::denial_reader(rb, state.clone()));
        }
        if let Some(rb) = escapes {
            tokio::spawn(escape::escape_reader(rb, state.clone()));
        }
        tokio::spawn(degrade::denial_sampler(state.clone()));
        tokio::spawn(throttle::rate_sampler(state.clone()));
        tokio::spawn(tamper::link_watch(state.clone()));
        tokio::spawn(raise::raise_watch(state.clone()));
        tokio::spawn(pending::watch(state.clone()));
        if let Some(rb) = crossings {
            tokio::spawn(tripwire::crossing_reader(rb, state.clone()));
        }
        tokio::spawn(tripwire::eval_watch(state.clone()));
        if let Some(rb) = trail_ring {
            tokio::spawn(trail::event_reader(rb, state.clone()));
        }
        tokio::spawn(trail::snapshot_watch(state.clone()));
        tokio::spawn(deadman::lease_watch(state.clone()));
        if let Some(l) = metrics {
            tokio::spawn(metrics::serve(l, state.clone()));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(Error::io("installing SIGTERM handler"))?;
        // Programs attached (State::open), socket listening, readers running.
        readiness::ready(&socket);
        tokio::select! {
            () = server::serve(listener, state.clone()) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        readiness::stopping();
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = crate::journal::Entry::new(crate::journal::Actor::Source { source: "agent".into() }, crate::journal::Phase::Event, "agent-exit");
        s.journal.append(e)?;
        tracing::info!("agent exiting; enforcement stays pinned in the kernel");
        Ok(())
    })
}
