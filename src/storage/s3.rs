//! The S3 store (`platform.md` §4.3): one bucket per collection, `<collection_prefix><collection>`,
//! spoken to with `aws-sdk-s3`. Serves `provider: minio` (path-style, `s3_endpoint_url`) and
//! `provider: aws` (region, optional endpoint override, settings credentials or the default chain).
//!
//! Writes under 8 MiB are one PutObject; larger bodies stream as a multipart upload of 8 MiB parts,
//! a few in flight at once, aborted on any failure, so memory stays at a few parts whatever the
//! object size. Reads stream the response body. Listing follows continuation tokens to the end.
//!
//! Retries, as in the original: every request gets the SDK's standard mode with 20 attempts in
//! total. On top of that a PutObject the service refused is sent 5 more times (0.1, 0.2, 0.4,
//! 0.8, 1.6 s apart), and a multipart upload is retried for `AccessDenied`, `InvalidPart`,
//! `InternalError`, `ServiceUnavailable` and `SlowDown`, 8 attempts in all. The original repeats
//! the whole multipart upload; a streamed body cannot be replayed, so here the step that failed
//! (create, one part, complete) is repeated instead, with the same codes, count, delays and
//! warning. Tests shorten the SDK's back-off with `COMPOX_TEST_S3_MAX_BACKOFF_MS` (only honoured
//! with `COMPOX_TEST_FAULTS=1`), so an outage fails within seconds instead of minutes.
//!
//! Lifecycle rules are put only when a bucket is created (the original's behaviour): changing
//! `*_expire_days` later does not touch existing buckets.

use super::{
    validate_key, Backend, ByteStream, ExpiryRules, ObjectInfo, PresignMethod, StorageError,
    DATA_STORE,
};
use crate::config::BackendSettings;
use async_trait::async_trait;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CompletedMultipartUpload,
    CompletedPart, CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter, Tag, Tagging,
};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Part size of multipart uploads, and the size from which a body goes multipart.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once: bounds memory to about this many parts per upload.
const PARTS_IN_FLIGHT: usize = 4;
const MAX_ATTEMPTS: u32 = 20;
/// The SDK's longest wait between attempts (its default).
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// Limits of one attempt, as botocore's defaults the original runs with: establishing the
/// connection, and waiting for the answer. A hung S3 server fails each attempt after this
/// instead of holding the request forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// An attempt that sends a body (up to one part) waits for its answer this long, since the
/// SDK counts the upload in: 8 MiB in ten minutes is about 14 KB/s.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Further attempts of a PutObject the service refused (`platform.md` §4.3).
const PUT_RETRIES: u32 = 5;
/// Attempts of each multipart step, for the codes of [`MULTIPART_RETRY_CODES`].
// FIXME(a CompleteMultipartUpload refused with `InvalidPart` cannot be mended by repeating the
// step: the parts' bytes were streamed and are gone; the original re-uploads the whole body)
const MULTIPART_ATTEMPTS: u32 = 8;
const MULTIPART_RETRY_CODES: [&str; 5] = [
    "AccessDenied",
    "InvalidPart",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
];
const RULE_ID: &str = "Delete objects after expiration days";

/// Everything an [`S3Backend`] is built from.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `s3_domain_name`: replaces the host of presigned URLs.
    pub domain_name: Option<String>,
    pub prefix: String,
    pub rules: ExpiryRules,
}

impl S3Config {
    /// The S3 settings of a `minio` or `aws` provider; `None` for the filesystem store.
    pub fn from_backend(
        backend: &BackendSettings,
        prefix: &str,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        rules: ExpiryRules,
    ) -> Option<Self> {
        let (endpoint_url, region, domain_name) = match backend {
            BackendSettings::Filesystem(_) => return None,
            BackendSettings::Minio(m) => (
                m.s3_endpoint_url
                    .clone()
                    .or_else(|| Some(format!("http://localhost:{}", m.port))),
                m.aws_region.clone(),
                m.s3_domain_name.clone(),
            ),
            BackendSettings::Aws(a) => (
                a.s3_endpoint_url.clone(),
                a.aws_region.clone(),
                a.s3_domain_name.clone(),
            ),
        };
        Some(S3Config {
            // Path-style whenever an endpoint is given (MinIO on localhost needs it),
            // virtual-hosted for the AWS default endpoint.
            force_path_style: endpoint_url.is_some(),
            endpoint_url,
            region,
            access_key_id,
            secret_access_key,
            domain_name,
            prefix: prefix.to_string(),
            rules,
        })
    }
}

