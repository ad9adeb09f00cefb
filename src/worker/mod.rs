//! The worker (DESIGN 9): a process on any host that registers in the PostgreSQL database, claims
//! queued attempts whose placement its labels match, runs them with the engine's supervision,
//! holds a lease on each, and ships their output to the database. It decides nothing about runs:
//! the leading controller does.

pub mod ship;
