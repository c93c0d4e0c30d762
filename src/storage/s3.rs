//! The S3 store (`platform.md` §4.3): one bucket per collection, `<collection_prefix><collection>`,
//! spoken to with `aws-sdk-s3`. Serves `provider: minio` (path-style, `s3_endpoint_url`) and
//! `provider: aws` (region, optional endpoint override, settings credentials or the default chain).
//!
//! Writes under 8 MiB are one PutObject; larger bodies stream as a multipart upload of 8 MiB parts,
//! a few in flight at once, aborted on any failure, so memory stays at a few parts whatever the
//! object size. Reads stream the response body. Listing follows continuation tokens to the end.
//! Retries are the SDK's standard mode with 20 attempts in total, as in the original.
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
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Part size of multipart uploads, and the size from which a body goes multipart.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once: bounds memory to about this many parts per upload.
const PARTS_IN_FLIGHT: usize = 4;
const MAX_ATTEMPTS: u32 = 20;
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
                    .with_max_backoff(Duration::from_secs(20)),
            );
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

    async fn put_small(
        &self,
        collection: &str,
        key: &str,
        body: Bytes,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(self.bucket(collection))
            .key(key)
            .content_length(body.len() as i64)
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| normalise(&format!("put_objects to {collection}"), e))
    }

    /// Streams `first` (one full part) and the rest of `body` as a multipart upload; aborts the
    /// upload on any failure, including an `Err` item from the body.
    async fn put_multipart(
        &self,
        collection: &str,
        key: &str,
        first: Bytes,
        rest: BytesMut,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let op = format!("put_objects to {collection}");
        let bucket = self.bucket(collection);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| normalise(&op, e))?;
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
            let mut buf = rest;
            let mut pending = Some(first);
            let mut ended = false;
            loop {
                // Queue every full part we hold, then wait for room or more body.
                while let Some(part) = pending.take().or_else(|| {
                    (buf.len() >= PART_SIZE || (ended && !buf.is_empty()))
                        .then(|| buf.split_to(buf.len().min(PART_SIZE)).freeze())
                }) {
                    number += 1;
                    written += part.len() as u64;
                    in_flight.push(self.upload_part(&bucket, key, &upload_id, number, part, &op));
                    while in_flight.len() >= PARTS_IN_FLIGHT {
                        if let Some(r) = in_flight.next().await {
                            done.push(r?);
                        }
                    }
                }
                if ended {
                    break;
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Err(body_error(e)),
                    None => ended = true,
                }
            }
            while let Some(r) = in_flight.next().await {
                done.push(r?);
            }
            done.sort_by_key(|p| p.part_number());
            self.client
                .complete_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| normalise(&op, e))?;
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
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(part.len() as i64)
            .body(SdkByteStream::from(part))
            .send()
            .await
            .map_err(|e| normalise(op, e))?;
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

fn body_error(e: std::io::Error) -> StorageError {
    match e.kind() {
        std::io::ErrorKind::InvalidData => StorageError::Rejected(e.to_string()),
        _ => StorageError::Aborted(e.to_string()),
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

/// Storage error normalisation of `platform.md` §4.6. A request that got no answer at all
/// (connection refused, timeout) after the SDK's retries is an outage: `storage_unavailable`.
fn normalise<E>(
    operation: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let operation = operation.to_string();
    let message = aws_sdk_s3::error::DisplayErrorContext(&err).to_string();
    let code = err.code().map(str::to_string);
    let status = status_of(&err);
    match (code.as_deref(), status) {
        (Some("AccessDenied") | Some("Forbidden"), _) | (None, Some(403)) => {
            StorageError::AccessDenied { operation, message }
        }
        (Some("InternalError") | Some("ServiceUnavailable") | Some("SlowDown"), _)
        | (None, Some(500) | Some(503)) => StorageError::Unavailable { operation, message },
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
        let mut buf = BytesMut::new();
        let written = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= PART_SIZE {
                        let first = buf.split_to(PART_SIZE).freeze();
                        break self
                            .put_multipart(collection, key, first, buf, body)
                            .await?;
                    }
                }
                Some(Err(e)) => return Err(body_error(e)),
                None => {
                    let len = buf.len() as u64;
                    self.put_small(collection, key, buf.freeze()).await?;
                    break len;
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
    use super::replace_host;

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
