//! Integration tests: the real `lortflow` binary on real `.kdl` files. One test binary (as
//! ripgrep and just do) so the build links once.

mod architecture;
mod cli;
mod graph;
mod hostile;
mod images;
mod keys;
mod lint;
mod outputs;
mod plugin;
mod report;
mod run;
mod slurm;
mod watch;
mod wgpu;

// The plugin example's own unit tests (δ per class, gradient check), compiled here; its binary
// is run by `plugin`.
#[allow(dead_code)]
#[path = "../examples/custom_head_method.rs"]
mod custom_head_method_example;
