//! The architectures a backbone can have, and their names in `backbone.json`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A backbone architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Two 5x5 convolutions, then a 128-wide feature layer (the strong default for 28px grey).
    ConvFc,
    /// A small three-block CNN with global average pooling.
    SmallCnn,
    /// LDAM-DRW's CIFAR ResNet-32.
    Resnet32,
    /// ResNet-34 (CIFAR stem up to 64px, torchvision's above).
    Resnet34,
    /// torchvision's ResNet-50.
    Resnet50,
    /// torchvision's ResNeXt-50 (32x4d).
    Resnext50,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 6] = [
        Arch::ConvFc,
        Arch::SmallCnn,
        Arch::Resnet32,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnext50,
    ];

    /// The name `backbone.json` records (the pipeline language's name for it).
    pub fn name(self) -> &'static str {
        match self {
            Arch::ConvFc => "conv-fc",
            Arch::SmallCnn => "small-cnn",
            Arch::Resnet32 => "resnet32",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnext50 => "resnext50-32x4d",
        }
    }

    /// The architecture called `name`.
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The width of the features a backbone of this architecture gives: the global average
    /// pooled map, or `conv-fc`'s feature layer.
    pub fn feature_dim(self) -> usize {
        match self {
            Arch::ConvFc | Arch::SmallCnn => 128,
            Arch::Resnet32 => 64,
            Arch::Resnet34 => 512,
            Arch::Resnet50 | Arch::Resnext50 => 2048,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        Arch::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown architecture `{name}`")))
    }
}
