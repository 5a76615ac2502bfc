//! What the mesh agrees on: who is in it ([`membership`]), which apps it
//! runs ([`desired`]) and who may decide that ([`trust`]). Pure state
//! machines with injected clocks; the network layer feeds them.

pub mod desired;
pub mod membership;
pub mod trust;
pub mod view;