pub struct S3Backend {
    client: Client,
    prefix: String,
    region: Option<String>,
    domain_name: Option<String>,
    rules: ExpiryRules,
}

/// HTTPS (and plain HTTP) client on rustls with ring, the TLS provider the rest of the tree uses.
fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The usual AWS chain (environment, profile, web identity, ECS, IMDS), built on first use: the
/// chain's constructor is async and the backend is built synchronously.
#[derive(Debug)]
struct LazyDefaultChain {
    region: Option<Region>,
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
}

impl aws_sdk_s3::config::ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    let conf = aws_config::provider_config::ProviderConfig::default()
                        .with_http_client(http_client())
                        .with_region(self.region.clone());
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .configure(conf)
                        .build()
                        .await
                })
                .await;
            aws_sdk_s3::config::ProvideCredentials::provide_credentials(chain).await
        })
    }
}

impl S3Backend {
    /// Builds the client; no request is sent until the first operation.
    pub fn new(cfg: S3Config) -> Self {
        let region_name = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let region = Region::new(region_name);
        let credentials = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(id), Some(secret)) => SharedCredentialsProvider::new(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "compox-settings",
            )),
            _ => SharedCredentialsProvider::new(LazyDefaultChain {
                region: Some(region.clone()),
                chain: tokio::sync::OnceCell::new(),
            }),
        };
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .http_client(http_client())
            .force_path_style(cfg.force_path_style)
            // Only the checksums an operation requires: MinIO and presigned PUTs from plain
            // clients do not expect the flexible-checksum trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_max_backoff(sdk_max_backoff()),
            )
            .timeout_config(timeouts(read_timeout()));
        if let Some(url) = &cfg.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        S3Backend {
            client: Client::from_conf(builder.build()),
            prefix: cfg.prefix,
            region: cfg.region,
            domain_name: cfg.domain_name,
            rules: cfg.rules,
        }
    }

    fn bucket(&self, collection: &str) -> String {
        format!("{}{}", self.prefix, collection)
    }

    /// Collections (logical names) whose bucket exists: names that start with the prefix, with
    /// it stripped once.
    pub async fn list_collections(&self) -> Result<Vec<String>, StorageError> {
        let out = self
            .client
            .list_buckets()
            .send()
            .await
            .map_err(|e| normalise("list_collections", e))?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| b.name())
            .filter_map(|n| n.strip_prefix(self.prefix.as_str()))
            .map(str::to_string)
            .collect())
    }

    async fn create_collection(&self, name: &str) -> Result<bool, StorageError> {
        let bucket = self.bucket(name);
        let op = "create_collections";
        let mut req = self.client.create_bucket().bucket(&bucket);
        if let Some(region) = self.region.as_deref().filter(|r| *r != "us-east-1") {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou")) => return Ok(false),
            Err(e) => return Err(normalise(op, e)),
        }
        let Some(days) = self.rules.days.get(name).copied().filter(|d| *d >= 1) else {
            return Ok(true);
        };
        if let Err(e) = self.put_lifecycle(&bucket, name, days).await {
            // A bucket without its rule would keep it for good (it exists on the next start).
            let _ = self.client.delete_bucket().bucket(&bucket).send().await;
            return Err(e);
        }
        Ok(true)
    }

    async fn put_lifecycle(&self, bucket: &str, name: &str, days: i64) -> Result<(), StorageError> {
        let op = "create_collections";
        let invalid = |e: aws_sdk_s3::error::BuildError| StorageError::WriteFailed {
            operation: op.into(),
            message: e.to_string(),
        };
        let filter = if name == DATA_STORE {
            LifecycleRuleFilter::builder()
                .tag(
                    Tag::builder()
                        .key("training_ref")
                        .value("0")
                        .build()
                        .map_err(invalid)?,
                )
                .build()
        } else {
            LifecycleRuleFilter::builder().prefix("").build()
        };
        let rule = LifecycleRule::builder()
            .id(RULE_ID)
            .status(ExpirationStatus::Enabled)
            .filter(filter)
            .expiration(
                LifecycleExpiration::builder()
                    .days(days.min(i32::MAX as i64) as i32)
                    .build(),
            )
            .build()
            .map_err(invalid)?;
        let config = BucketLifecycleConfiguration::builder()
            .rules(rule)
            .build()
            .map_err(invalid)?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(config)
            .customize()
            // MinIO requires Content-MD5 on this request; it is computed over the serialised body.
            .mutate_request(|req| {
                if let Some(body) = req.body().bytes() {
                    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
                    req.headers_mut().insert("Content-MD5", md5);
                }
            })
            .send()
            .await
            .map(|_| ())
            .map_err(|e| normalise(op, e))
    }

    /// One PutObject, sent again up to [`PUT_RETRIES`] times while the service refuses it.
    async fn put_small(
        &self,
        collection: &str,
        key: &str,
        body: Bytes,
    ) -> Result<(), StorageError> {
        let bucket = self.bucket(collection);
        let mut retries = 0;
        loop {
            let sent = self
                .client
                .put_object()
                .bucket(&bucket)
                .key(key)
                .content_length(body.len() as i64)
                .body(SdkByteStream::from(body.clone()))
                .customize()
                .config_override(body_upload_config())
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(e @ SdkError::ServiceError(_)) if retries < PUT_RETRIES => {
                    tracing::warn!(
                        "Error uploading object {key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    );
                    tokio::time::sleep(put_retry_delay(retries)).await;
                    retries += 1;
                }
                Err(e) => return Err(normalise(&format!("put_objects to {collection}"), e)),
            }
        }
    }

    /// Streams the parts cut so far and the rest of `body` as a multipart upload: body reads and
    /// part uploads overlap, at most [`PARTS_IN_FLIGHT`] parts at once. Aborts the upload on any
    /// failure, including an `Err` item from the body.
    async fn put_multipart(
        &self,
        collection: &str,
        key: &str,
        mut parts: Parts,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let op = format!("put_objects to {collection}");
        let bucket = self.bucket(collection);
        let created = multipart_step(&op, || {
            self.client
                .create_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .send()
        })
        .await?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(StorageError::WriteFailed {
                operation: op,
                message: "CreateMultipartUpload returned no upload id".into(),
            });
        };
        let result = async {
            let mut in_flight = FuturesUnordered::new();
            let mut done: Vec<CompletedPart> = Vec::new();
            let mut number = 0i32;
            let mut written = 0u64;
            let mut ended = false;
            loop {
                while in_flight.len() < PARTS_IN_FLIGHT {
                    let Some(part) = parts.full.pop_front().or_else(|| parts.last(ended)) else {
                        break;
                    };
                    number += 1;
                    written += part.len() as u64;
                    in_flight.push(self.upload_part(&bucket, key, &upload_id, number, part, &op));
                }
                if ended && in_flight.is_empty() {
                    break;
                }
                // Read on while parts upload; with all slots taken, wait for one to finish.
                tokio::select! {
                    Some(r) = in_flight.next(), if !in_flight.is_empty() => done.push(r?),
                    chunk = body.next(), if !ended && parts.full.is_empty() => match chunk {
                        Some(Ok(chunk)) => parts.push(chunk),
                        Some(Err(e)) => return Err(super::body_error(e)),
                        None => ended = true,
                    },
                }
            }
            done.sort_by_key(|p| p.part_number());
            let parts = CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build();
            multipart_step(&op, || {
                self.client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(parts.clone())
                    .send()
            })
            .await?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(
                    "AbortMultipartUpload failed (ignored): {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                );
            }
        }
        result
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        part: Bytes,
        op: &str,
    ) -> Result<CompletedPart, StorageError> {
        let out = multipart_step(op, || {
            self.client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .body(SdkByteStream::from(part.clone()))
                .customize()
                .config_override(body_upload_config())
                .send()
        })
        .await?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    /// `data-store` objects without a `training_ref` tag get `training_ref=0` (other tags kept).
    async fn tag_data_store(&self, collection: &str, key: &str) -> Result<(), StorageError> {
        if collection != DATA_STORE {
            return Ok(());
        }
        let mut tags = self.get_tags(collection, key).await?;
        if !tags.contains_key("training_ref") {
            tags.insert("training_ref".into(), "0".into());
            self.put_tags(collection, key, tags).await?;
        }
        Ok(())
    }

    async fn presign_async(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires_s: u64,
    ) -> Result<String, StorageError> {
        let op = match method {
            PresignMethod::Get => "get_presigned_download_url",
            PresignMethod::Put => "get_presigned_upload_url",
        };
        let config =
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(expires_s))
                .map_err(|e| StorageError::WriteFailed {
                    operation: op.into(),
                    message: e.to_string(),
                })?;
        let bucket = self.bucket(collection);
        let presigned = match method {
            PresignMethod::Get => self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(|e| normalise(op, e))?,
            PresignMethod::Put => self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(|e| normalise(op, e))?,
        };
        let url = presigned.uri().to_string();
        Ok(match &self.domain_name {
            Some(domain) => replace_host(&url, domain),
            None => url,
        })
    }
}

