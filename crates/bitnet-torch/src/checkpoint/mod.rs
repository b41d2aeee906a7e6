//! Checkpoint I/O (in progress).
