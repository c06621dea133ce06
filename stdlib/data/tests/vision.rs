//! lortflow's decoding and transforms against what PIL and torchvision produce for the same inputs
//! (`tests/fixtures/vision`, written by `make_fixtures.py`).

use std::path::{Path, PathBuf};

use lortflow_data::images::{RgbImage, decode_rgb};
use lortflow_data::input::vision::{
    CropDraws, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
    random_resized_crop_box, resize_centre_crop, resized_crop,
};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision")
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("cases.json")).unwrap()).unwrap()
}

fn image(name: &str) -> RgbImage {
    decode_rgb(&std::fs::read(dir().join(name)).unwrap()).unwrap()
}

fn expected(case: &Value) -> Vec<u8> {
    std::fs::read(dir().join(case["file"].as_str().unwrap())).unwrap()
}

/// The largest per-value difference, and how many values differ.
fn compare(actual: &[u8], expected: &[u8]) -> (u8, usize) {
    assert_eq!(actual.len(), expected.len());
    let diffs = actual.iter().zip(expected).map(|(a, b)| a.abs_diff(*b));
    (
        diffs.clone().max().unwrap_or(0),
        diffs.filter(|&d| d > 0).count(),
    )
}

/// Replays the draws torch made.
struct Recorded {
    draws: Vec<f64>,
    randint: Vec<u32>,
}

impl CropDraws for Recorded {
    fn area_fraction(&mut self, _: f64, _: f64) -> f64 {
        self.draws.remove(0)
    }
    fn aspect_ratio(&mut self, _: f32, _: f32) -> f64 {
        self.draws.remove(0)
    }
    fn below(&mut self, n: u32) -> u32 {
        let v = self.randint.remove(0);
        assert!(v < n, "torch drew {v} from 0..{n}");
        v
    }
}

#[test]
fn random_resized_crop_boxes_are_torchvisions_for_the_same_draws() {
    let cases = cases();
    let list = cases["random_resized_crop"].as_array().unwrap();
    let mut fallbacks = 0;
    for case in list {
        let f = |v: &Value| v.as_f64().unwrap();
        let mut draws = Recorded {
            draws: case["draws"].as_array().unwrap().iter().map(f).collect(),
            randint: case["randint"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect(),
        };
        fallbacks += usize::from(draws.randint.is_empty());
        let scale = (f(&case["scale"][0]), f(&case["scale"][1]));
        let ratio = (f(&case["ratio"][0]), f(&case["ratio"][1]));
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let (i, j, bh, bw) = random_resized_crop_box(w, h, scale, ratio, &mut draws);
        let want: Vec<u64> = case["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            vec![i as u64, j as u64, bh as u64, bw as u64],
            want,
            "{case}"
        );
        assert!(
            draws.draws.is_empty() && draws.randint.is_empty(),
            "every draw used: {case}"
        );
    }
    assert!(
        list.len() >= 100 && fallbacks >= 10,
        "{} cases, {fallbacks} fallbacks",
        list.len()
    );
}

#[test]
fn resized_crops_match_pil_bilinear() {
    for case in cases()["resized_crop"].as_array().unwrap() {
        let src = image(case["source"].as_str().unwrap());
        let b: Vec<u32> = case["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let out = resized_crop(
            &src,
            (b[0], b[1], b[2], b[3]),
            case["size"].as_u64().unwrap() as u32,
        );
        let (max, count) = compare(&out.pixels, &expected(case));
        assert!(max <= 1, "{case}: max difference {max} ({count} values)");
    }
}

#[test]
fn resize_then_centre_crop_matches_pil_in_one_pass() {
    for case in cases()["resize_centre_crop"].as_array().unwrap() {
        let src = image(case["source"].as_str().unwrap());
        let crop = case["crop"].as_u64().unwrap() as u32;
        let mut out = vec![0u8; (crop * crop * 3) as usize];
        resize_centre_crop(
            &src,
            case["resize"].as_u64().unwrap() as u32,
            crop,
            &mut out,
        );
        let (max, count) = compare(&out, &expected(case));
        assert!(max <= 1, "{case}: max difference {max} ({count} values)");
    }
}

#[test]
fn colour_jitter_adjustments_match_pil_exactly() {
    let src = image("source.png");
    for case in cases()["jitter"].as_array().unwrap() {
        let mut pixels = src.pixels.clone();
        let factor = case["factor"].as_f64().unwrap() as f32;
        match case["op"].as_str().unwrap() {
            "brightness" => adjust_brightness(&mut pixels, factor),
            "contrast" => adjust_contrast(&mut pixels, factor),
            "saturation" => adjust_saturation(&mut pixels, factor),
            "hue" => adjust_hue(&mut pixels, factor),
            other => panic!("unknown op {other}"),
        }
        let (max, count) = compare(&pixels, &expected(case));
        assert_eq!((max, count), (0, 0), "{case}");
    }
}

#[test]
fn odd_files_convert_to_rgb_as_pil_does() {
    for case in cases()["decode"].as_array().unwrap() {
        let decoded = image(case["source"].as_str().unwrap());
        assert_eq!(
            (decoded.width, decoded.height),
            (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32
            )
        );
        let (max, count) = compare(&decoded.pixels, &expected(case));
        let tolerance = case["tolerance"].as_u64().unwrap() as u8;
        assert!(
            max <= tolerance,
            "{case}: max difference {max} ({count} values)"
        );
    }
}
