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
