//! The model registry: a directory with one folder per model, each holding a
//! `model.toml` manifest (name, kind, version, files with their sha256 and
//! size, an optional self-test) and the files. A model is offered only when
//! every file is there and matches its digest (and size, when given).
//!
//! ```toml
//! name = "minilm"
//! kind = "sentence-embedding"
//! version = "2026.12.1"
//! [[files]]
//! path = "model.safetensors"
//! sha256 = "53aa5117..."
//! size = 90868376
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::InferenceError;
use crate::selftest::SelfTest;

/// Largest manifest read (a few lines, and the self-test's reference outputs).
pub const MAX_MANIFEST_BYTES: u64 = 512 * 1024;

/// What a model does, so callers know which runner loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Text in, L2-normalised sentence embedding out (BERT family).
    SentenceEmbedding,
    /// Text in, label and confidence out (a head over a sentence embedding).
    TextClassifier,
}

impl ModelKind {
    /// The name used in manifests and on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::SentenceEmbedding => "sentence-embedding",
            ModelKind::TextClassifier => "text-classifier",
        }
    }
}

/// One file of a model and its expected digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Relative to the model's folder.
    pub path: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Its length in bytes: required for a version the controller serves
    /// (a node reserves the space before downloading), optional by hand.
    #[serde(default)]
    pub size: Option<u64>,
}

/// A model's `model.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    pub kind: ModelKind,
    /// The version (1-64 letters, digits, '-', '_', '.', '+'): required for a
    /// version the controller serves, empty for a model copied in by hand.
    #[serde(default)]
    pub version: String,
    /// For a classifier: the embedding model it reads (a registry name).
    #[serde(default)]
    pub base: Option<String>,
    pub files: Vec<ModelFile>,
    /// Reference inputs and outputs the node checks after activating it.
    #[serde(default)]
    pub self_test: Option<SelfTest>,
}

impl ModelManifest {
    /// Parses and checks a manifest's text: the name, version, file paths and
    /// self-test (not the files themselves).
    ///
    /// # Errors
    /// What is wrong, to be fixed in the manifest.
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: ModelManifest = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        check_name(&m.name)?;
        if !m.version.is_empty() {
            check_version(&m.version)?;
        }
        if m.files.is_empty() {
            return Err("no [[files]]: list every file with its sha256".into());
        }
        for f in &m.files {
            if f.path.is_empty()
                || f.path == "model.toml"
                || Path::new(&f.path).components().any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!("file {:?}: a path inside the model's folder", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("file {:?}: sha256 must be 64 hex digits", f.path));
            }
        }
        if let Some(t) = &m.self_test {
            t.validate()?;
        }
        Ok(m)
    }

    /// Bytes of all files (those with a size).
    #[must_use]
    pub fn total_size(&self) -> u64 {
        self.files.iter().filter_map(|f| f.size).sum()
    }
}

/// 1-64 ASCII letters, digits or one of `extra`.
fn is_name(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// A model's name: it names a folder on the controller and on nodes.
///
/// # Errors
/// What to use instead.
pub fn check_name(name: &str) -> Result<(), String> {
    if is_name(name, "-_.") {
        Ok(())
    } else {
        Err(format!("model name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"))
    }
}

/// A model version named by its name and version (a desired state, a rollout).
///
/// # Errors
/// What to use instead.
pub fn check_model_ref(name: &str, version: &str) -> Result<(), String> {
    check_name(name).and_then(|()| check_version(version))
}

/// A model's version: it names a folder on the controller and on nodes.
///
/// # Errors
/// What to use instead.
pub fn check_version(version: &str) -> Result<(), String> {
    if is_name(version, "-_.+") {
        Ok(())
    } else {
        Err(format!("version {version:?}: use 1-64 letters, digits, '-', '_', '.' or '+', not starting with '.'"))
    }
}

/// A model whose files were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub manifest: ModelManifest,
    pub dir: PathBuf,
}

impl Model {
    /// The path of one of the model's files (`None` if the manifest does not list it).
    #[must_use]
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        self.manifest.files.iter().any(|f| f.path == name).then(|| self.dir.join(name))
    }
}

/// Every model of a directory, checked.
#[derive(Debug, Clone, Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, Model>,
    /// Models that were refused, with the reason (for logs and `ListModels`).
    refused: Vec<(String, String)>,
}

impl ModelRegistry {
    /// Reads every `*/model.toml` under `dir` and checks each model's files.
    /// A model that fails its check is refused (listed in [`Self::refused`])
    /// without stopping the others.
    ///
    /// # Errors
    /// When `dir` cannot be read.
    pub fn open(dir: &Path) -> Result<Self, InferenceError> {
        let entries = std::fs::read_dir(dir).map_err(|e| InferenceError::Registry {
            path: dir.to_owned(),
            reason: format!("{e}; point the model directory at a folder with one subfolder per model"),
        })?;
        let mut reg = ModelRegistry::default();
        let mut folders: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        folders.sort();
        for folder in folders.into_iter().filter(|p| p.join("model.toml").is_file()) {
            match load_model(&folder) {
                Ok(m) => {
                    if reg.models.contains_key(&m.manifest.name) {
                        reg.refused.push((
                            m.manifest.name.clone(),
                            format!("a second model named so in {}", folder.display()),
                        ));
                    } else {
                        reg.models.insert(m.manifest.name.clone(), m);
                    }
                }
                Err(e) => {
                    tracing::error!(folder = %folder.display(), error = %e, "Model refused.");
                    reg.refused.push((folder.display().to_string(), e.to_string()));
                }
            }
        }
        Ok(reg)
    }

