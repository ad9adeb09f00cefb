//! Shipping a job's output to the database in chunks (filled in by the log-shipping work).
