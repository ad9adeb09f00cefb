//! What a run pins of its pipeline: the manifest, where its relative paths start, the
//! command-line layers and the run's parameters, stored as JSON with the run; and the spec's
//! hash, which tells a changed
//! spec from the one a pipeline last ran. Planning a pinned spec is the engine's
//! (`engine::launch::PinnedPlan`); storing it is the store's.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::Manifest;

/// What a run pins: the manifest, where its relative paths start, and the command-line layers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pinned {
    pub manifest: Manifest,
    pub base_dir: PathBuf,
    #[serde(default)]
    pub env: IndexMap<String, String>,
    #[serde(default)]
    pub skip: Vec<String>,
    /// The run's parameters, checked against `spec.params` and with defaults filled in: a resume
    /// uses these, not new ones. Not part of the spec's hash, so they never change the generation.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, String>,
}

impl Pinned {
    pub fn new(
        manifest: Manifest,
        base_dir: &Path,
        env: IndexMap<String, String>,
        skip: Vec<String>,
    ) -> Self {
        let base_dir = if base_dir.is_absolute() {
            base_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|c| c.join(base_dir))
                .unwrap_or_else(|_| base_dir.to_path_buf())
        };
        Self {
            manifest,
            base_dir,
            env,
            skip,
            params: IndexMap::new(),
        }
    }

    /// The same, with the run's parameter values (checked by [`super::params::resolve`]).
    pub fn with_params(mut self, params: IndexMap<String, String>) -> Self {
        self.params = params;
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a run's pinned spec back (what [`Pinned::to_json`] wrote in the run's row).
    pub fn from_json(json: &str) -> Result<Pinned, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Ids of the jobs that may fail (`continueOnError`, their own or the defaults'), known
    /// without planning the spec (which needs its environment).
    pub fn continue_on_error(&self) -> Vec<String> {
        let spec = &self.manifest.spec;
        let default = spec.defaults.continue_on_error;
        spec.jobs
            .iter()
            .filter(|j| j.continue_on_error.or(default).unwrap_or(false))
            .map(|j| j.id.as_str().to_owned())
            .collect()
    }
}

/// The pipeline's canonical spec, whose hash is its identity (a change is a new generation):
/// stable JSON of `spec` without the operator's switches that must not start a run by
/// themselves: `suspend` (suspending and resuming a pipeline) and `history` (how long its old runs
/// are kept). The pinned spec keeps both.
pub fn canonical_spec(manifest: &Manifest) -> String {
    if manifest.spec.suspend || manifest.spec.history.is_some() {
        let mut spec = manifest.spec.clone();
        spec.suspend = false;
        spec.history = None;
        return serde_json::to_string(&spec).unwrap_or_default();
    }
    serde_json::to_string(&manifest.spec).unwrap_or_default()
}

/// Hex SHA-256 of the canonical spec.
pub fn spec_hash(manifest: &Manifest) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(canonical_spec(manifest).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let text = format!(
            "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n{extra}  jobs: [{{id: a, command: \"true\"}}]\n"
        );
        serde_saphyr::from_str(&text).expect("manifest")
    }

    #[test]
    fn operator_switches_are_not_a_new_generation_but_a_job_change_is() {
        let plain = spec_hash(&manifest(""));
        assert_eq!(spec_hash(&manifest("  suspend: true\n")), plain);
        assert_eq!(
            spec_hash(&manifest("  history: {keepRuns: 5, keepFor: 1d}\n")),
            plain
        );
        assert_ne!(spec_hash(&manifest("  failFast: true\n")), plain);
    }
}
