//! Job files for `skelpi run JOB.toml`: a skeleton tree, and where its
//! inputs come from (a generator or a file).
//!
//! ```toml
//! # The seed's pmap: 200,000 random floats in 8 chunks, 50 erf evaluations per element.
//! skeleton = "map(8, seq(erf_burn(50)))"
//!
//! [input]
//! generate = "random"   # random | range | constant
//! items = 1             # arrays in the input stream
//! length = 200000       # floats per array
//! ```
//! The tree may also be written as a table (`[skeleton.farm] ...`, the
//! serde form of [`Skeleton`]). Instead of a generator, `file = "in.json"`
//! reads a JSON array of arrays of numbers, `file = "out.jsonl"` the
//! results of an earlier `skelpi run --out` (one `{"index": i, "data":
//! [...]}` per line, see [`result_line`]), and any other file one array
//! per line, numbers separated by commas or spaces (blank lines and lines
//! starting with `#` are skipped). JSON has no NaN or infinities: in JSON
//! files they are the strings `"NaN"`, `"Infinity"` and `"-Infinity"`. A
//! relative path is relative to the job file.

use rand::{Rng, SeedableRng};
use serde::Deserialize;
use skelpi_proto::Array;
use skelpi_proto::frame::HARD_MAX_FRAME;
use skelpi_proto::skeleton::Skeleton;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a job file cannot be used.
#[derive(Debug, Error)]
pub enum JobFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid job.
    #[error("{path} is not a valid job file: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place in the file.
        message: String,
    },
}

/// A parsed job file.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The tree to run.
    pub skeleton: Skeleton,
    /// Its inputs.
    pub input: Input,
}

/// Where the inputs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Generated as the job asks for them.
    Generate(Generator),
    /// Read from a file (already loaded).
    Arrays(Vec<Array>),
}

/// An input generator (as `[input]` gives it: see `RawInput::source`).
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    /// `random` (uniform in [min, max)), `range` (0, 1, 2... continuing
    /// across arrays) or `constant` (every element `min`).
    pub generate: GeneratorKind,
    /// Number of arrays.
    pub items: usize,
    /// Floats per array.
    pub length: usize,
    /// Lower bound (and the constant).
    pub min: f64,
    /// Upper bound.
    pub max: f64,
    /// Seed of `random`.
    pub seed: u64,
}

/// Kinds of generated inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorKind {
    /// Uniform random floats.
    Random,
    /// Consecutive integers.
    Range,
    /// One value everywhere.
    Constant,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn seed() -> u64 {
    2010
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    skeleton: RawSkeleton,
    input: RawInput,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSkeleton {
    Text(String),
    Tree(Skeleton),
}

/// `[input]` as written: a generator's fields or a file (checked after
/// parsing, so that a misspelt field or kind is named with its place).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    file: Option<PathBuf>,
    generate: Option<GeneratorKind>,
    items: Option<usize>,
    length: Option<usize>,
    min: Option<f64>,
    max: Option<f64>,
    seed: Option<u64>,
}

/// Where `[input]` says the inputs come from.
enum InputSource {
    File(PathBuf),
    Generate(Generator),
}

impl RawInput {
    fn source(self) -> Result<InputSource, String> {
        let generator_fields = [
            self.items.is_some(),
            self.length.is_some(),
            self.min.is_some(),
            self.max.is_some(),
            self.seed.is_some(),
        ];
        match (self.file, self.generate) {
            (Some(_), Some(_)) => Err("[input] has both file and generate: keep one".into()),
            (Some(file), None) if generator_fields.contains(&true) => Err(format!(
                "[input] reads {}: items, length, min, max and seed are for generate",
                file.display()
            )),
            (Some(file), None) => Ok(InputSource::File(file)),
            (None, None) => Err(
                "[input] needs generate = \"random\" | \"range\" | \"constant\" (with length), \
                 or file = PATH"
                    .into(),
            ),
            (None, Some(generate)) => Ok(InputSource::Generate(Generator {
                generate,
                items: self.items.unwrap_or_else(one),
                length: self
                    .length
                    .ok_or("[input] generate needs length (floats per array)")?,
                min: self.min.unwrap_or_default(),
                max: self.max.unwrap_or_else(one_f),
                seed: self.seed.unwrap_or_else(seed),
            })),
        }
    }
}

