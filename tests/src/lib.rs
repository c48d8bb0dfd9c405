//! End-to-end tests of the mesh on network-namespace pods; see `tests/tests/`.
