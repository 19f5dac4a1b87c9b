//! The spelling of a registry's vocabulary (CAM methods, poolings, metrics, devices, profiles):
//! one macro gives a type with `ALL` and `key()` its parsing (`FromStr`, listing the valid keys on
//! error), its serde form (the key) and `keys()` for messages, so every vocabulary reads and
//! writes its keys the same way.

/// `keyed!(Type, "what it is", display)`: `Type` has `const ALL: [Type; N]`, `fn key(self) ->
/// &'static str` and `fn display(self) -> &'static str` (the name `Display` prints, padded).
/// Derive serde with `#[serde(try_from = "String", into = "&'static str")]`.
#[macro_export]
macro_rules! keyed {
    ($ty:ty, $what:literal, $display:ident) => {
        impl $ty {
            /// Every key, comma-separated, for messages.
            pub fn keys() -> String {
                Self::ALL.iter().map(|v| v.key()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.$display())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.key() == s)
                    .ok_or_else(|| format!("unknown {} `{s}`: choose one of {}", $what, Self::keys()))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$ty> for &'static str {
            fn from(v: $ty) -> &'static str {
                v.key()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(try_from = "String", into = "&'static str")]
    enum Colour {
        Red,
        DeepBlue,
    }

    impl Colour {
        const ALL: [Colour; 2] = [Colour::Red, Colour::DeepBlue];
        fn key(self) -> &'static str {
            match self {
                Colour::Red => "red",
                Colour::DeepBlue => "deep-blue",
            }
        }
        fn name(self) -> &'static str {
            match self {
                Colour::Red => "Red",
                Colour::DeepBlue => "Deep blue",
            }
        }
    }

    crate::keyed!(Colour, "colour", name);

    #[test]
    fn keys_parse_print_and_serialise_and_an_unknown_key_lists_the_valid_ones() {
        assert_eq!("deep-blue".parse::<Colour>().unwrap(), Colour::DeepBlue);
        assert_eq!(format!("[{:<6}]", Colour::Red), "[Red   ]");
        let err = "blue".parse::<Colour>().unwrap_err();
        assert_eq!(err, "unknown colour `blue`: choose one of red, deep-blue");
        let json = serde_json::to_string(&[Colour::Red, Colour::DeepBlue]).unwrap();
        assert_eq!(json, r#"["red","deep-blue"]"#);
        assert_eq!(serde_json::from_str::<Vec<Colour>>(&json).unwrap(), Colour::ALL);
        assert!(serde_json::from_str::<Colour>("\"green\"").unwrap_err().to_string().contains("red, deep-blue"));
    }
}
