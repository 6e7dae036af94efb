#![forbid(unsafe_code)]
//! The `secchan` command line: the library's modules re-exported at the root, so the command
//! line (`cli`) and `secchan bench` (`bench`), which are not library API, name them as
//! `crate::...`.

pub use secchan::*;

mod bench;
mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
