//! Integration tests: the real `lortflow` binary on real `.kdl` files. One test binary (as
//! ripgrep and just do) so the build links once.

mod cli;
mod graph;
mod lint;
mod report;
mod run;
mod watch;
