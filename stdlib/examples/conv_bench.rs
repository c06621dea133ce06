//! Convolutions on the CPU: `lortflow_stdlib::kernels::conv` against Burn's generic ops on flex
//! (`conv2d`, `conv2d_x_backward`, `conv2d_weight_backward`: what `Autodiff<Flex>` runs without
//! the kernels) and against the kernels' own im2col path (`ours` takes the direct kernel where
//! [`conv2d`] and its gradients choose it), for every 3x3 convolution of the small
//! CNN (28x28) and ResNet-32 (32x32) at batch 128, and ResNet-50's stride-1 3x3 layers (224x224
//! input) at batch 16. Prints milliseconds per call.
//!
//! `cargo run --release -p lortflow-stdlib --example conv_bench [min_seconds_per_case]`

use std::time::{Duration, Instant};

use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;
use lortflow_stdlib::kernels::conv::{
    Conv2dShape, conv2d, conv2d_input_grad, conv2d_weight_grad, im2col_conv2d,
    im2col_conv2d_input_grad, im2col_conv2d_weight_grad,
};

/// The fastest of five timing windows of `min / 5` each (at least 2 calls per window), in ms per
/// call: the minimum is what the code costs on a machine whose neighbours come and go.
fn time(min: Duration, mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u32;
            while calls < 2 || start.elapsed() < min / 5 {
                f();
                calls += 1;
            }
            start.elapsed().as_secs_f64() * 1e3 / f64::from(calls)
        })
        .fold(f64::INFINITY, f64::min)
}

fn tensor(values: &[f32], shape: [usize; 4]) -> burn::tensor::ops::FloatTensor<Flex> {
    Tensor::<Flex, 4>::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
        .into_primitive()
        .tensor()
}

fn main() {
    let min = Duration::from_secs_f64(
        std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1.0),
    );
    println!(
        "CPU kernels {}, {} threads",
        lortflow_stdlib::cpu::choice().unwrap_or_else(|e| panic!("{e}")),
        rayon::current_num_threads()
    );
    // (name, batch, C, H, O, stride): 3x3, padding 1; ResNet-50's at 224x224 at batch 16.
    let cases = [
        ("small-cnn conv1", 128, 1, 28, 32, 1),
        ("small-cnn conv2", 128, 32, 14, 64, 1),
        ("small-cnn conv3", 128, 64, 7, 128, 1),
        ("resnet32 stage1", 128, 16, 32, 16, 1),
        ("resnet32 stage2 down", 128, 16, 32, 32, 2),
        ("resnet32 stage2", 128, 32, 16, 32, 1),
        ("resnet32 stage3", 128, 64, 8, 64, 1),
        ("resnet50 layer1 (b16)", 16, 64, 56, 64, 1),
        ("resnet50 layer2 (b16)", 16, 128, 28, 128, 1),
        ("resnet50 layer3 (b16)", 16, 256, 14, 256, 1),
        ("resnet50 layer4 (b16)", 16, 512, 7, 512, 1),
    ];
    println!(
        "{:<22} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
        "layer (ms per call)",
        "y burn",
        "y im2col",
        "y ours",
        "∂x burn",
        "∂x im2col",
        "∂x ours",
        "∂w burn",
        "∂w im2col",
        "∂w ours"
    );
    let mut totals = [0.0f64; 9];
    for (name, batch, c, h, o, stride) in cases {
        let shape = Conv2dShape {
            batch,
            in_channels: c,
            height: h,
            width: h,
            out_channels: o,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [1, 1],
            dilation: [1, 1],
        };
        let [oh, ow] = shape.out_size();
        let fill =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let x = fill(batch * c * h * h, 0.37);
        let w = fill(o * c * 9, 0.11);
        let gy = fill(batch * o * oh * ow, 0.23);
        let options = ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
        let (xs, ws, gys) = ([batch, c, h, h], [o, c, 3, 3], [batch, o, oh, ow]);
        // Flex tensors share their buffer when cloned: the calls below copy no input.
        let (xt, wt, gyt) = (tensor(&x, xs), tensor(&w, ws), tensor(&gy, gys));
        let burn_y = time(min, || {
            let _ = Flex::conv2d(xt.clone(), wt.clone(), None, options.clone());
        });
        let im2col_y = time(min, || {
            std::hint::black_box(im2col_conv2d(&shape, &x, &w, None));
        });
        let ours_y = time(min, || {
            std::hint::black_box(conv2d(&shape, &x, &w, None));
        });
        let burn_x = time(min, || {
            let _ = Flex::conv2d_x_backward(xt.clone(), wt.clone(), gyt.clone(), options.clone());
        });
        let im2col_x = time(min, || {
            std::hint::black_box(im2col_conv2d_input_grad(&shape, &w, &gy));
        });
        let ours_x = time(min, || {
            std::hint::black_box(conv2d_input_grad(&shape, &w, &gy));
        });
        let burn_w = time(min, || {
            let _ =
                Flex::conv2d_weight_backward(xt.clone(), wt.clone(), gyt.clone(), options.clone());
        });
        let im2col_w = time(min, || {
            std::hint::black_box(im2col_conv2d_weight_grad(&shape, &x, &gy));
        });
        let ours_w = time(min, || {
            std::hint::black_box(conv2d_weight_grad(&shape, &x, &gy));
        });
        let row = [
            burn_y, im2col_y, ours_y, burn_x, im2col_x, ours_x, burn_w, im2col_w, ours_w,
        ];
        print_row(name, &row);
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
    }
    print_row("all layers", &totals);
}

fn print_row(name: &str, [a, b, c, d, e, f, g, h, i]: &[f64; 9]) {
    println!(
        "{name:<22} {a:>9.2} {b:>9.2} {c:>9.2} | {d:>9.2} {e:>9.2} {f:>9.2} | {g:>9.2} {h:>9.2} {i:>9.2}"
    );
}