/// Replaces the host of `url`, keeping scheme, port, path and query. With SigV4 the host is
/// signed, so the rewritten URL works only behind a proxy that forwards the original Host header
/// (the original's behaviour, kept as is).
pub fn replace_host(url: &str, host: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let port = match authority.rfind(':') {
        Some(i) if !authority.ends_with(']') => &authority[i..],
        _ => "",
    };
    format!(
        "{}{host}{port}{}",
        &url[..scheme_end],
        &rest[authority_end..]
    )
}

/// A body cut into parts of exactly [`PART_SIZE`]: each part is filled in a buffer of that size,
/// so a part in flight holds no more memory than its bytes.
#[derive(Default)]
struct Parts {
    full: VecDeque<Bytes>,
    current: BytesMut,
}

impl Parts {
    fn push(&mut self, mut chunk: Bytes) {
        while !chunk.is_empty() {
            if self.current.is_empty() && chunk.len() >= PART_SIZE {
                // A whole part inside one chunk (`put_bytes`): no copy.
                self.full.push_back(chunk.split_to(PART_SIZE));
                continue;
            }
            if self.current.capacity() < PART_SIZE {
                self.current.reserve(PART_SIZE - self.current.len());
            }
            let take = (PART_SIZE - self.current.len()).min(chunk.len());
            self.current.extend_from_slice(&chunk.split_to(take));
            if self.current.len() == PART_SIZE {
                self.full
                    .push_back(std::mem::take(&mut self.current).freeze());
            }
        }
    }