/// `message` (serde's, through toml), with the closest of the names it
/// expected when it names an unknown field or variant: "unknown variant
/// `rnage`, expected one of `random`, `range`" gets "(did you mean
/// `range`?)".
fn with_suggestion(message: String) -> String {
    let Some(at) = message
        .find("unknown field `")
        .or_else(|| message.find("unknown variant `"))
    else {
        return message;
    };
    let rest = &message[at..];
    let quoted: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let Some((given, expected)) = quoted.split_first() else {
        return message;
    };
    let best = expected
        .iter()
        .map(|e| (strsim::jaro(given, e), e))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, e)) => format!("{} (did you mean `{e}`?)", message.trim_end()),
        None => message,
    }
}

impl Generator {
    /// The arrays, produced one at a time.
    pub fn arrays(&self) -> impl Iterator<Item = Array> + use<> {
        let g = self.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(g.seed);
        let mut next = 0.0f64;
        (0..g.items).map(move |_| {
            let data = (0..g.length)
                .map(|_| match g.generate {
                    GeneratorKind::Random if g.max > g.min => rng.random_range(g.min..g.max),
                    GeneratorKind::Random | GeneratorKind::Constant => g.min,
                    GeneratorKind::Range => {
                        next += 1.0;
                        next - 1.0
                    }
                })
                .collect();
            Array::list(data)
        })
    }
}

impl Input {
    /// Number of arrays.
    pub fn len(&self) -> usize {
        match self {
            Input::Generate(g) => g.items,
            Input::Arrays(a) => a.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The arrays, in order.
    pub fn arrays(self) -> Box<dyn Iterator<Item = Array>> {
        match self {
            Input::Generate(g) => Box::new(g.arrays()),
            Input::Arrays(a) => Box::new(a.into_iter()),
        }
    }
}

/// Reads and checks a job file (and its input file, if any).
pub fn load(path: &Path) -> Result<Job, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses a job file's text; `path` names it in errors and anchors
/// relative input paths.
pub fn parse(text: &str, path: &Path) -> Result<Job, JobFileError> {
    let invalid = |message: String| JobFileError::Invalid {
        path: path.to_owned(),
        message,
    };
    let raw: RawJob = toml::from_str(text).map_err(|e| invalid(with_suggestion(e.to_string())))?;
    let skeleton = match raw.skeleton {
        RawSkeleton::Text(t) => t.parse().map_err(|e| invalid(format!("skeleton: {e}")))?,
        RawSkeleton::Tree(t) => t,
    };
    let input = match raw.input.source().map_err(invalid)? {
        InputSource::Generate(g) => {
            let what = format!("[input] length = {}", g.length);
            check_size(&skeleton, g.length, &what).map_err(invalid)?;
            Input::Generate(g)
        }
        InputSource::File(file) => {
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let arrays = read_arrays(&file)?;
            for (i, a) in arrays.iter().enumerate() {
                let what = format!("item {i} of {}", file.display());
                check_size(&skeleton, a.data.len(), &what).map_err(invalid)?;
            }
            Input::Arrays(arrays)
        }
    };
    Ok(Job { skeleton, input })
}

/// Floats one array may hold to travel in one frame (the 16 MiB hard cap,
/// less room for the message's head).
pub const MAX_FRAME_FLOATS: usize = (HARD_MAX_FRAME as usize - 64 * 1024) / 8;

/// Floats one input item may hold at all: 1 GiB of them.
pub const MAX_ITEM_FLOATS: usize = 1 << 27;

/// Checks that items of `len` floats can run as `tree`: held in memory,
/// and every piece the tree sends in one frame. `what` names the item.
pub fn check_size(tree: &Skeleton, len: usize, what: &str) -> Result<(), String> {
    let mib = |floats: usize| floats as f64 * 8.0 / f64::from(1 << 20);
    if len > MAX_ITEM_FLOATS {
        return Err(format!(
            "{what}: {len} floats ({:.0} MiB) are more than an item may hold \
             ({MAX_ITEM_FLOATS} floats, 1 GiB); use more, smaller items",
            mib(len)
        ));
    }
    let piece = largest_piece(tree, len);
    if piece > MAX_FRAME_FLOATS {
        return Err(format!(
            "{what}: {tree} sends {piece} floats ({:.1} MiB) at once, more than a frame \
             carries ({MAX_FRAME_FLOATS} floats, {} MiB); use smaller items, or split \
             each one with map(n, ...) into pieces that fit",
            mib(piece),
            HARD_MAX_FRAME >> 20
        ));
    }
    Ok(())
}

/// The most floats of an item of `len` that `tree` sends in one frame,
/// if every kernel keeps its input's size: a map sends its chunks (and
/// puts them together on the master), anything else the item whole.
fn largest_piece(tree: &Skeleton, len: usize) -> usize {
    match tree {
        Skeleton::Map { parts, worker } => {
            largest_piece(worker, len.div_ceil((*parts as usize).max(1)))
        }
        Skeleton::Pipe(stages) => stages
            .iter()
            .map(|s| largest_piece(s, len))
            .max()
            .unwrap_or(len),
        Skeleton::Farm { worker, .. } => largest_piece(worker, len),
        Skeleton::Feedback { body, .. } => largest_piece(body, len),
        _ => len,
    }
}

/// Reads input arrays from a JSON or text file (see the module docs).
pub fn read_arrays(path: &Path) -> Result<Vec<Array>, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| JobFileError::Invalid {
        path: path.to_owned(),
        message,
    };
    if path.extension().is_some_and(|e| e == "json") {
        let lists: Vec<Vec<JsonFloat>> = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("expected a JSON array of arrays of numbers: {e}")))?;
        return Ok(lists.into_iter().map(floats).collect());
    }
    if path.extension().is_some_and(|e| e == "jsonl") {
        return text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                let r: ResultLine = serde_json::from_str(line).map_err(|e| {
                    invalid(format!(
                        "line {}: expected {{\"index\": i, \"data\": [...]}}: {e}",
                        n + 1
                    ))
                })?;
                Ok(floats(r.data))
            })
            .collect();
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let data = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| {
                w.parse::<f64>()
                    .map_err(|_| invalid(format!("line {}: {w:?} is not a number", n + 1)))
            })
            .collect::<Result<Vec<f64>, _>>()?;
        out.push(Array::list(data));
    }
    Ok(out)
}

