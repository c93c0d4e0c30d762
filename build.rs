//! Links the worker's embedded CPython with an rpath to the interpreter pyo3 was configured with.
//!
//! Without it the loader may pick a different `libpython3.x.so` (for example the distribution's)
//! than the one whose headers and `sys.version` pyo3 built against.

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=COMPOX_PYTHON_LIB_DIR={dir}");
    }
    if let Some(exe) = &config.executable {
        println!("cargo:rustc-env=COMPOX_BUILD_PYTHON={exe}");
    }
    println!(
        "cargo:rustc-env=COMPOX_BUILD_PYTHON_VERSION={}.{}",
        config.version.major, config.version.minor
    );
}
