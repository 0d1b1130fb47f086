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

/// The valid values of a numeric flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// An integer ≥ 1 (`usize`).
    Count,
    /// An integer ≥ 1 (`u32`).
    Count32,
    /// A finite number > 0.
    Positive,
    /// A finite number ≥ 0.
    NonNegative,
    /// 0 ≤ x < 1.
    UnitBelowOne,
    /// 0 ≤ x ≤ 1.
    Unit,
    /// 0 < x < 1.
    UnitOpen,
    /// Any finite number (`f32`).
    Finite32,
    /// Every value of the flag's type (seeds, indices, and counts where 0 means "none" or "off").
    Any,
}

/// The range of every numeric flag, by flag id; `command.flag` overrides `flag` for the one
/// subcommand whose flag means something else. The CLI checks these before any work, names the flag,
/// the value and the range, and shows the range in `--help`.
pub const RANGES: &[(&str, Range)] = {
    use Range::*;
    &[
        // sizes and counts of things
        ("batch_size", Count),
        ("block_size", Count),
        ("context", Count),
        ("count", Count),
        ("depth", Count),
        ("dim", Count),
        ("epochs", Count),
        ("eval_interval", Count),
        ("eval_iters", Count),
        ("grad_accum", Count),
        ("head_bottleneck", Count),
        ("head_hidden", Count),
        ("head_layers", Count),
        ("heads", Count),
        ("hidden_size", Count),
        ("report.images", Count),
        ("k", Count),
        ("knn_bank", Count),
        ("knn_k", Count),
        ("layers", Count),
        ("limit", Count),
        ("local_size", Count),
        ("max_iters", Count),
        ("max_new_tokens", Count),
        ("measure_images", Count),
        ("n_embd", Count),
        ("n_head", Count),
        ("n_layer", Count),
        ("out_dim", Count),
        ("seq_len", Count),
        ("size", Count),
        ("sizes", Count),
        ("steps", Count),
        ("stop_after", Count),
        ("test_limit", Count),
        ("top_k", Count),
        ("train_limit", Count),
        ("cell", Count32),
        ("scale", Count32),
        // rates, temperatures, tolerances and time
        ("coeff", Positive),
        ("eps", Positive),
        ("eps_sq", Positive),
        ("knn_temperature", Positive),
        ("lr", Positive),
        ("max_seconds", Positive),
        ("official_eps", Positive),
        ("student_temp", Positive),
        ("teacher_temp", Positive),
        ("temperature", Positive),
        ("warmup_teacher_temp", Positive),
        ("clip_grad_norm", NonNegative),
        ("generate.temperature", NonNegative),
        ("min_lr", NonNegative),
        ("warmup_epochs", NonNegative),
        ("weight_decay", NonNegative),
        ("weight_decay_end", NonNegative),
        // fractions and moments
        ("beta1", UnitBelowOne),
        ("beta2", UnitBelowOne),
        ("label_smoothing", UnitBelowOne),
        ("mask_ratio", UnitBelowOne),
        ("center_momentum", Unit),
        ("momentum_teacher", Unit),
        ("mask_rate", UnitOpen),
        ("val_fraction", UnitOpen),
        ("mask_threshold", Finite32),
        // every value valid
        ("crop_padding", Any),
        ("freeze_last_layer", Any),
        ("generate.top_k", Any),
        ("layer", Any),
        ("local_crops", Any),
        ("measure_every", Any),
        ("seed", Any),
        ("warmup", Any),
        ("warmup_iters", Any),
        ("warmup_teacher_temp_epochs", Any),
    ]
};

