//! The input side of training on a folder of JPEGs and an image-list file, without a model: packs
//! the list (timed), then streams the training view (RandomResizedCrop 224 + flip, `--jitter` adds
//! ColorJitter 0.4/0.4/0.4) or the evaluation view (`--eval`: Resize 256 + CenterCrop 224) through
//! the streaming loader into normalised `f32` batches of 128, as bench/input_torch.py does with
//! PyTorch's DataLoader on the same files. Prints img/s and the peak RSS.
//!
//! ```text
//! cargo run --release -p lortflow-data --example bench_input -- ROOT LIST [--workers N]
//!     [--eval] [--jitter] [--epochs N] [--max-side N] [--pack PATH]
//! ```
//! `lortflow bench input PIPELINE` measures the same through a pipeline's own settings.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use lortflow_data::dataset::read_image_list;
use lortflow_data::images::{PackEntry, PackInput, PackOptions, PackedImages, pack_split};
use lortflow_data::input::{
    BatchOutput, DataError, Geometry, Normalization, StreamConfig, Transform, VisionPipeline,
    stream_batches,
};

/// A `/proc/self/status` field in MB: `VmHWM` (peak RSS, including the pages of the memory-mapped
/// pack, which are page cache the kernel can drop) or `RssAnon` (the process's own memory now).
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM")
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(
        args.next()
            .ok_or("usage: bench_input ROOT LIST [options]")?,
    );
    let list = PathBuf::from(
        args.next()
            .ok_or("usage: bench_input ROOT LIST [options]")?,
    );
    let (mut workers, mut eval, mut jitter, mut epochs, mut max_side, mut pack) = (
        lortflow_data::images::default_workers(),
        false,
        false,
        1usize,
        None,
        None,
    );
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--workers" => workers = value()?.parse()?,
            "--epochs" => epochs = value()?.parse()?,
            "--max-side" => max_side = Some(value()?.parse()?),
            "--pack" => pack = Some(PathBuf::from(value()?)),
            "--eval" => eval = true,
            "--jitter" => jitter = true,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let entries: Vec<PackEntry> = read_image_list(&list)?
        .into_iter()
        .map(|e| PackEntry {
            path: e.path,
            label: e.label,
            row: e.line as u32,
        })
        .collect();
    let num_classes = entries
        .iter()
        .map(|e| e.label as usize + 1)
        .max()
        .unwrap_or(0);
    let pack_path = pack.unwrap_or_else(|| std::env::temp_dir().join("bench_input.pack"));
    let started = Instant::now();
    let describe = |row: u32| format!("line {row} of `{}`", list.display());
    let input = PackInput {
        root: &root,
        entries: &entries,
        num_classes,
        describe: &describe,
    };
    let options = PackOptions {
        max_side,
        workers,
        ..Default::default()
    };
    let report = pack_split(
        &input,
        &pack_path,
        &options,
        &AtomicBool::new(false),
        &mut |_, _| {},
    )?;
    let pack_secs = started.elapsed().as_secs_f64();
    println!(
        "packed {} images ({:.0} MB, {} re-encoded) in {pack_secs:.2} s = {:.0} img/s on {workers} workers; peak RSS {:.0} MB",
        report.images,
        report.bytes as f64 / 1e6,
        report.reencoded,
        report.images as f64 / pack_secs,
        peak_rss_mb()
    );
    let packed = PackedImages::open(&pack_path)?;
    let eval_geometry = Geometry::ResizeCenterCrop {
        resize: 256,
        crop: 224,
    };
    let pipeline = if eval {
        VisionPipeline::eval(eval_geometry, Normalization::imagenet())?
    } else {
        let mut transforms = vec![
            Transform::RandomResizedCrop {
                size: 224,
                min_scale: 0.08,
            },
            Transform::Hflip { p: 0.5 },
        ];
        if jitter {
            transforms.push(Transform::ColorJitter {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.0,
            });
        }
        VisionPipeline::train(&transforms, eval_geometry, Normalization::imagenet())?
    };
    let config = StreamConfig {
        batch_size: 128,
        workers,
        prefetch: 2,
        seed: 0,
        output: BatchOutput::Normalized,
    };
    let order: Vec<u32> = (0..packed.len() as u32).collect();
    let mut rate = 0.0;
    let mut anon_peak = 0f64;
    for epoch in 0..epochs {
        let started = Instant::now();
        let (mut seen, mut checksum) = (0usize, 0f64);
        stream_batches::<DataError>(&packed, &order, &pipeline, &config, epoch, |batch| {
            seen += batch.labels.len();
            checksum += f64::from(batch.values[0]);
            anon_peak = anon_peak.max(status_mb("RssAnon"));
            Ok(ControlFlow::Continue(()))
        })?;
        let secs = started.elapsed().as_secs_f64();
        rate = seen as f64 / secs;
        println!(
            "epoch {epoch}: {seen} images in {secs:.2} s = {rate:.0} img/s (checksum {checksum:.3})"
        );
    }
    println!(
        "lortflow workers={workers} view={}: {rate:.0} img/s, peak RSS {:.0} MB (of which the process's own memory at most {anon_peak:.0} MB; the rest is the mapped pack's page cache)",
        if eval {
            "eval"
        } else if jitter {
            "train+jitter"
        } else {
            "train"
        },
        peak_rss_mb()
    );
    Ok(())
}
