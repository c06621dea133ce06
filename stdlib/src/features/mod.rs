//! Frozen features.
