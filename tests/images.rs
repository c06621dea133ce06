//! Image files end to end through the real CLI: an `image-list` dataset of generated JPEGs is
//! packed (a truncated file named by its list line, or skipped and listed), a backbone trains on
//! the stream with torchvision's RandomResizedCrop, features and a head follow; the store lives
//! inside the image root.

use std::io::Cursor;

use crate::cli::Test;

fn jpeg(w: u32, h: u32, class: u32, seed: u32) -> Vec<u8> {
    let im = image::RgbImage::from_fn(w, h, |x, y| {
        // Each class has its own colour; the texture varies per image.
        let base = [[200u8, 40, 40], [40, 200, 40], [40, 40, 200]][class as usize];
        let t = ((x * 7 + y * 3 + seed * 11) % 40) as u8;
        image::Rgb(base.map(|v| v.saturating_add(t)))
    });
    let mut out = Cursor::new(Vec::new());
    im.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn pipeline(skip: bool) -> String {
    format!(
        r#"lortflow 1
dataset "photos" {{
    source "image-list" root="." train="train.txt" test="test.txt" image-size=16 resize=18 skip-bad-images=#{skip}
    long-tail "none"
    groups many=5 few=3
}}
backbone "net" {{
    data "photos"
    arch "small-cnn"
    train epochs=2 batch-size=8 lr=0.05
    augment "random-resized-crop" size=16
    augment "hflip"
    normalize "dataset"
}}
features "feats" {{ backbone "net"; batch-size 16 }}
head "ce" {{ features "feats"; method "ce"; train epochs=3 }}
evaluate "table" {{ heads "*"; metrics "top1" }}
"#
    )
}

fn image_root() -> Test {
    let mut t = Test::new();
    let (mut train, mut test) = (String::new(), String::new());
    for class in 0..3u32 {
        for i in 0..(8 - 2 * class) {
            let name = format!("train/{class}/{i}.jpg");
            std::fs::create_dir_all(t.path(&format!("train/{class}"))).unwrap();
            std::fs::write(t.path(&name), jpeg(30 + i * 3, 24 + class * 5, class, i)).unwrap();
            train.push_str(&format!("{name} {class}\n"));
        }
        for i in 0..3 {
            let name = format!("test/{class}-{i}.jpg");
            std::fs::create_dir_all(t.path("test")).unwrap();
            std::fs::write(t.path(&name), jpeg(28, 28, class, 100 + i)).unwrap();
            test.push_str(&format!("{name} {class}\n"));
        }
    }
    // Line 4 of train.txt: a JPEG cut short, as a failed copy leaves it.
    let cut = jpeg(40, 30, 0, 99);
    std::fs::write(t.path("train/0/3.jpg"), &cut[..cut.len() / 3]).unwrap();
    t = t.file("train.txt", &train).file("test.txt", &test);
    t
}

#[test]
fn an_image_list_is_packed_streamed_and_a_bad_file_is_named_or_skipped() {
    let t = image_root().pipeline(&pipeline(false));
    let failed = t.args_run(["run", "pipeline.kdl"]).code(1);
    assert!(
        failed.stderr.contains("train/0/3.jpg` (line 4 of `")
            && failed.stderr.contains("the JPEG data is truncated"),
        "{}",
        failed.stderr
    );

    let t = t.pipeline(&pipeline(true));
    let ran = t
        .args_run(["run", "pipeline.kdl", "--workers", "2"])
        .success();
    assert!(ran.stdout.contains("results of `table`"), "{}", ran.stdout);
    assert!(
        ran.stderr.contains("skipped a bad image") && ran.stderr.contains("train/0/3.jpg"),
        "{}",
        ran.stderr
    );
    let inspect = t
        .args_run(["inspect", "pipeline.kdl", "photos", "--format", "json"])
        .success();
    let compact: String = inspect.stdout.split_whitespace().collect();
    assert!(compact.contains("\"skipped\":1,"), "{}", inspect.stdout);
    assert!(
        compact.contains("\"kind\":\"packed\""),
        "{}",
        inspect.stdout
    );

    // The store is inside the image root: its own writes do not invalidate the dataset.
    let again = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(
        again.stderr.contains("0 ran, 5 cached, 0 failed"),
        "{}",
        again.stderr
    );
    // The number of workers changes nothing: same key, and the features of 1 worker are those
    // of 2.
    let one = t
        .args_run(["run", "pipeline.kdl", "--workers", "1", "--force"])
        .success();
    assert_eq!(one.stdout, ran.stdout, "{}", one.stderr);

    // The backbone's input alone, from the cached packs.
    let bench = t
        .args_run([
            "bench",
            "input",
            "pipeline.kdl",
            "--epochs",
            "2",
            "--workers",
            "2",
        ])
        .success();
    assert!(
        bench.stdout.contains("epoch 1: 17 images in")
            && bench
                .stdout
                .contains("(training view, 2 workers, batch 8, 3x16x16 normalised f32)")
            && bench.stdout.contains("dataset `photos`: cached")
            && bench
                .stdout
                .contains("input of `net` (packed data): peak RSS"),
        "{}",
        bench.stdout
    );
    let eval = t
        .args_run(["bench", "input", "pipeline.kdl", "--eval"])
        .success();
    assert!(eval.stdout.contains("(extraction view,"), "{}", eval.stdout);
}
