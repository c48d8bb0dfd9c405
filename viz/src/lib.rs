//! Observability clients and views (not built yet).
//!
//! `mesh-viz` will own the tap and metrics clients, the aggregation of tap events into per-route
//! statistics, and the ratatui views behind `mesh viz top`, `tap`, `stat`, `edges` and
//! `dashboard`, with one code path above the transport for the in-cluster viz component and the
//! local mesh.