    /// The model named `name`.
    ///
    /// # Errors
    /// `UnknownModel`, naming the models there are.
    pub fn get(&self, name: &str) -> Result<&Model, InferenceError> {
        self.models.get(name).ok_or_else(|| InferenceError::UnknownModel {
            name: name.to_owned(),
            available: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Names of the models offered.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// Models refused, with the reason.
    #[must_use]
    pub fn refused(&self) -> &[(String, String)] {
        &self.refused
    }
}

/// Reads and checks one model folder.
///
/// # Errors
/// A bad manifest, a missing file, a digest that does not match.
pub fn load_model(folder: &Path) -> Result<Model, InferenceError> {
    let path = folder.join("model.toml");
    let bad = |reason: String| InferenceError::Registry { path: path.clone(), reason };
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    let manifest = ModelManifest::parse(&text).map_err(bad)?;
    for f in &manifest.files {
        let file = folder.join(&f.path);
        let missing =
            |reason: String| InferenceError::MissingFile { model: manifest.name.clone(), file: file.clone(), reason };
        let len = std::fs::metadata(&file).map_err(|e| missing(e.to_string()))?.len();
        if f.size.is_some_and(|size| size != len) {
            return Err(missing(format!("{len} bytes, the manifest says {}", f.size.unwrap_or_default())));
        }
        let actual = sha256_file(&file).map_err(|e| missing(e.to_string()))?;
        if !actual.eq_ignore_ascii_case(f.sha256.trim()) {
            return Err(InferenceError::Checksum {
                model: manifest.name.clone(),
                file,
                expected: f.sha256.clone(),
                actual,
            });
        }
    }
    Ok(Model { manifest, dir: folder.to_owned() })
}

/// Lower-case hex sha256 of a file, read in 64 KiB pieces.
///
/// # Errors
/// When it cannot be read.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dir: &Path, name: &str, body: &[u8], digest: &str) {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("w.bin"), body).unwrap();
        std::fs::write(
            folder.join("model.toml"),
            format!(
                "name = \"{name}\"\nkind = \"text-classifier\"\n[[files]]\npath = \"w.bin\"\nsha256 = \"{digest}\"\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn good_models_are_offered_bad_ones_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        // sha256("abc")
        model(dir.path(), "good", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        model(dir.path(), "tampered", b"abd", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let reg = ModelRegistry::open(dir.path()).unwrap();
        assert_eq!(reg.names().collect::<Vec<_>>(), ["good"]);
        assert!(reg.get("good").unwrap().file("w.bin").is_some());
        assert_eq!(reg.refused().len(), 1);
        assert!(reg.refused()[0].1.contains("sha256"), "{:?}", reg.refused());
        let e = reg.get("tampered").unwrap_err().to_string();
        assert!(e.contains("tampered") && e.contains("good"), "{e}");
    }

    #[test]
    fn manifests_that_escape_or_lie_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("evil");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("model.toml"),
            "name = \"evil\"\nkind = \"text-classifier\"\n[[files]]\npath = \"../x\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        assert!(load_model(&folder).unwrap_err().to_string().contains("inside the model's folder"));
        std::fs::write(folder.join("model.toml"), "name = \"evil\"\nkind = \"llm\"\nfiles = []\n").unwrap();
        assert!(load_model(&folder).is_err());
        std::fs::write(
            folder.join("model.toml"),
            format!(
                "name = \"evil\"\nkind = \"text-classifier\"\n[[files]]\npath = \"gone\"\nsha256 = \"{}\"\n",
                "0".repeat(64)
            ),
        )
        .unwrap();
        assert!(matches!(load_model(&folder), Err(InferenceError::MissingFile { .. })));
    }

    #[test]
    fn versions_sizes_and_self_tests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("m");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("w.bin"), b"abc").unwrap();
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let manifest = |version: &str, size: u64, extra: &str| {
            format!(
                "name = \"m\"\nkind = \"text-classifier\"\nversion = \"{version}\"\n[[files]]\npath = \"w.bin\"\n\
                 sha256 = \"{digest}\"\nsize = {size}\n{extra}"
            )
        };
        std::fs::write(folder.join("model.toml"), manifest("1.0+b", 3, "")).unwrap();
        let m = load_model(&folder).unwrap();
        assert_eq!((m.manifest.version.as_str(), m.manifest.total_size()), ("1.0+b", 3));
        std::fs::write(folder.join("model.toml"), manifest("1.0", 4, "")).unwrap();
        assert!(load_model(&folder).unwrap_err().to_string().contains("3 bytes, the manifest says 4"));
        std::fs::write(folder.join("model.toml"), manifest("1 0", 3, "")).unwrap();
        assert!(load_model(&folder).unwrap_err().to_string().contains("version"));
        let test = "[self_test]\ntolerance = 0.0\n[[self_test.cases]]\ntext = \"x\"\nlabel = \"critical\"\n";
        std::fs::write(folder.join("model.toml"), manifest("2", 3, test)).unwrap();
        assert_eq!(load_model(&folder).unwrap().manifest.self_test.unwrap().cases.len(), 1);
        std::fs::write(folder.join("model.toml"), manifest("2", 3, "[self_test]\ntolerance = 0.0\ncases = []\n"))
            .unwrap();
        assert!(load_model(&folder).unwrap_err().to_string().contains("self_test"));
    }
}
