//! The geometry of a 2-D convolution and what may follow it in the same pass, shared by the
//! im2col path (`conv`) and the direct kernels (`direct_conv`).

/// The geometry of a 2-D convolution with one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Samples, `N`.
    pub batch: usize,
    /// Input channels, `C`.
    pub in_channels: usize,
    /// Input height, `H`.
    pub height: usize,
    /// Input width, `W`.
    pub width: usize,
    /// Output channels, `O`.
    pub out_channels: usize,
    /// `[KH, KW]`.
    pub kernel: [usize; 2],
    /// `[stride_h, stride_w]`, at least 1.
    pub stride: [usize; 2],
    /// Zero padding on each side, `[pad_h, pad_w]`.
    pub padding: [usize; 2],
    /// `[dilation_h, dilation_w]`, at least 1.
    pub dilation: [usize; 2],
}

impl Conv2dShape {
    /// `[OH, OW]`, as PyTorch and Burn compute it (0 when the kernel does not fit).
    pub fn out_size(&self) -> [usize; 2] {
        let out = |size: usize, axis: usize| {
            let reach = self.dilation[axis] * (self.kernel[axis].max(1) - 1) + 1;
            (size + 2 * self.padding[axis])
                .checked_sub(reach)
                .map_or(0, |free| free / self.stride[axis].max(1) + 1)
        };
        [out(self.height, 0), out(self.width, 1)]
    }

    /// Elements of one sample's input, `C·H·W`.
    pub(crate) fn input_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Rows of the im2col matrix, `C·KH·KW`.
    pub(crate) fn patch_len(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Output positions per sample, `OH·OW`.
    pub(crate) fn positions(&self) -> usize {
        let [oh, ow] = self.out_size();
        oh * ow
    }

    #[track_caller]
    pub(crate) fn check(&self, what: &str, len: usize, expected: usize) {
        assert!(
            self.stride.iter().chain(&self.dilation).all(|&v| v > 0),
            "{self:?}: stride and dilation must be at least 1"
        );
        assert_eq!(len, expected, "{what} of {self:?} has the wrong length");
    }
}

/// What follows a convolution in the same pass over its output (inference: the BatchNorm is
/// already folded into the weights and bias).
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `relu(y)`.
    Relu,
    /// `relu(y + residual)`, `residual` shaped as the output: a residual block's end.
    AddRelu(&'a [f32]),
}

impl Epilogue<'_> {
    /// The epilogue applied to `y`, the value at output `index`.
    #[inline(always)]
    pub(crate) fn apply(self, y: f32, index: usize) -> f32 {
        match self {
            Epilogue::Relu => y.max(0.0),
            Epilogue::AddRelu(residual) => (y + residual[index]).max(0.0),
        }
    }
}
