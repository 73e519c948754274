//! The control layer: the network topology every node reads, and routing over it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod builtin;
pub mod disjoint;
mod link_fields;
pub mod name;
pub mod routing;
pub mod topology;

pub use disjoint::{disjoint_paths, PathQuery};
pub use name::{Name, NodeId};
pub use routing::Routes;
pub use topology::{
    check_https_url, DeviceLinkSpec, KeySource, LinkSpec, NodeSpec, PhotonLinkSpec, SaeIndex,
    Topology, TopologyError,
};
