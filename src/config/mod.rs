//! Settings model of `platform.md` §2: every section and field of the original with the same names
//! and defaults, plus this server's additions (`host`, `deploy_allowed_paths`, the `filesystem`
//! storage provider, `inference.python_env`, `inference.stop_grace_period_s`).
//!
//! Loading (sources, precedence, override grammars) lives in [`load`]; dynamic path prefixes in
//! [`paths`]. Every section rejects unknown keys, like the original's `extra=forbid`.

pub mod load;
pub mod paths;

/// Lax scalars inside tagged unions. Serde buffers a union's fields before the variant is known,
/// which bypasses the `config` crate's string-to-number coercion; environment variables and CLI
/// overrides arrive as strings, so these accept both.
mod lax {
    use serde::{de::Error, Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
    }

    pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64>,
    {
        let v = match Scalar::deserialize(d)? {
            Scalar::Int(i) => i,
            Scalar::Bool(b) => i64::from(b),
            Scalar::Float(f) if f.fract() == 0.0 => f as i64,
            Scalar::Text(t) => t
                .trim()
                .parse()
                .map_err(|_| D::Error::custom(format!("invalid integer {t:?}")))?,
            Scalar::Float(f) => return Err(D::Error::custom(format!("invalid integer {f}"))),
        };
        T::try_from(v).map_err(|_| D::Error::custom(format!("integer {v} out of range")))
    }

    pub fn optional_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64>,
    {
        let v: Option<serde_json::Value> = Option::deserialize(d)?;
        match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => number(v).map(Some).map_err(D::Error::custom),
        }
    }

    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Bool(b) => Ok(b),
            Scalar::Int(0) => Ok(false),
            Scalar::Int(1) => Ok(true),
            Scalar::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
                "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
                _ => Err(D::Error::custom(format!("invalid boolean {t:?}"))),
            },
            _ => Err(D::Error::custom("invalid boolean")),
        }
    }
}

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

pub use load::{
    load_settings, parse_loose_overrides, parse_strict_overrides, ConfigError, Overrides,
};

/// Version string reported by `GET /` and wherever the original reports its own version.
pub const COMPAT_VERSION: &str = "3.2.0";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "default_port")]
    pub port: u16,
    /// Bind address. The original binds every interface; we default to loopback.
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_deploy_from")]
    pub deploy_algorithms_from: String,
    /// Folders `POST /api/v0/deploy/local` may read. `None` means: any folder while `host` is a
    /// loopback address, else only `deploy_algorithms_from`. An empty list means any folder.
    #[serde(default)]
    pub deploy_allowed_paths: Option<Vec<String>>,
    #[serde(default)]
    pub info: InfoSettings,
    #[serde(default)]
    pub gui: GuiSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub inference: InferenceSettings,
    #[serde(default)]
    pub ssl: SslSettings,
    #[serde(default)]
    pub middleware: MiddlewareSettings,
    #[serde(default)]
    pub logging: LoggingSettings,
    #[serde(default = "default_log_path")]
    pub log_path: String,
    #[serde(default)]
    pub config: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoSettings {
    #[serde(default = "default_product")]
    pub product_name: String,
    #[serde(default)]
    pub server_tags: Vec<String>,
    #[serde(default = "default_org")]
    pub group_name: String,
    #[serde(default = "default_org")]
    pub organization_name: String,
    #[serde(default = "default_domain")]
    pub organization_domain: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuiSettings {
    #[serde(default)]
    pub algorithm_add_remove_in_menus: bool,
    #[serde(default)]
    pub use_systray: bool,
    #[serde(default = "default_icon_path")]
    pub icon_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(default)]
    pub collection_prefix: String,
    #[serde(default = "one")]
    pub data_store_expire_days: i64,
    #[serde(default = "thirty")]
    pub execution_store_expire_days: i64,
    #[serde(default = "thirty")]
    pub training_store_expire_days: i64,
    #[serde(default = "thirty")]
    pub deploy_store_expire_days: i64,
    #[serde(default = "seven")]
    pub stop_requests_expire_days: i64,
    #[serde(default)]
    pub builtin_storage_bundle_path: Option<String>,
    #[serde(default)]
    pub builtin_storage_bundle_key: Option<String>,
    #[serde(default = "process_access_key")]
    pub access_key_id: Option<String>,
    #[serde(default = "process_secret_key")]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub backend_settings: BackendSettings,
}

