//! The commands of the `skelpi` binary that need more than a few lines:
//! argument structs and the glue from them to the library.

pub mod bench;
pub mod deploy;
pub mod discover;
pub mod health;
pub mod image;
pub mod jobs_view;
pub mod lab;
pub mod module;
pub mod ping;
pub mod pool_args;
pub mod progress;
pub mod run;
pub mod top;
pub mod trace;
