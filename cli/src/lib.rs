//! The `mesh` command line's library: everything the binary and the tests share.

pub mod check;
pub mod completion;
pub mod demo;
pub mod diagnostics;
pub mod inject;
pub mod install;
pub mod kube;
pub mod local;
pub mod manifest;
pub mod target;
pub mod version;
pub mod viz;
