//! Money, prices, the cost of a usage, and the meter that reserves and settles it.

pub mod meter;
pub mod money;
pub mod price;
pub mod window;

pub use money::Credits;
pub use price::{HostedTool, Pricing, UnitPrice, Usage};