/// One result as `skelpi run --out` writes it: `{"index": i, "data":
/// [...]}`, non-finite values as the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"` (JSON has no such numbers), so nothing is lost and
/// [`read_arrays`] reads it back.
pub fn result_line(index: u64, data: &[f64]) -> String {
    let data: Vec<serde_json::Value> = data.iter().map(|&v| json_float(v)).collect();
    serde_json::json!({ "index": index, "data": data }).to_string()
}

/// `v` in JSON: a number, or a string for NaN and the infinities.
fn json_float(v: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(v) {
        Some(n) => serde_json::Value::Number(n),
        None if v.is_nan() => "NaN".into(),
        None if v > 0.0 => "Infinity".into(),
        None => "-Infinity".into(),
    }
}

/// A float in JSON: a number, or one of the strings [`result_line`]
/// writes for non-finite values.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonFloat {
    Number(f64),
    Named(NonFinite),
}

#[derive(Deserialize)]
enum NonFinite {
    NaN,
    Infinity,
    #[serde(rename = "-Infinity")]
    MinusInfinity,
}

/// A line of `--out` (its index is not needed to read the data back).
#[derive(Deserialize)]
struct ResultLine {
    data: Vec<JsonFloat>,
}

fn floats(list: Vec<JsonFloat>) -> Array {
    let value = |f| match f {
        JsonFloat::Number(v) => v,
        JsonFloat::Named(NonFinite::NaN) => f64::NAN,
        JsonFloat::Named(NonFinite::Infinity) => f64::INFINITY,
        JsonFloat::Named(NonFinite::MinusInfinity) => f64::NEG_INFINITY,
    };
    Array::list(list.into_iter().map(value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pmap_job() {
        let job = parse(
            "skeleton = \"map(8, seq(erf_burn(50)))\"\n[input]\ngenerate = \"random\"\nlength = 10\nmin = -3\nmax = 3\n",
            Path::new("j.toml"),
        )
        .unwrap();
        assert_eq!(job.skeleton.to_string(), "map(8, seq(erf_burn(50)))");
        let arrays: Vec<Array> = job.input.arrays().collect();
        assert_eq!(arrays.len(), 1);
        assert_eq!(arrays[0].data.len(), 10);
        assert!(arrays[0].data.iter().all(|v| (-3.0..3.0).contains(v)));
    }

    #[test]
    fn a_tree_as_a_table_and_a_range() {
        let job = parse(
            "[skeleton.farm]\nworker = { seq = { name = \"square\" } }\nreplicas = 3\n\
             [input]\ngenerate = \"range\"\nitems = 2\nlength = 3\n",
            Path::new("j.toml"),
        )
        .unwrap();
        assert_eq!(job.skeleton.to_string(), "farm(seq(square), 3)");
        let data: Vec<Vec<f64>> = job.input.arrays().map(|a| a.data).collect();
        assert_eq!(data, [vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let e = parse(
            "skeleton = \"pipe(seq(x)\"\n[input]\ngenerate = \"range\"\nlength = 1\n",
            Path::new("bad.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("bad.toml") && e.to_string().contains("')'"),
            "{e}"
        );
        let e = parse("skeleton = \"seq(x)\"\n", Path::new("j.toml")).unwrap_err();
        assert!(e.to_string().contains("input"), "{e}");
        let e = parse(
            "skeleton = \"seq(x)\"\n[input]\nfile = \"/nonexistent/in.txt\"\n",
            Path::new("j.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/in.txt"), "{e}");
    }

    #[test]
    fn a_misspelt_field_or_kind_is_named_at_its_line_with_the_closest_name() {
        let err = |text: &str| parse(text, Path::new("j.toml")).unwrap_err().to_string();
        let e = err("skeleton = \"seq(x)\"\n[input]\ngenerate = \"rnage\"\nlength = 1\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown variant `rnage`"), "{e}");
        assert!(e.ends_with("(did you mean `range`?)"), "{e}");
        let e = err("skeleton = \"seq(x)\"\n[input]\ngenerate = \"range\"\nlenght = 1\n");
        assert!(
            e.contains("line 4") && e.contains("unknown field `lenght`"),
            "{e}"
        );
        assert!(e.ends_with("(did you mean `length`?)"), "{e}");
        // Nothing close: no guess.
        let e = err("skeleton = \"seq(x)\"\n[input]\ngenerate = \"range\"\nzzz = 1\n");
        assert!(!e.contains("did you mean"), "{e}");
        // What is missing or contradictory is said in words.
        let e = err("skeleton = \"seq(x)\"\n[input]\ngenerate = \"range\"\n");
        assert!(e.contains("generate needs length"), "{e}");
        let e = err("skeleton = \"seq(x)\"\n[input]\nitems = 3\n");
        assert!(e.contains("needs generate = "), "{e}");
        let e = err("skeleton = \"seq(x)\"\n[input]\nfile = \"a\"\ngenerate = \"range\"\n");
        assert!(e.contains("both file and generate"), "{e}");
    }

    #[test]
    fn results_keep_nan_and_infinities_and_read_back_as_inputs() {
        let dir = std::env::temp_dir().join(format!("skelpi-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = [1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e308];
        let line = result_line(7, &data);
        assert_eq!(
            line,
            r#"{"data":[1.5,"NaN","Infinity","-Infinity",-0.0,1e+308],"index":7}"#
        );
        std::fs::write(
            dir.join("out.jsonl"),
            format!("{line}\n{}\n", result_line(8, &[])),
        )
        .unwrap();
        let back = read_arrays(&dir.join("out.jsonl")).unwrap();
        assert_eq!(back.len(), 2);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let nan = f64::NAN.to_bits();
        let mut want = bits(&data);
        want[1] = nan;
        assert_eq!(bits(&back[0].data), want, "every value, bit for bit");
        assert!(back[1].data.is_empty());
        // Finite values of every kind (subnormals, extremes) come back to
        // the bit.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let finite: Vec<f64> = (0..2000)
            .map(|_| f64::from_bits(rng.random()))
            .filter(|v| v.is_finite())
            .collect();
        std::fs::write(dir.join("many.jsonl"), result_line(0, &finite)).unwrap();
        let back = read_arrays(&dir.join("many.jsonl")).unwrap();
        assert_eq!(bits(&back[0].data), bits(&finite));
        std::fs::write(dir.join("in.json"), r#"[[1, "NaN", "-Infinity"]]"#).unwrap();
        let json = read_arrays(&dir.join("in.json")).unwrap();
        assert!(json[0].data[1].is_nan() && json[0].data[2] == f64::NEG_INFINITY);
        std::fs::write(
            dir.join("bad.jsonl"),
            "{\"index\": 0, \"data\": [\"nan\"]}\n",
        )
        .unwrap();
        let e = read_arrays(&dir.join("bad.jsonl")).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_and_json_input_files() {
        let dir = std::env::temp_dir().join(format!("skelpi-jobfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("in.txt"), "# two arrays\n1, 2 3\n\n-4.5\n").unwrap();
        std::fs::write(dir.join("in.json"), "[[1, 2, 3], [-4.5], []]").unwrap();
        std::fs::write(dir.join("bad.txt"), "1, two\n").unwrap();
        let text: Vec<Vec<f64>> = read_arrays(&dir.join("in.txt"))
            .unwrap()
            .into_iter()
            .map(|a| a.data)
            .collect();
        assert_eq!(text, [vec![1.0, 2.0, 3.0], vec![-4.5]]);
        let json = read_arrays(&dir.join("in.json")).unwrap();
        assert_eq!(json.len(), 3);
        let e = read_arrays(&dir.join("bad.txt")).unwrap_err();
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("\"two\""),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
