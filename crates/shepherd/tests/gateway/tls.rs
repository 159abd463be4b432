//! HTTPS: a CA made in the test (`rcgen`) signs the server's certificate; clients trust only
//! that CA. Requests over TLS (HTTP/2 by ALPN, HTTP/1.1 too), plain HTTP refused on the TLS port,
//! a certificate swapped on disk while a stream runs (the stream finishes, new connections get
//! the new certificate), a broken new pair refused (the old one stays), and mutual TLS on the
//! admin listener.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mock_upstream::MockUpstream;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;

use crate::common::*;
use crate::governance::{KEY_SECRET, MASTER_KEY};

/// A CA that signs certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

impl Ca {
    /// A leaf certificate for `names`, and its key, in PEM.
    fn leaf(&self, names: &[&str], common_name: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Files {
    dir: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Files {
    fn new() -> Files {
        let dir = std::env::temp_dir().join(format!("shepherd-tls-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        // Written aside and renamed, as a certificate manager does.
        let partial = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }
}

fn client_trusting(ca_pem: &str) -> reqwest::Client {
    shepherd::providers::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .tls_info(true)
        .build()
        .unwrap()
}

async fn gateway(files: &Files, extra_server: &str) -> (MockUpstream, shepherd::server::Running) {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server:
  listen: 127.0.0.1:0
  tls: {{cert: '{}', key: '{}'{extra_server}}}
admin: {{master_key: {MASTER_KEY}, key_secret: {KEY_SECRET}}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}}}
models: {{m: {{deployments: [{{provider: up}}]}}}}
keys: [{{name: svc, key: {CLIENT_KEY}}}]
",
        files.dir.join("cert.pem").display(),
        files.dir.join("key.pem").display(),
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "tls.yaml", &|_| None).unwrap();
    let server = shepherd::server::start(config).await.unwrap();
    (mock, server)
}

fn hello(stream: bool) -> String {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

/// The server certificate's DER bytes as text: its subject's common name appears in it as is,
/// which is all these tests need to tell two certificates apart.
fn peer_common_name(response: &reqwest::Response) -> String {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .unwrap();
    String::from_utf8_lossy(info.peer_certificate().unwrap()).into_owned()
}

#[tokio::test]
async fn https_with_alpn_and_a_certificate_swapped_while_a_stream_runs() {
    let files = Files::new();
    let authority = ca("Shepherd Test CA");
    let (cert, key) = authority.leaf(&["localhost", "127.0.0.1"], "first-certificate");
    files.write("cert.pem", &cert);
    files.write("key.pem", &key);
    let (_mock, server) = gateway(&files, "").await;
    let port = server.addr.port();
    let url = format!("https://localhost:{port}/v1/chat/completions");
    let client = client_trusting(&authority.pem);

    let answer = client
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .body(hello(false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    assert!(peer_common_name(&answer).contains("first-certificate"));
    let http1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(authority.pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let answer = http1
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .body(hello(false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);

    // Plain HTTP on the TLS port gets no answer.
    let plain = test_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // A slow stream; the certificate changes on disk meanwhile.
    let stream = client
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-chunks", "30")
        .header("x-mock-chunk-delay-ms", "100")
        .body(hello(true))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let reading = tokio::spawn(sse_payloads(stream));
    let (cert, key) = authority.leaf(&["localhost", "127.0.0.1"], "second-certificate");
    files.write("key.pem", &key);
    files.write("cert.pem", &cert);
    let tls = server.tls.clone().unwrap();
    let started = Instant::now();
    while tls.loads() < 2 {
        assert!(started.elapsed() < Duration::from_secs(5), "not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payloads = reading.await.unwrap();
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "the stream ran to its end"
    );
    assert!(payloads.len() > 30, "{}", payloads.len());
    let fresh = client_trusting(&authority.pem);
    let answer = fresh
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .body(hello(false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(peer_common_name(&answer).contains("second-certificate"));

    // A broken pair (a key of another certificate) is refused; the second one stays.
    let (_, other_key) = authority.leaf(&["localhost"], "third-certificate");
    let (third, _) = authority.leaf(&["localhost"], "third-certificate");
    files.write("key.pem", &other_key);
    files.write("cert.pem", &third);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(tls.loads(), 2);
    let answer = client_trusting(&authority.pem)
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .body(hello(false))
        .send()
        .await
        .unwrap();
    assert!(peer_common_name(&answer).contains("second-certificate"));
}

#[tokio::test]
async fn the_admin_listener_wants_a_client_certificate_from_its_ca() {
    let files = Files::new();
    let server_ca = ca("Server CA");
    let client_ca = ca("Admin Client CA");
    let (cert, key) = server_ca.leaf(&["localhost"], "gateway");
    files.write("cert.pem", &cert);
    files.write("key.pem", &key);
    let ca_path = files.write("clients.pem", &client_ca.pem);
    let admin_port = testkit::free_port();
    let mock = MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:{admin_port}
  tls: {{cert: '{}', key: '{}', admin_client_ca: '{}'}}
admin: {{master_key: {MASTER_KEY}, key_secret: {KEY_SECRET}}}
providers: {{up: {{kind: openai, base_url: '{}'}}}}
models: {{m: {{deployments: [{{provider: up}}]}}}}
keys: [{{name: svc, key: {CLIENT_KEY}}}]
",
        files.dir.join("cert.pem").display(),
        files.dir.join("key.pem").display(),
        ca_path.display(),
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "tls.yaml", &|_| None).unwrap();
    let server = shepherd::server::start(config).await.unwrap();
    let admin = format!("https://localhost:{admin_port}/admin/keys");

    // Without a client certificate: no handshake.
    let refused = client_trusting(&server_ca.pem)
        .get(&admin)
        .bearer_auth(MASTER_KEY)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // One from another CA: no handshake either.
    let stranger = ca("Stranger CA");
    let (stranger_cert, stranger_key) = stranger.leaf(&["ops"], "ops");
    let with = |cert: &str, key: &str| {
        shepherd::providers::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(server_ca.pem.as_bytes()).unwrap()])
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    assert!(
        with(&stranger_cert, &stranger_key)
            .get(&admin)
            .bearer_auth(MASTER_KEY)
            .send()
            .await
            .is_err()
    );
    // One from the admin CA: in.
    let (ops_cert, ops_key) = client_ca.leaf(&["ops"], "ops");
    let answer = with(&ops_cert, &ops_key)
        .get(&admin)
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The main listener does not ask for one.
    let answer = client_trusting(&server_ca.pem)
        .post(format!(
            "https://localhost:{}/v1/chat/completions",
            server.addr.port()
        ))
        .bearer_auth(CLIENT_KEY)
        .body(hello(false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[test]
fn bad_tls_files_are_named_by_the_loader() {
    let files = Files::new();
    let missing = files.dir.join("missing.pem");
    let not_pem = files.write("not.pem", "hello");
    let check = |cert: &Path, key: &Path, extra: &str| {
        let yaml = format!(
            "server: {{tls: {{cert: '{}', key: '{}'{extra}}}}}\nproviders: {{d: {{kind: mock}}}}\nmodels: {{m: {{deployments: [{{provider: d}}]}}}}\n",
            cert.display(),
            key.display()
        );
        shepherd::config::load_str(&yaml, "t.yaml", &|_| None)
            .unwrap_err()
            .to_string()
    };
    let problems = check(&missing, &missing, "");
    assert!(problems.contains("server.tls.cert"), "{problems}");
    let problems = check(&not_pem, &not_pem, "");
    assert!(problems.contains("no PEM certificate"), "{problems}");
    let authority = ca("CA");
    let (cert, _) = authority.leaf(&["localhost"], "a");
    let (_, other_key) = authority.leaf(&["localhost"], "b");
    let cert = files.write("cert.pem", &cert);
    let key = files.write("key.pem", &other_key);
    let problems = check(&cert, &key, "");
    assert!(problems.contains("server.tls.key"), "{problems}");
    let (cert_ok, key_ok) = authority.leaf(&["localhost"], "c");
    let cert = files.write("cert.pem", &cert_ok);
    let key = files.write("key.pem", &key_ok);
    let problems = check(&cert, &key, ", admin_client_ca: 'x.pem'");
    assert!(
        problems.contains("server.tls.admin_client_ca"),
        "{problems}"
    );
}
