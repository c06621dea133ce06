//! Times the data layer on the vendored Fashion-MNIST: decode the 60,000 gzip IDX training images
//! and build the IR-100 long-tailed index, the first two steps of the default pipeline.
//!
//! Run with `cargo run --release -p lortflow-data --example bench_load`. The target is under one
//! second in total, so that a cold run of the default pipeline is dominated by training, not I/O.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use std::ops::ControlFlow;

use lortflow_data::dataset::{LongTailConfig, Split, load_mnist_like};
use lortflow_data::input::{
    BatchConfig, BatchOutput, DataError, ImagePipeline, Normalization, Transform, for_each_batch,
};

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
    let start = Instant::now();
    let train = match load_mnist_like(&root, Split::Train) {
        Ok(train) => train,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = start.elapsed();
    let config = LongTailConfig {
        imbalance_ratio: 100.0,
        ..LongTailConfig::default()
    };
    let index = match config.build(train.labels(), train.num_classes()) {
        Ok(index) => index,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let total = start.elapsed();
    println!(
        "loaded {} images of {:?} in {:.1} ms; IR-100 index of {} samples in {:.2} ms; total {:.1} ms",
        train.len(),
        train.images().shape(),
        loaded.as_secs_f64() * 1e3,
        index.len(),
        (total - loaded).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
    );

    // The training-time augmentation pipeline of the default pipeline (random crop with padding,
    // horizontal flip, normalisation), batches of 128 prepared on the loader's worker thread.
    let normalization = Normalization::from_data(&train, &index.sample_ids).expect("statistics");
    let pipeline = ImagePipeline::new(
        vec![
            Transform::RandomCrop { padding: 2 },
            Transform::Hflip { p: 0.5 },
        ],
        normalization,
        train.images().shape(),
    )
    .expect("a valid pipeline");
    let config = BatchConfig {
        batch_size: 128,
        prefetch: 4,
        seed: 0,
        train: true,
        output: BatchOutput::Normalized,
    };
    let start = Instant::now();
    let mut images = 0usize;
    let result =
        for_each_batch::<DataError>(&train, &index.sample_ids, &pipeline, &config, 0, |batch| {
            images += batch.shape[0];
            Ok(ControlFlow::Continue(()))
        });
    if let Err(err) = result {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "augmentation pipeline: {images} images in {:.1} ms = {:.0} images/s",
        secs * 1e3,
        images as f64 / secs
    );
    ExitCode::SUCCESS
}