/// Tagged union on `provider`. A partial override must name the provider, as in the original.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum BackendSettings {
    Filesystem(FilesystemBackendSettings),
    Minio(MinioBackendSettings),
    Aws(AwsBackendSettings),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemBackendSettings {
    #[serde(default = "default_fs_storage_path")]
    pub storage_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinioBackendSettings {
    #[serde(default = "yes", deserialize_with = "lax::boolean")]
    pub start_instance: bool,
    #[serde(default = "default_minio_port", deserialize_with = "lax::number")]
    pub port: u16,
    #[serde(
        default = "default_minio_console_port",
        deserialize_with = "lax::number"
    )]
    pub console_port: u16,
    #[serde(default = "default_minio_exe")]
    pub executable_path: String,
    #[serde(default = "default_minio_storage_path")]
    pub storage_path: String,
    #[serde(default)]
    pub aws_region: Option<String>,
    #[serde(default)]
    pub s3_domain_name: Option<String>,
    #[serde(default)]
    pub s3_endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsBackendSettings {
    #[serde(default)]
    pub s3_endpoint_url: Option<String>,
    #[serde(default)]
    pub aws_region: Option<String>,
    #[serde(default)]
    pub s3_domain_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceDevice {
    Cuda,
    Cpu,
    Mps,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSettings {
    #[serde(default = "default_device")]
    pub device: InferenceDevice,
    #[serde(default = "default_cuda_devices")]
    pub cuda_visible_devices: String,
    #[serde(default = "one_u")]
    pub algorithm_cache_maxsize: u32,
    #[serde(default)]
    pub backend_settings: ExecutorSettings,
    /// Virtual environment whose packages algorithms import. Unset: `VIRTUAL_ENV`, else the
    /// interpreter the worker was built against.
    #[serde(default)]
    pub python_env: Option<String>,
    /// Seconds an algorithm gets to honour a stop request before its worker is killed.
    #[serde(default = "default_grace")]
    pub stop_grace_period_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "executor", rename_all = "snake_case")]
pub enum ExecutorSettings {
    FastapiBackgroundTasks(InProcessExecutorSettings),
    Celery(CelerySettings),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InProcessExecutorSettings {
    #[serde(default = "one_u", deserialize_with = "lax::number")]
    pub worker_number: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CelerySettings {
    #[serde(default = "default_worker_name")]
    pub worker_name: String,
    pub broker_url: String,
    #[serde(default = "default_result_backend")]
    pub result_backend: String,
    #[serde(default, deserialize_with = "lax::boolean")]
    pub run_flower: bool,
    #[serde(default, deserialize_with = "lax::optional_number")]
    pub flower_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslSettings {
    #[serde(default)]
    pub use_ssl: bool,
    #[serde(default)]
    pub ssl_keyfile: Option<String>,
    #[serde(default)]
    pub ssl_certfile: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiddlewareSettings {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default = "default_max_age")]
    pub max_age: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Success,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    #[serde(default = "default_level")]
    pub console_level: LogLevel,
    #[serde(default = "default_level")]
    pub file_level: LogLevel,
}

impl Settings {
    /// Applies the derived values of `platform.md` §2.5 in the original's order.
    pub fn resolve(mut self) -> Result<Self, ConfigError> {
        if !self.info.server_tags.iter().any(|t| t == "compox") {
            self.info.server_tags.push("compox".to_string());
        }
        if self.inference.algorithm_cache_maxsize < 1 {
            return Err(ConfigError::Invalid(
                "inference.algorithm_cache_maxsize must be greater than or equal to 1".into(),
            ));
        }
        let info = self.info.clone();
        let expand = |v: &str| paths::expand_prefix(v, &info);
        if let BackendSettings::Minio(m) = &mut self.storage.backend_settings {
            if m.s3_endpoint_url.is_none() {
                m.s3_endpoint_url = Some(format!("http://localhost:{}", m.port));
            }
            m.executable_path = expand(&m.executable_path);
            m.storage_path = expand(&m.storage_path);
        }
        if let BackendSettings::Filesystem(f) = &mut self.storage.backend_settings {
            f.storage_path = expand(&f.storage_path);
        }
        self.log_path = expand(&self.log_path);
        self.ssl.ssl_keyfile = self.ssl.ssl_keyfile.as_deref().map(expand);
        self.ssl.ssl_certfile = self.ssl.ssl_certfile.as_deref().map(expand);
        self.gui.icon_path = expand(&self.gui.icon_path);
        self.storage.builtin_storage_bundle_path = self
            .storage
            .builtin_storage_bundle_path
            .as_deref()
            .map(expand);
        Ok(self)
    }

    /// Folders `deploy/local` may read; empty means any.
    pub fn effective_deploy_allowed_paths(&self) -> Vec<String> {
        match &self.deploy_allowed_paths {
            Some(list) => list.clone(),
            None if is_loopback_host(&self.host) => Vec::new(),
            None => vec![self.deploy_algorithms_from.clone()],
        }
    }

    /// GPU ids from `inference.cuda_visible_devices` (`"0,1"` → `["0", "1"]`).
    pub fn cuda_devices(&self) -> Vec<String> {
        self.inference
            .cuda_visible_devices
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Root of the emergency record store (`platform.md` §2.6).
    pub fn emergency_root(&self) -> std::path::PathBuf {
        if self.log_path.is_empty() {
            return std::env::temp_dir().join("compox_emergency_records");
        }
        let abs = absolute(std::path::Path::new(&self.log_path));
        abs.parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(std::env::temp_dir)
            .join("compox_emergency_records")
    }

    /// Root of the module extraction cache (`platform.md` §2.6).
    pub fn module_cache_root(&self) -> std::path::PathBuf {
        match &self.storage.backend_settings {
            BackendSettings::Minio(m) => {
                absolute(std::path::Path::new(&m.storage_path)).join("runtime/module_cache")
            }
            BackendSettings::Filesystem(f) => {
                absolute(std::path::Path::new(&f.storage_path)).join(".runtime/module_cache")
            }
            BackendSettings::Aws(_) => std::env::temp_dir().join("compox/module_cache"),
        }
    }
}

/// Makes a path absolute against the current directory without touching the filesystem.
pub fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Number of GPUs `nvidia-smi` lists, probed once per process.
pub fn gpu_probe() -> Option<usize> {
    static PROBE: OnceLock<Option<usize>> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.total",
                "--format=csv,noheader,nounits",
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).ok()?;
        let mut count = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parts: Vec<&str> = line.split(',').map(str::trim).collect();
            if parts.len() != 3
                || parts[0].parse::<u32>().is_err()
                || parts[2].parse::<u64>().is_err()
            {
                return None;
            }
            count += 1;
        }
        Some(count)
    })
}

