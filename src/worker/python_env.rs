//! Setting up the embedded interpreter of a worker (or of the deploy tool): which environment's
//! packages algorithms import (`inference.python_env`, else `VIRTUAL_ENV`, else the interpreter
//! the binary was built against), and where the `compox` package comes from.

use pyo3::prelude::*;
use pyo3::types::PyList;
use std::path::{Path, PathBuf};

/// Where the repository's `python/` folder was at build time; used when `compox` is not
/// installed in the environment (development checkouts).
const DEV_PACKAGE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

/// The environment a worker should use, from the explicit setting or `VIRTUAL_ENV`.
pub fn resolve_env(setting: Option<&str>) -> Option<PathBuf> {
    setting
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("VIRTUAL_ENV")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .map(|p| crate::config::absolute(&p))
}

#[derive(Debug, Clone)]
pub struct PythonInfo {
    pub version: String,
    pub prefix: String,
    pub executable: String,
}

/// Starts CPython and points it at `env` (a virtual environment) the way `venv` would: its
/// `site-packages` replace the base interpreter's, and `sys.prefix`/`sys.executable` name it.
pub fn init(env: Option<&Path>) -> PyResult<PythonInfo> {
    pyo3::prepare_freethreaded_python();
    Python::with_gil(|py| {
        let sys = py.import("sys")?;
        let site = py.import("site")?;
        if let Some(env) = env {
            let ver: (u8, u8) = sys
                .getattr("version_info")?
                .extract::<(u8, u8, u8, String, u8)>()
                .map(|v| (v.0, v.1))?;
            let site_packages = env.join(format!("lib/python{}.{}/site-packages", ver.0, ver.1));
            if !site_packages.is_dir() {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "python environment {} has no {}; is it a virtual environment of Python {}.{}?",
                    env.display(),
                    site_packages.display(),
                    ver.0,
                    ver.1
                )));
            }
            let base: Vec<String> = site.call_method0("getsitepackages")?.extract()?;
            let user: Option<String> = site
                .call_method0("getusersitepackages")
                .ok()
                .and_then(|u| u.extract().ok());
            let path = sys.getattr("path")?.downcast_into::<PyList>()?;
            let kept: Vec<String> = path
                .extract::<Vec<String>>()?
                .into_iter()
                .filter(|p| !base.contains(p) && Some(p) != user.as_ref())
                .collect();
            sys.setattr("path", PyList::new(py, kept)?)?;
            site.call_method1("addsitedir", (site_packages.display().to_string(),))?;
            let env_text = env.display().to_string();
            sys.setattr("prefix", &env_text)?;
            sys.setattr("exec_prefix", &env_text)?;
            sys.setattr("executable", env.join("bin/python").display().to_string())?;
        } else if let Some(exe) = option_env!("COMPOX_BUILD_PYTHON") {
            sys.setattr("executable", exe)?;
        }
        if py.import("compox").is_err() {
            let path = sys.getattr("path")?.downcast_into::<PyList>()?;
            path.insert(0, DEV_PACKAGE_DIR)?;
        }
        Ok(PythonInfo {
            version: sys.getattr("version")?.extract()?,
            prefix: sys.getattr("prefix")?.extract()?,
            executable: sys.getattr("executable")?.extract()?,
        })
    })
}
