//! Integration tests: each test starts its own server over HTTP on a fresh database.

mod account;
mod auth;
mod azure;
mod builtin;
mod clamp;
mod endpoints;
mod errors;
mod front_door;
mod gateway;
mod gemini;
mod helpers;
mod input;
mod meter;
mod meter_props;
mod money;
mod outage;
mod overflow;
mod passthrough;
mod priced;
mod public;
mod routing;
mod secrets;
mod translation;