fn process_uuid(slot: &'static OnceLock<String>) -> Option<String> {
    Some(
        slot.get_or_init(|| uuid::Uuid::new_v4().to_string())
            .clone(),
    )
}
fn process_access_key() -> Option<String> {
    static KEY: OnceLock<String> = OnceLock::new();
    process_uuid(&KEY)
}
fn process_secret_key() -> Option<String> {
    static KEY: OnceLock<String> = OnceLock::new();
    process_uuid(&KEY)
}

fn default_port() -> u16 {
    5481
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_deploy_from() -> String {
    "./algorithms".into()
}
fn default_product() -> String {
    "Tescan Compox Backend".into()
}
fn default_org() -> String {
    "TESCAN GROUP, a.s.".into()
}
fn default_domain() -> String {
    "tescan.com".into()
}
fn default_icon_path() -> String {
    "RELATIVE_DEFAULT:resources/compoxbackend.ico".into()
}
fn default_log_path() -> String {
    "LOG_DEFAULT:compox.log".into()
}
fn default_fs_storage_path() -> String {
    "PROGRAMDATA_DEFAULT:compox_store".into()
}
fn default_minio_port() -> u16 {
    5483
}
fn default_minio_console_port() -> u16 {
    5482
}
fn default_minio_exe() -> String {
    "minio/minio_bin".into()
}
fn default_minio_storage_path() -> String {
    "minio/compox_store".into()
}
fn default_device() -> InferenceDevice {
    InferenceDevice::Cuda
}
fn default_cuda_devices() -> String {
    "0".into()
}
fn default_grace() -> f64 {
    30.0
}
fn default_worker_name() -> String {
    "compox_worker".into()
}
fn default_result_backend() -> String {
    "rpc://".into()
}
fn default_methods() -> Vec<String> {
    vec!["GET".into()]
}
fn default_max_age() -> i64 {
    3600
}
fn default_level() -> LogLevel {
    LogLevel::Info
}
fn yes() -> bool {
    true
}
fn one() -> i64 {
    1
}
fn one_u() -> u32 {
    1
}
fn seven() -> i64 {
    7
}
fn thirty() -> i64 {
    30
}

macro_rules! default_via_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({})).expect("section defaults deserialize")
            }
        }
    )*};
}
default_via_serde!(
    InfoSettings,
    GuiSettings,
    StorageSettings,
    SslSettings,
    MiddlewareSettings,
    LoggingSettings,
    InferenceSettings,
    FilesystemBackendSettings,
    InProcessExecutorSettings
);

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings::Filesystem(FilesystemBackendSettings::default())
    }
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings::FastapiBackgroundTasks(InProcessExecutorSettings::default())
    }
}