impl Range {
    /// The range in words, as `--help` and the errors show it.
    pub fn describe(self) -> &'static str {
        match self {
            Range::Count | Range::Count32 => "an integer ≥ 1",
            Range::Positive => "a finite number > 0",
            Range::NonNegative => "a finite number ≥ 0",
            Range::UnitBelowOne => "0 ≤ x < 1",
            Range::Unit => "0 ≤ x ≤ 1",
            Range::UnitOpen => "0 < x < 1",
            Range::Finite32 => "a finite number",
            Range::Any => "any value",
        }
    }

    /// The parser that accepts exactly this range; `None` for [`Range::Any`] (the flag's own).
    pub fn parser(self) -> Option<clap::builder::ValueParser> {
        use clap::builder::ValueParser;
        /// `s` parsed as a `T` for which `ok` holds.
        fn checked<T>(s: &str, ok: fn(&T) -> bool, r: Range) -> Result<T, String>
        where
            T: std::str::FromStr + std::fmt::Display,
            T::Err: std::fmt::Display,
        {
            let v: T = s.trim().parse().map_err(|e: T::Err| e.to_string())?;
            if ok(&v) {
                Ok(v)
            } else {
                Err(format!("{v} is out of range: expected {}", r.describe()))
            }
        }
        let p = |f: fn(&str) -> Result<f64, String>| Some(ValueParser::new(f));
        match self {
            Range::Count => Some(ValueParser::new(|s: &str| {
                checked::<usize>(s, |v| *v >= 1, Range::Count)
            })),
            Range::Count32 => Some(ValueParser::new(|s: &str| {
                checked::<u32>(s, |v| *v >= 1, Range::Count32)
            })),
            Range::Positive => p(|s| checked(s, |v| v.is_finite() && *v > 0.0, Range::Positive)),
            Range::NonNegative => {
                p(|s| checked(s, |v| v.is_finite() && *v >= 0.0, Range::NonNegative))
            }
            Range::UnitBelowOne => {
                p(|s| checked(s, |v| (0.0..1.0).contains(v), Range::UnitBelowOne))
            }
            Range::Unit => p(|s| checked(s, |v| (0.0..=1.0).contains(v), Range::Unit)),
            Range::UnitOpen => p(|s| checked(s, |v| *v > 0.0 && *v < 1.0, Range::UnitOpen)),
            Range::Finite32 => Some(ValueParser::new(|s: &str| {
                checked::<f32>(s, |v| v.is_finite(), Range::Finite32)
            })),
            Range::Any => None,
        }
    }
}

/// The range of flag `id` of subcommand `command`, if the table has one.
pub fn range_of(command: &str, id: &str) -> Option<Range> {
    let qualified = format!("{command}.{id}");
    let find = |key: &str| RANGES.iter().find(|(k, _)| *k == key).map(|&(_, r)| r);
    find(&qualified).or_else(|| find(id))
}

/// `cmd` and all its subcommands with the range table's parsers and the ranges in their help.
/// A numeric flag missing from the table, or an entry whose type differs from the flag's, is a
/// programming error that every CLI test finds.
pub fn with_ranges(mut cmd: clap::Command) -> clap::Command {
    use clap::builder::ValueParser;
    let name = cmd.get_name().to_string();
    let numeric = [
        ValueParser::from(clap::value_parser!(usize)).type_id(),
        ValueParser::from(clap::value_parser!(u32)).type_id(),
        ValueParser::from(clap::value_parser!(u64)).type_id(),
        ValueParser::from(clap::value_parser!(f64)).type_id(),
        ValueParser::from(clap::value_parser!(f32)).type_id(),
    ];
    let mut ranged = Vec::new();
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        match range_of(&name, id) {
            Some(r) => ranged.push((id.to_string(), r)),
            None => assert!(
                !numeric.contains(&a.get_value_parser().type_id()),
                "`{name} --{id}` is numeric but has no entry in the range table (cli/values.rs)"
            ),
        }
    }
    for (id, r) in ranged {
        let Some(parser) = r.parser() else { continue };
        cmd = cmd.mut_arg(&id, |a| {
            assert_eq!(
                a.get_value_parser().type_id(),
                parser.type_id(),
                "`{name} --{id}`: the range table's {r:?} has another type than the flag"
            );
            let note = format!("[range: {}]", r.describe());
            let help = a.get_help().map_or(note.clone(), |h| format!("{h} {note}"));
            let long = a.get_long_help().map(|h| format!("{h}\n\n{note}"));
            let a = a.value_parser(parser).help(help);
            match long {
                Some(l) => a.long_help(l),
                None => a,
            }
        });
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for s in subs {
        cmd = cmd.mut_subcommand(&s, with_ranges);
    }
    cmd
}
