//! The deployment pipeline of `algorithms.md` §1–§2: read an algorithm folder (or zip), validate
//! its `pyproject.toml`, sort its files into code and assets, build the module zip, and compose
//! the algorithm record. The deployer actor drives these steps and owns the storage writes.

pub mod module;
pub mod params;
pub mod pyproject;
pub mod record;
pub mod scan;
pub mod zip_input;

/// Overrides an HTTP deploy may pass (`rest-api.md` D1).
#[derive(Debug, Clone, Default)]
pub struct DeployOverrides {
    pub algorithm_name: Option<String>,
    pub algorithm_major_version: Option<String>,
    pub removable: Option<bool>,
    pub exportable: Option<bool>,
}

/// Who asked: the flag rules of `algorithms.md` §2.8 differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploySource {
    /// `POST /api/v0/deploy/local[-async]` of a folder.
    HttpFolder,
    /// `POST /api/v0/deploy/local[-async]` of a `.zip`.
    HttpZip,
    /// `compox deploy-algorithms`.
    Cli,
}
