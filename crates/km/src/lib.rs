//! kagi's key manager as a deterministic, sans-I/O state machine.
//!
//! [`KeyManager`] takes [`Input`]s (link key blocks, peer messages, application calls, store
//! acknowledgements, timer ticks) and produces [`Action`]s (send, persist, answer). It has no
//! tokio, sockets or SQLite dependency: `kagi-node` drives it over real TLS and SQLite, and
//! `kagi-sim` drives the very same code on a virtual network with virtual time and injected
//! faults.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod advert_auth;
pub mod app;
mod blocks;
pub mod config;
mod deadline_queue;
mod delivery;
mod demand;
mod echo;
pub mod fixed_hash;
mod grants;
pub mod keybuf;
mod links;
mod linkstate;
mod liveness;
mod manager;
pub mod msgs;
mod outbox;
mod pace;
mod pending;
mod plan_slots;
mod pools;
mod quiet;
pub mod quota;
pub mod reconcile;
pub mod record;
mod relay;
mod reserve;
mod revoke;
pub mod route;
mod routing;
mod sorted_vec_map;
pub mod status;
mod supply;
pub mod time;

pub use advert_auth::{AdvertAuth, AdvertSignError};
pub use app::{AppCall, AppReply, DeliveredKey, KeyPaths, Refusal, SaeId, StatusInfo};
pub use config::{
    EncKeysShape, KmConfig, Limits, LimitsError, LinkGrantPolicy, LinkStatePolicy, LivenessPolicy,
    PeerScope, Policy, RoutePolicy, MAX_SLAVE_GRACE, MAX_SLAVE_KEY_LIFETIME,
};
pub use manager::{Action, Input, KeyManager, NodeStats, ReqId, WriteId};
pub use msgs::{AbortReason, LinkAdvert, NodeId, PeerMsg, ShareInfo, MAX_ADVERT_LINKS};
pub use quota::{Priority, QuotaConfig, QuotaError, QuotaOverrides, Reserve, SaeLimit, SaeUsage};
pub use record::{Record, RelayRoute, Snapshot};
pub use relay::RelayExposure;
pub use revoke::{MAX_OPEN_REVOKES, MAX_REVOKE_BACKOFF};
pub use route::{RouteConstraint, RouteRequest};
pub use status::{KmStatus, LinkStatus, PoolStatus};
pub use time::Instant;
