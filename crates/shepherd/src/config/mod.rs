//! Configuration: one YAML file, loaded in two phases (raw serde structs, then validated domain
//! types). `shepherd check` and `shepherd serve` share the same loader.

mod governance;
mod load;
mod model;
mod problems;
mod raw;
mod routing;
mod yaml;

pub use load::{load_file, load_str};
pub use model::*;
pub use problems::{Problem, Problems};