    /// The short last part, once the body ended.
    fn last(&mut self, ended: bool) -> Option<Bytes> {
        (ended && !self.current.is_empty()).then(|| std::mem::take(&mut self.current).freeze())
    }
}

/// `default`, or the milliseconds a test asked for in `variable` (honoured only with
/// `COMPOX_TEST_FAULTS=1`).
fn test_duration(variable: &str, default: Duration) -> Duration {
    if !crate::actors::faults_enabled() {
        return default;
    }
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// The SDK's back-off cap (tests: `COMPOX_TEST_S3_MAX_BACKOFF_MS`).
fn sdk_max_backoff() -> Duration {
    test_duration("COMPOX_TEST_S3_MAX_BACKOFF_MS", MAX_BACKOFF)
}

fn timeouts(read: Duration) -> aws_sdk_s3::config::timeout::TimeoutConfig {
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read)
        .build()
}

/// The wait for an answer (tests: `COMPOX_TEST_S3_READ_TIMEOUT_MS`).
fn read_timeout() -> Duration {
    test_duration("COMPOX_TEST_S3_READ_TIMEOUT_MS", READ_TIMEOUT)
}

/// The configuration of requests that carry a body: a longer wait for the answer.
fn body_upload_config() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(timeouts(BODY_READ_TIMEOUT))
}

