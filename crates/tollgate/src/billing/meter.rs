//! The meter.
