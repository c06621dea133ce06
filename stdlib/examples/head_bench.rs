//! Head re-training benchmark on the CPU backend: one linear head 512→100 on 10,847 random
//! features (CIFAR-100-LT IR 100's train size), 20 epochs, batch 128, SGD momentum 0.9, wd 5e-4,
//! cosine schedule; then a 25-head sweep (5 lr × 5 wd, one seed) trained together versus the same
//! 25 heads trained one call at a time.
//!
//! `bench/head_torch.py` runs the single head in PyTorch for comparison.
//!
//! ```text
//! cargo run --release --example head_bench -p lortflow-stdlib [-- --skip-singles] [--skip-sweep]
//! ```

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use lortflow_stdlib::dataset::Rng;
use lortflow_stdlib::head::{FeatureView, HeadJob, HeadResult, test_spec, train_heads};

const N: usize = 10_847;
const N_TEST: usize = 10_000;
const D: usize = 512;
const K: usize = 100;

fn main() {
    let skip_singles = std::env::args().any(|a| a == "--skip-singles");
    let skip_sweep = std::env::args().any(|a| a == "--skip-sweep");
    let mut rng = Rng::seed_from_u64(0);
    let train: Vec<f32> = (0..N * D).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..N).map(|_| rng.below(K as u64) as u32).collect();
    let test: Vec<f32> = (0..N_TEST * D).map(|_| rng.normal() as f32).collect();
    let test_labels: Vec<u32> = (0..N_TEST).map(|_| rng.below(K as u64) as u32).collect();
    let mut counts = vec![0usize; K];
    labels.iter().for_each(|&y| counts[y as usize] += 1);
    let view = FeatureView {
        dim: D,
        train: &train,
        train_labels: &labels,
        test: &test,
        test_labels: &test_labels,
        num_classes: K,
        class_counts: &counts,
    };
    let device = burn_flex::FlexDevice;
    let run = |jobs: &[HeadJob]| -> (f64, Vec<HeadResult>) {
        let start = Instant::now();
        let out = train_heads::<Autodiff<Flex>>(
            &device,
            &view,
            None,
            jobs,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .expect("training should succeed");
        (start.elapsed().as_secs_f64(), out)
    };

    let single = HeadJob {
        name: "ce".into(),
        spec: test_spec(),
        seed: 0,
    };
    run(std::slice::from_ref(&single)); // warm-up: thread pool, allocator
    let mut one = f64::INFINITY;
    for _ in 0..3 {
        one = one.min(run(std::slice::from_ref(&single)).0);
    }
    println!("one head 512→100, {N} samples, 20 epochs, batch 128: {one:.3} s (best of 3)");
    if skip_sweep {
        return;
    }

    let sweep: Vec<HeadJob> = [0.003, 0.01, 0.03, 0.1, 0.3]
        .iter()
        .flat_map(|&lr| {
            [0.0, 1e-4, 5e-4, 1e-3, 5e-3].map(|wd| {
                let mut spec = test_spec();
                spec.train.lr = lr;
                spec.train.weight_decay = wd;
                HeadJob {
                    name: format!("lr{lr}-wd{wd}"),
                    spec,
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
    if !skip_singles {
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
