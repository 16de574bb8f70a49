//! The S3 path against a real S3-compatible server (moto's server mode, from PyPI, started
//! here): the manager's segments, its layout marker and its Parquet export land in the bucket,
//! conditional puts refuse to overwrite, and a manager with no local state reloads the swarm
//! from the bucket alone.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use murmur_manager::bucket::{Bucket, BucketError};
use murmur_tests::*;
use object_store::{ObjectStore, ObjectStoreExt};

const BUCKET: &str = "murmur-test";
const PREFIX: &str = "swarm";

/// A moto S3 server on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
    http: ureq::Agent,
}

impl S3Server {
    fn start(log: &std::path::Path) -> Self {
        let python = tools_python();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(log).expect("moto log");
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto with {}: {e}", python.display()));
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.http.get(&server.endpoint).call().is_err() {
            assert!(Instant::now() < deadline, "moto did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn create_bucket(&self, name: &str) {
        let reply = self
            .http
            .put(format!("{}/{name}", self.endpoint))
            .send_empty()
            .expect("create bucket");
        assert_eq!(reply.status().as_u16(), 200, "creating bucket {name}");
    }

    /// A signed S3 client for the bucket (moto refuses anonymous reads), for looking inside.
    fn client(&self) -> BucketReader {
        let url = url::Url::parse(&format!("s3://{BUCKET}")).unwrap();
        let (store, _) = object_store::parse_url_opts(&url, self.options()).expect("S3 client");
        BucketReader {
            store: store.into(),
            runtime: tokio::runtime::Runtime::new().expect("runtime"),
        }
    }

    fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "murmur-test"),
            ("aws_secret_access_key", "murmur-test-secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The manager's flags for this bucket.
    fn manager_args(&self) -> Vec<String> {
        let mut args = vec![
            "--no-model".to_owned(),
            "--bucket".to_owned(),
            format!("s3://{BUCKET}/{PREFIX}"),
        ];
        for (key, value) in self.options() {
            args.push("--bucket-option".to_owned());
            args.push(format!("{key}={value}"));
        }
        args
    }
}

struct BucketReader {
    store: std::sync::Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl BucketReader {
    fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = object_store::path::Path::from(prefix);
        self.runtime.block_on(async {
            self.store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .expect("list objects")
        })
    }

    fn object(&self, key: &str) -> Vec<u8> {
        let path = object_store::path::Path::from(key);
        self.runtime.block_on(async {
            let got = self
                .store
                .get(&path)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            got.bytes().await.expect("object body").to_vec()
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn memory_rows(s3: &BucketReader) -> Vec<serde_json::Value> {
    s3.keys(&format!("{PREFIX}/v1/analytics/memories/"))
        .iter()
        .filter(|k| k.ends_with(".parquet"))
        .flat_map(|k| parquet_file_rows(s3.object(k)))
        .collect()
}

#[test]
fn the_manager_keeps_the_swarm_in_s3_and_reloads_it_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("moto.log"));
    s3.create_bucket(BUCKET);
    let args = s3.manager_args();
    let reader = s3.client();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let manager = ManagerProcess::start(&dir.path().join("m1"), "127.0.0.1:0", &args);
    let agent = agent_for(&dir.path().join("agent"), &manager.uplink, &[]);
    let ids = agent.add_all(&many(40, "s3 path"), 20);
    wait_until(60, "the manager holds all 40 memories", || manager.live() == 40);
    let deleted = &ids[7];
    let reply = agent
        .client
        .send("DELETE", &format!("/v1/memories/{deleted}"), None)
        .unwrap();
    assert!(reply.status < 300, "{:?}", reply.body);
    wait_until(60, "the manager learns of the delete", || {
        manager.status_of(deleted) == 410
    });

    // In the bucket: the marker, segments under this manager's writer id, the export.
    let marker = reader.object(&format!("{PREFIX}/murmur.json"));
    assert!(String::from_utf8_lossy(&marker).contains("murmur-bucket"));
    let writer = manager.overview()["manager"]["writer"]
        .as_str()
        .unwrap()
        .to_owned();
    let segments = reader.keys(&format!("{PREFIX}/v1/changes/{writer}/"));
    assert!(!segments.is_empty(), "no segment in S3");
    wait_until(60, "the S3 export holds the 39 live memories", || {
        let rows = memory_rows(&reader);
        rows.len() == 39 && !rows.iter().any(|r| r["id"] == deleted.as_str())
    });
    let digest = manager.overview()["manager"]["root_digest"].clone();
    agent.stop();
    manager.stop();

    // A manager with a new data dir (new key, nothing local) reloads everything from S3.
    let fresh = ManagerProcess::start(&dir.path().join("m2"), "127.0.0.1:0", &args);
    assert_eq!(fresh.live(), 39);
    assert_eq!(fresh.status_of(deleted), 410);
    assert_eq!(fresh.status_of(&ids[8]), 200);
    assert_eq!(fresh.overview()["manager"]["root_digest"], digest);
    fresh.stop();

    // The S3 server honours the conditional put the layout relies on: no overwrite.
    let bucket = Bucket::open(&format!("s3://{BUCKET}/{PREFIX}"), &s3.options()).unwrap();
    let existing = bucket.path(segments[0].strip_prefix(&format!("{PREFIX}/")).unwrap());
    let before = reader.object(&segments[0]);
    let refused = reader
        .runtime
        .block_on(bucket.put_new(&existing, bytes::Bytes::from_static(b"overwrite attempt")));
    assert!(
        matches!(
            refused,
            Err(BucketError::Store(
                object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(reader.object(&segments[0]), before);
}

/// Every object under `prefix` with the server-side encryption S3 reports for it (HEAD, via
/// boto3 from moto's venv): `{key: [ServerSideEncryption, SSEKMSKeyId]}`.
fn server_side_encryption(s3: &S3Server, prefix: &str) -> serde_json::Map<String, serde_json::Value> {
    const HEAD_ALL: &str = r#"
import boto3, json, sys
endpoint, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="murmur-test", aws_secret_access_key="murmur-test-secret")
out = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        head = s3.head_object(Bucket=bucket, Key=item["Key"])
        out[item["Key"]] = [head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")]
print(json.dumps(out))
"#;
    serde_json::from_str(&boto3(HEAD_ALL, &[&s3.endpoint, BUCKET, prefix])).expect("JSON from boto3")
}

/// What a boto3 `script` (run by moto's venv with `args`) printed, trimmed.
fn boto3(script: &str, args: &[&str]) -> String {
    let output = Command::new(tools_python())
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python with boto3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A KMS key made in moto's KMS, for SSE-KMS.
fn kms_key(s3: &S3Server) -> String {
    const CREATE: &str = r#"
import boto3, sys
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="murmur-test", aws_secret_access_key="murmur-test-secret")
print(kms.create_key(Description="murmur bucket")["KeyMetadata"]["Arn"])
"#;
    boto3(CREATE, &[&s3.endpoint])
}

#[test]
fn server_side_encryption_options_reach_every_object_the_manager_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("moto.log"));
    s3.create_bucket(BUCKET);
    let kms = kms_key(&s3);
    for (run, options) in [
        ("sse-s3", vec!["aws_server_side_encryption=AES256".to_owned()]),
        (
            "sse-kms",
            vec![
                "aws_server_side_encryption=aws:kms".to_owned(),
                format!("aws_sse_kms_key_id={kms}"),
            ],
        ),
    ] {
        let prefix = format!("{PREFIX}-{run}");
        let mut args: Vec<String> = s3
            .manager_args()
            .into_iter()
            .map(|a| a.replace(&format!("{BUCKET}/{PREFIX}"), &format!("{BUCKET}/{prefix}")))
            .collect();
        for option in options {
            args.extend(["--bucket-option".to_owned(), option]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let manager = ManagerProcess::start(&dir.path().join(run), "127.0.0.1:0", &args);
        let agent = agent_for(&dir.path().join(format!("{run}-agent")), &manager.uplink, &[]);
        agent.add_all(&many(20, run), 10);
        wait_until(60, "the manager holds all 20 memories", || manager.live() == 20);
        wait_until(30, "the export is written", || {
            s3.client()
                .keys(&format!("{prefix}/v1/analytics/memories/"))
                .iter()
                .any(|k| k.ends_with(".parquet"))
        });
        agent.stop();
        manager.stop();
        let objects = server_side_encryption(&s3, &prefix);
        for area in [
            "murmur.json",
            "v1/changes/",
            "v1/analytics/memories/",
            "v1/analytics/agents/",
        ] {
            assert!(
                objects.keys().any(|k| k.starts_with(&format!("{prefix}/{area}"))),
                "{run}: nothing under {area}: {objects:?}"
            );
        }
        for (key, sse) in &objects {
            match run {
                "sse-s3" => assert_eq!(sse[0], "AES256", "{key}: {sse}"),
                _ => {
                    assert_eq!(sse[0], "aws:kms", "{key}: {sse}");
                    assert!(
                        sse[1]
                            .as_str()
                            .is_some_and(|k| kms.ends_with(k) || k.ends_with(&kms)),
                        "{key}: {sse}"
                    );
                }
            }
        }
    }

    // A value S3 does not know is refused at start, naming it.
    let mut args = s3.manager_args();
    args.extend([
        "--bucket-option".to_owned(),
        "aws_server_side_encryption=rot13".to_owned(),
    ]);
    let output = Command::new(murmur_tests::binaries::manager())
        .args(["export", "--data-dir"])
        .arg(dir.path().join("bad"))
        .args(args.iter().filter(|a| *a != "--no-model"))
        .output()
        .expect("manager binary runs");
    assert!(
        !output.status.success(),
        "an unknown encryption type was accepted"
    );
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("rot13"), "{error}");
}