/// Delay before PutObject retry `i` (0-based): `min(0.1·2^i, 2.0)` s.
fn put_retry_delay(i: u32) -> Duration {
    Duration::from_secs_f64((0.1 * 2f64.powi(i as i32)).min(2.0))
}

/// Runs one request of a multipart upload; while it fails with one of [`MULTIPART_RETRY_CODES`]
/// it is sent again, [`MULTIPART_ATTEMPTS`] times in all, `min(2.0, 0.1·2^n) + U(0, 0.2)` s after
/// failed attempt `n`. Any other error, or the last one, is normalised at once.
async fn multipart_step<T, E, F, Fut>(op: &str, mut send: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    >,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut attempt = 1;
    loop {
        let err = match send().await {
            Ok(out) => return Ok(out),
            Err(e) => e,
        };
        let code = err
            .code()
            .filter(|c| MULTIPART_RETRY_CODES.contains(c))
            .map(str::to_string);
        let Some(code) = code.filter(|_| attempt < MULTIPART_ATTEMPTS) else {
            return Err(normalise(op, err));
        };
        let delay = (0.1 * 2f64.powi(attempt as i32)).min(2.0) + rand::random::<f64>() * 0.2;
        tracing::warn!(
            "Multipart upload failed with {code}; retrying (attempt {attempt}/{MULTIPART_ATTEMPTS}) in {delay:.2}s: {}",
            aws_sdk_s3::error::DisplayErrorContext(&err)
        );
        tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        attempt += 1;
    }
}

fn not_found(collection: &str, key: &str) -> StorageError {
    StorageError::NotFound {
        collection: collection.to_string(),
        key: key.to_string(),
    }
}

/// The HTTP status of the service's answer, when there was one.
fn status_of<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// A tagging call's error: a missing object is `NotFound`, a missing bucket is a storage error.
fn tag_error<E>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    collection: &str,
    key: &str,
    op: &str,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if is_missing(&e) && e.code() != Some("NoSuchBucket") {
        not_found(collection, key)
    } else {
        normalise(op, e)
    }
}

fn is_missing<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(err.code(), Some("NoSuchKey") | Some("NotFound")) || status_of(err) == Some(404)
}

/// The credentials provider's failure behind `err`, if that is what stopped the request.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a aws_credential_types::provider::error::CredentialsError> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

