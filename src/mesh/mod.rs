//! What the mesh agrees on: who is in it ([`membership`]), which apps it
//! runs ([`desired`]), who may decide that ([`trust`]), and the snapshot of
//! the peers that every layer above reads ([`view`]). State machines
//! without I/O, handed the time of each event: the network layer feeds
//! them and carries what they publish.

pub mod desired;
pub mod labels;
pub mod membership;
pub mod placement;
pub mod record;
pub mod sim;
pub mod swim;
pub mod trust;
pub mod view;
