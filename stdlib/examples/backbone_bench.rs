//! Backbone throughput on this machine: training images/s (forward + backward + SGD step) and
//! feature-extraction images/s (inference mode) of the small CNN (28x28 grey) and ResNet-32
//! (32x32 colour) at batch 128. Compare with `bench/backbone_torch.py` on the same machine.
//!
//! `cargo run --release -p lortflow-stdlib --features benchmarks --example backbone_bench [train_steps] [infer_steps]
//! [--backend cpu|cuda|wgpu] [--only conv-fc|small-cnn|resnet32]`

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor};

use lortflow_stdlib::backbone::{Arch, Backbone, BackboneConfig};
use lortflow_stdlib::backend::BackendChoice;

const BATCH: usize = 128;

fn bench<B: AutodiffBackend>(
    arch: Arch,
    channels: usize,
    side: usize,
    train_steps: usize,
    infer_steps: usize,
    device: &B::Device,
) {
    let config = BackboneConfig {
        arch,
        num_classes: 10,
        in_channels: channels,
        input_size: side,
    };
    B::seed(device, 0);
    let mut model: Backbone<B> = config.init(device).expect("a valid config");
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
        .init::<B, Backbone<B>>();
    let x = Tensor::<B, 4>::random(
        [BATCH, channels, side, side],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let y = Tensor::<B, 1, Int>::random([BATCH], Distribution::Uniform(0.0, 10.0), device);
    let step = |model: Backbone<B>, optim: &mut _| -> Backbone<B> {
        let logits = model.forward(x.clone());
        let loss = log_softmax(logits, 1)
            .gather(1, y.clone().reshape([BATCH, 1]))
            .mean()
            .neg();
        let _: f32 = burn::tensor::ElementConversion::elem(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        Optimizer::step(optim, 0.01, model, grads)
    };
    // Warm-up: allocator, rayon pool, caches.
    for _ in 0..2 {
        model = step(model, &mut optim);
    }
    let t = Instant::now();
    for _ in 0..train_steps {
        model = step(model, &mut optim);
    }
    let train = (train_steps * BATCH) as f64 / t.elapsed().as_secs_f64();

    let inference = model.valid();
    let xi = x.inner();
    let _ = inference.forward_features(xi.clone()).into_data();
    let t = Instant::now();
    for _ in 0..infer_steps {
        let _ = inference.forward_features(xi.clone()).into_data();
    }
    let infer = (infer_steps * BATCH) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{:<10} train {:>8.1} img/s   features {:>8.1} img/s",
        arch.name(),
        train,
        infer
    );
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let backend: BackendChoice = value("--backend")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .expect("--backend cpu|cuda|cuda:N|wgpu");
    let only = value("--only");
    let args: Vec<usize> = argv.iter().filter_map(|a| a.parse().ok()).collect();
    let train_steps = args.first().copied().unwrap_or(10);
    let infer_steps = args.get(1).copied().unwrap_or(20);
    let level = lortflow_stdlib::cpu::choice().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "burn 0.21 {backend}, batch {BATCH}, {train_steps} train steps, {infer_steps} inference batches, {} threads, CPU kernels {level}",
        rayon::current_num_threads()
    );
    // As the backbone and features stages do: freed buffers stay for the next step.
    let _keep = lortflow_stdlib::heap::KeepFreedMemory::new();
    lortflow_stdlib::with_backend!(backend, |B, device| {
        if only.as_deref().is_none_or(|o| o == "conv-fc") {
            bench::<B>(Arch::ConvFc, 1, 28, train_steps, infer_steps, &device);
        }
        if only.as_deref().is_none_or(|o| o == "small-cnn") {
            bench::<B>(Arch::SmallCnn, 1, 28, train_steps, infer_steps, &device);
        }
        // ResNet-32 is ~10x the work per image: a quarter of the steps unless it runs alone.
        let scale = if only.is_some() { 1 } else { 4 };
        if only.as_deref().is_none_or(|o| o == "resnet32") {
            bench::<B>(
                Arch::Resnet32,
                3,
                32,
                train_steps.div_ceil(scale).max(2),
                infer_steps.div_ceil(scale).max(2),
                &device,
            );
        }
    })
    .expect("the backend should start");
}
