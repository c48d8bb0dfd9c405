//! The `mesh` command line's library: everything the binary and the tests share.

pub mod demo;
pub mod local;
