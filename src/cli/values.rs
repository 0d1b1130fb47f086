//! clap's view of the library's choice enums: the library types stay free of clap, and each flag
//! parses into the library type through a cli-local mirror that carries the names and help.

use clap::builder::TypedValueParser;

/// A clap `ValueEnum` mirror `$cli` of the library enum `$lib` (same variants) and `parser()`,
/// a `value_parser` that yields the library type.
macro_rules! choices {
    ($cli:ident => $lib:ty { $($(#[$m:meta])* $v:ident),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
        pub enum $cli {
            $($(#[$m])* $v),*
        }
        impl From<$cli> for $lib {
            fn from(c: $cli) -> Self {
                match c {
                    $($cli::$v => <$lib>::$v),*
                }
            }
        }
        impl $cli {
            pub fn parser() -> impl TypedValueParser<Value = $lib> {
                clap::builder::EnumValueParser::<$cli>::new().map(<$lib>::from)
            }
        }
    };
}

choices!(FormatChoice => whitebox::data::Format {
    /// Detect from the folder's contents.
    Auto,
    /// MNIST-family IDX files (`train-images-idx3-ubyte[.gz]`, …).
    Idx,
    /// CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`).
    Cifar10,
    /// CIFAR-100 binary (`train.bin`, `test.bin`; fine labels).
    Cifar100,
    /// `train/<class>/*.png|jpg` and `test/<class>/…` (or `val/`).
    Folder,
});

choices!(OptimizerChoice => whitebox::train::OptimizerKind { Adamw, Lion });

choices!(SslLossChoice => whitebox::model::ssl::SslLoss {
    /// SimDINO: coding-rate expansion + cosine compression (`MCRLoss`), no prototypes.
    Simdino,
    /// DINO: cross-entropy to the centred, sharpened teacher (`DINOLoss`), with prototypes.
    Dino,
});

choices!(PrecisionChoice => whitebox::model::bf16::Precision {
    /// Single precision throughout (the default and the tested reference).
    F32,
    /// GEMM inputs rounded to bf16, f32 accumulation (needs AVX512-BF16).
    Bf16,
});
