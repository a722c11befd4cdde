//! The console's pages, one file per section.

pub mod accounts;
pub mod credits;
mod key_form;
pub mod keys;
pub mod models;
pub mod overview;
pub mod reference;
pub mod requests;
pub mod sign_in;
