//! Which JPEG decoder: decodes the files of an image list to RGB on one thread with zune-jpeg (as
//! lortflow does, strict mode included) and with jpeg-decoder, and prints img/s of each. PIL's
//! libjpeg-turbo on the same files: the one-liner in PERFORMANCE.md.
//!
//! `cargo run --release -p lortflow-data --example bench_jpeg -- ROOT LIST [LIMIT]`

use std::path::PathBuf;
use std::time::Instant;

use lortflow_data::dataset::read_image_list;
use lortflow_data::images::decode_rgb;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().ok_or("usage: bench_jpeg ROOT LIST [LIMIT]")?);
    let list = PathBuf::from(args.next().ok_or("usage: bench_jpeg ROOT LIST [LIMIT]")?);
    let limit: usize = args.next().map_or(Ok(1000), |v| v.parse())?;
    let files: Vec<Vec<u8>> = read_image_list(&list)?
        .iter()
        .take(limit)
        .map(|e| std::fs::read(root.join(&e.path)))
        .collect::<Result<_, _>>()?;
    let time = |name: &str, decode: &dyn Fn(&[u8]) -> usize| {
        let started = Instant::now();
        let bytes: usize = files.iter().map(|f| decode(f)).sum();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:<13} {:>6.0} img/s on one thread ({} MB of pixels)",
            files.len() as f64 / secs,
            bytes / 1_000_000
        );
    };
    time("zune-jpeg", &|f| {
        decode_rgb(f).expect("decodes").pixels.len()
    });
    time("jpeg-decoder", &|f| {
        let mut d = jpeg_decoder::Decoder::new(f);
        d.decode().expect("decodes").len()
    });
    Ok(())
}
