//! Choice-valued settings (`schedule "cosine"`, `select "best-val"`) as Rust enums whose names
//! are the schema's: [`choice!`] declares an enum with its names once, and the schema lists
//! `Enum::NAMES`, so the checker, the docs, the IR and its serde form (the cache key) cannot
//! disagree on a spelling.

/// Declares a fieldless enum whose variants are named by string literals: `NAMES` (in order),
/// `name()`, `from_name()`, `Display`, and a serde form that is the name.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $enum:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $enum {
            $( $(#[$vmeta])* #[serde(rename = $name)] $variant, )+
        }

        impl $enum {
            /// Every variant's name, in declaration order (what the schema accepts).
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// Every variant, in declaration order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),+];

            /// The name as written in a pipeline (`const`, so that schema tables can name a
            /// variant without spelling it again).
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)+
                }
            }

            /// The variant written `name`.
            pub fn from_name(name: &str) -> Option<$enum> {
                match name {
                    $($name => Some($enum::$variant),)+
                    _ => None,
                }
            }
        }

        impl $crate::choice::Choice for $enum {
            fn from_name(name: &str) -> Option<Self> {
                $enum::from_name(name)
            }
        }

        impl std::fmt::Display for $enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub(crate) use choice;

/// What every [`choice!`] enum is: lowering reads any of them through one generic accessor.
pub(crate) trait Choice: Copy + 'static {
    /// The variant written `name`.
    fn from_name(name: &str) -> Option<Self>;
}

#[cfg(test)]
#[allow(unreachable_pub)] // the macro declares public items; this one is the test's
mod tests {
    choice! {
        /// A test enum.
        pub enum Sample {
            /// One.
            One = "one",
            /// Two words.
            TwoWords = "two-words",
        }
    }

    #[test]
    fn names_round_trip_and_serialise_as_written() {
        assert_eq!(Sample::NAMES, ["one", "two-words"]);
        for &s in Sample::ALL {
            assert_eq!(Sample::from_name(s.name()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.to_string())
            );
        }
        assert_eq!(Sample::from_name("three"), None);
    }
}