/// An error and its sources, as `outer: inner: …` (Display only).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Storage error normalisation of `platform.md` §4.6. A request that got no answer at all
/// (connection refused, timeout) after the SDK's retries is an outage: `storage_unavailable`.
/// One that could not be signed for want of credentials is "anything else", with a message that
/// names the cause.
fn normalise<E>(
    operation: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let operation = operation.to_string();
    let message = aws_sdk_s3::error::DisplayErrorContext(&err).to_string();
    if let Some(cause) = credentials_error(&err) {
        // Not an outage: nothing was sent, and trying again finds the same (missing) keys.
        return StorageError::WriteFailed {
            operation,
            message: format!(
                "no usable AWS credentials: storage.access_key_id and secret_access_key are not \
                 set, and the default AWS chain (environment, shared config and credentials \
                 files, web identity, ECS, instance metadata) gave none: {}",
                error_chain(cause)
            ),
        };
    }
    let code = err.code().map(str::to_string);
    let status = status_of(&err);
    match (code.as_deref(), status) {
        (Some("AccessDenied") | Some("Forbidden"), _) | (None, Some(403)) => {
            StorageError::AccessDenied { operation, message }
        }
        (Some("InternalError") | Some("ServiceUnavailable") | Some("SlowDown"), _)
        | (None, Some(500) | Some(503)) => StorageError::Unavailable { operation, message },
        (Some("InsufficientStorage"), _) | (None, Some(507)) => {
            StorageError::InsufficientStorage { operation, message }
        }
        _ if matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ) =>
        {
            StorageError::Unavailable { operation, message }
        }
        _ => StorageError::WriteFailed { operation, message },
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn ensure_collections(&self, names: &[&str]) -> Result<Vec<String>, StorageError> {
        let existing: BTreeSet<String> = self.list_collections().await?.into_iter().collect();
        let mut created = Vec::new();
        for name in names {
            if !existing.contains(*name) && self.create_collection(name).await? {
                created.push(name.to_string());
            }
        }
        Ok(created)
    }

    async fn put_stream(
        &self,
        collection: &str,
        key: &str,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        validate_key(key)?;
        let mut parts = Parts::default();
        let written = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    parts.push(chunk);
                    if !parts.full.is_empty() {
                        break self.put_multipart(collection, key, parts, body).await?;
                    }
                }
                Some(Err(e)) => return Err(super::body_error(e)),
                None => {
                    let small = parts.current.freeze();
                    self.put_small(collection, key, small.clone()).await?;
                    break small.len() as u64;
                }
            }
        };
        self.tag_data_store(collection, key).await?;
        Ok(written)
    }

    async fn put_bytes(
        &self,
        collection: &str,
        key: &str,
        body: Bytes,
    ) -> Result<(), StorageError> {
        validate_key(key)?;
        if body.len() < PART_SIZE {
            self.put_small(collection, key, body).await?;
            return self.tag_data_store(collection, key).await;
        }
        let stream = futures_util::stream::once(async move { Ok(body) }).boxed();
        self.put_stream(collection, key, stream).await.map(|_| ())
    }

    async fn get_bytes(&self, collection: &str, key: &str) -> Result<Bytes, StorageError> {
        let (_, mut stream) = self.get_stream(collection, key).await?;
        let mut out = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StorageError::WriteFailed {
                operation: format!("get_objects from {collection}"),
                message: e.to_string(),
            })?;
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    async fn get_stream(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<(u64, ByteStream), StorageError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(self.bucket(collection))
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if is_missing(&e) {
                    not_found(collection, key)
                } else {
                    normalise(&format!("get_objects from {collection}"), e)
                }
            })?;
        let size = out.content_length().unwrap_or(0).max(0) as u64;
        let stream = futures_util::stream::unfold(Some(out.body), |state| async move {
            let mut body = state?;
            match body.try_next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        })
        .boxed();
        Ok((size, stream))
    }

    async fn exists(&self, collection: &str, key: &str) -> Result<bool, StorageError> {
        Ok(self.size(collection, key).await?.is_some())
    }

    async fn size(&self, collection: &str, key: &str) -> Result<Option<u64>, StorageError> {
        validate_key(key)?;
        match self
            .client
            .head_object()
            .bucket(self.bucket(collection))
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            // Only a 404 means absent; any other failure is an error, never "missing".
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(normalise(
                &format!("check_objects_exist in {collection}"),
                e,
            )),
        }
    }

    async fn list(&self, collection: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let op = format!("list_objects in {collection}");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket(collection))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(e) if e.code() == Some("NoSuchBucket") => return Ok(Vec::new()),
                Err(e) => return Err(normalise(&op, e)),
            };
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                let last_modified = obj.last_modified().and_then(|t| {
                    chrono::DateTime::<chrono::Utc>::from_timestamp(t.secs(), t.subsec_nanos())
                        .map(|d| d.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
                });
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    last_modified,
                    version: obj.e_tag().map(str::to_string),
                });
            }
        }
        out.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok(out)
    }

    async fn delete(&self, collection: &str, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(self.bucket(collection))
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) && e.code() != Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(normalise(&format!("delete_objects in {collection}"), e)),
        }
    }

    async fn get_tags(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<BTreeMap<String, String>, StorageError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object_tagging()
            .bucket(self.bucket(collection))
            .key(key)
            .send()
            .await
            .map_err(|e| {
                tag_error(
                    e,
                    collection,
                    key,
                    &format!("get_object_tags in {collection}"),
                )
            })?;
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    async fn put_tags(
        &self,
        collection: &str,
        key: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        validate_key(key)?;
        let op = format!("put_object_tags in {collection}");
        let invalid = |e: aws_sdk_s3::error::BuildError| StorageError::WriteFailed {
            operation: op.clone(),
            message: e.to_string(),
        };
        let mut set = Vec::with_capacity(tags.len());
        for (k, v) in tags {
            set.push(Tag::builder().key(k).value(v).build().map_err(invalid)?);
        }
        let tagging = Tagging::builder()
            .set_tag_set(Some(set))
            .build()
            .map_err(invalid)?;
        self.client
            .put_object_tagging()
            .bucket(self.bucket(collection))
            .key(key)
            .tagging(tagging)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| tag_error(e, collection, key, &op))
    }

    fn presign(
        &self,
        method: PresignMethod,
        collection: &str,
        key: &str,
        expires_s: u64,
    ) -> Result<String, StorageError> {
        validate_key(key)?;
        // The SDK's presigner is async (it resolves credentials) while this call is not. It runs
        // on a scoped thread with its own small runtime, so it neither blocks nor needs the
        // caller's runtime (actix arbiters and the worker's are current-thread).
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| StorageError::WriteFailed {
                            operation: "presign".into(),
                            message: e.to_string(),
                        })?;
                    rt.block_on(self.presign_async(method, collection, key, expires_s))
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(StorageError::WriteFailed {
                        operation: "presign".into(),
                        message: "the presigning thread panicked".into(),
                    })
                })
        })
    }

    /// Nothing to do: on S3 the buckets' lifecycle rules (put at creation) expire objects.
    async fn sweep_expired(&self, _rules: &ExpiryRules) -> Result<usize, StorageError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::{put_retry_delay, replace_host, Parts, PART_SIZE};
    use bytes::Bytes;

    #[test]
    fn parts_are_exactly_part_size_whatever_the_chunking() {
        let mut parts = Parts::default();
        let chunk = Bytes::from(vec![7u8; 3 * 1024 * 1024 + 5]);
        for _ in 0..6 {
            parts.push(chunk.clone());
        }
        let total = 6 * chunk.len();
        assert_eq!(parts.full.len(), total / PART_SIZE);
        for p in &parts.full {
            assert_eq!(p.len(), PART_SIZE);
        }
        // The part being filled never grows past one part.
        assert_eq!(parts.current.capacity(), PART_SIZE);
        assert!(parts.last(false).is_none());
        assert_eq!(parts.last(true).unwrap().len(), total % PART_SIZE);
        assert!(parts.last(true).is_none());

        // A chunk holding whole parts is sliced, not copied.
        let mut parts = Parts::default();
        let big = Bytes::from(vec![1u8; 2 * PART_SIZE + 10]);
        parts.push(big.clone());
        assert_eq!(parts.full.len(), 2);
        assert_eq!(parts.full[0].as_ptr(), big.as_ptr());
        assert_eq!(parts.last(true).unwrap().len(), 10);
    }

    #[test]
    fn put_retry_delays_follow_the_original() {
        let delays: Vec<u128> = (0..5).map(|i| put_retry_delay(i).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600]);
        assert_eq!(put_retry_delay(9).as_millis(), 2000);
    }

    #[test]
    fn host_rewrite_keeps_scheme_port_path_and_query() {
        assert_eq!(
            replace_host(
                "http://localhost:9000/b/k?X-Amz-Signature=1",
                "files.example"
            ),
            "http://files.example:9000/b/k?X-Amz-Signature=1"
        );
        assert_eq!(
            replace_host("https://b.s3.amazonaws.com/k?a=b", "cdn.example"),
            "https://cdn.example/k?a=b"
        );
    }
}
