//! Head re-training benchmark on the CPU backend: one linear head 512→100 on 10,847 random
//! features (CIFAR-100-LT IR 100's train size), 20 epochs, batch 128, SGD momentum 0.9, wd 5e-4,
//! cosine schedule; then a 25-head sweep (5 lr × 5 wd, one seed) trained together versus the same
//! 25 heads trained one call at a time.
//!
//! `bench/head_torch.py` runs the same loops in PyTorch for comparison. Flags change the shape
//! and the backend (`scripts/gpu-check.sh` runs 2048→1000 on 100k samples on CUDA).
//!
//! ```text
//! cargo run --release -p lortflow-stdlib --features benchmarks --example head_bench [-- --skip-singles] [--skip-sweep]
//!     [--backend cpu|cuda|wgpu] [--samples N] [--test-samples N] [--dim D] [--classes K]
//!     [--epochs E] [--batch B]
//! ```

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use lortflow_data::dataset::Rng;
use lortflow_stdlib::backend::BackendChoice;
use lortflow_stdlib::head::{FeatureView, HeadConfig, HeadJob, HeadResult, train_heads};

/// The shape of the benchmark; flags override the CPU defaults.
struct Config {
    samples: usize,
    test_samples: usize,
    dim: usize,
    classes: usize,
    epochs: u32,
    batch: usize,
    skip_singles: bool,
    skip_sweep: bool,
}

/// `--name value` from the command line.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse `{v}`"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend: BackendChoice = flag(&args, "--backend", "cpu".to_string())
        .parse()
        .expect("--backend cpu|cuda|cuda:N|wgpu");
    let config = Config {
        samples: flag(&args, "--samples", 10_847),
        test_samples: flag(&args, "--test-samples", 10_000),
        dim: flag(&args, "--dim", 512),
        classes: flag(&args, "--classes", 100),
        epochs: flag(&args, "--epochs", 20),
        batch: flag(&args, "--batch", 128),
        skip_singles: args.iter().any(|a| a == "--skip-singles"),
        skip_sweep: args.iter().any(|a| a == "--skip-sweep"),
    };
    let level = lortflow_stdlib::cpu::choice().unwrap_or_else(|e| panic!("{e}"));
    println!("backend {backend}, CPU kernels {level}");
    lortflow_stdlib::with_backend!(backend, |B, device| bench::<B>(&device, &config))
        .expect("the backend should start");
}

fn bench<B: AutodiffBackend>(device: &B::Device, config: &Config) {
    let (n, d, k) = (config.samples, config.dim, config.classes);
    let mut rng = Rng::seed_from_u64(0);
    let train: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(k as u64) as u32).collect();
    let test: Vec<f32> = (0..config.test_samples * d)
        .map(|_| rng.normal() as f32)
        .collect();
    let test_labels: Vec<u32> = (0..config.test_samples)
        .map(|_| rng.below(k as u64) as u32)
        .collect();
    let mut counts = vec![0usize; k];
    labels.iter().for_each(|&y| counts[y as usize] += 1);
    let view = FeatureView {
        dim: d,
        train: &train,
        train_labels: &labels,
        test: &test,
        test_labels: &test_labels,
        num_classes: k,
        class_counts: &counts,
        release: None,
    };
    let run = |jobs: &[HeadJob]| -> (f64, Vec<HeadResult>) {
        let start = Instant::now();
        let out = train_heads::<B>(
            device,
            &view,
            None,
            jobs,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .expect("training should succeed");
        (start.elapsed().as_secs_f64(), out)
    };
    let spec = || {
        let mut spec = HeadConfig::default();
        spec.train.epochs = config.epochs;
        spec.train.batch_size = config.batch as u32;
        spec
    };

    let single = HeadJob {
        name: "ce".into(),
        config: spec(),
        seed: 0,
    };
    run(std::slice::from_ref(&single)); // warm-up: thread pool, allocator
    let mut one = f64::INFINITY;
    for _ in 0..3 {
        one = one.min(run(std::slice::from_ref(&single)).0);
    }
    println!(
        "one head {d}→{k}, {n} samples, {} epochs, batch {}: {one:.3} s (best of 3)",
        config.epochs, config.batch
    );
    if config.skip_sweep {
        return;
    }

    let sweep: Vec<HeadJob> = [0.003, 0.01, 0.03, 0.1, 0.3]
        .iter()
        .flat_map(|&lr| {
            [0.0, 1e-4, 5e-4, 1e-3, 5e-3].map(|wd| {
                let mut spec = spec();
                spec.train.lr = lr;
                spec.train.weight_decay = wd;
                HeadJob {
                    name: format!("lr{lr}-wd{wd}"),
                    config: spec,
                    seed: 0,
                }
            })
        })
        .collect();
    let (together, _) = run(&sweep);
    println!(
        "25-head sweep trained together: {together:.3} s ({:.2}× one head)",
        together / one
    );
    if !config.skip_singles {
        let start = Instant::now();
        for job in &sweep {
            run(std::slice::from_ref(job));
        }
        let singles = start.elapsed().as_secs_f64();
        println!(
            "25 heads trained one by one: {singles:.3} s ({:.2}× together)",
            singles / together
        );
    }
}
