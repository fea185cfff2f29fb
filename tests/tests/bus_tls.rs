//! The bus over TLS, with certificates the test makes: a server certificate signed by a
//! CA the nodes trust, then mutual TLS (the server also checks each client's
//! certificate). A node with per-role users serves a chat either way; a client that does
//! not trust the CA, and under mutual TLS one without a certificate, is refused.

use std::{path::Path, time::Duration};

use bitinglip_nats::{LocalNatsServer, ServerOptions, ServerTls};
use bitinglip_tests::{echo_config, nats_server_bin, spawn_gateway};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "BitingLip test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, purpose, sans) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth, vec!["127.0.0.1".to_string(), "localhost".to_string()]),
        ("client", ExtendedKeyUsagePurpose::ClientAuth, vec!["bitinglip-node".to_string()]),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

async fn serves_over_tls(mutual: bool) {
    bitinglip_nats::ensure_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let creds = dir.path().join("creds");
    bitinglip_nats::permissions::init_credentials(&creds, &bitinglip_bus_schema::Subjects::default(), None).unwrap();
    let mut opts = ServerOptions::new(dir.path().join("nats"));
    opts.binary = nats_server_bin().display().to_string();
    opts.credentials_dir = Some(creds.clone());
    let client_cert = (dir.path().join("client.pem"), dir.path().join("client-key.pem"));
    opts.tls = Some(ServerTls {
        cert_file: dir.path().join("server.pem"),
        key_file: dir.path().join("server-key.pem"),
        ca_file: dir.path().join("ca.pem"),
        client: mutual.then(|| client_cert.clone()),
    });
    let server = LocalNatsServer::start(opts).await.unwrap();
    let url = server.url();

    let mut config = echo_config(&url, 0.0, 4);
    config.nats.credentials_dir = Some(creds.clone());
    config.nats.tls_required = true;
    config.nats.tls_ca_file = Some(dir.path().join("ca.pem"));
    if mutual {
        config.nats.tls_cert_file = Some(client_cert.0.clone());
        config.nats.tls_key_file = Some(client_cert.1.clone());
    }
    let (node, base) = spawn_gateway(&config).await;
    let answer = bitinglip_tests::chat_when_served(&base, "echo", "over tls").await;
    assert_eq!(answer["choices"][0]["message"]["content"], "over tls", "mutual {mutual}: {answer}\n{}", node.log());

    let seed = std::fs::read_to_string(creds.join("client.nk")).unwrap();
    let user = || async_nats::ConnectOptions::with_nkey(seed.trim().to_string()).custom_inbox_prefix("_INBOX_client");
    let attempt = |opts: async_nats::ConnectOptions| {
        let url = url.clone();
        async move { matches!(tokio::time::timeout(Duration::from_secs(3), opts.connect(url)).await, Ok(Ok(_))) }
    };
    // Without the CA the server's certificate is not trusted.
    assert!(!attempt(user().require_tls(true)).await, "a client without the CA got in");
    let trusted = || user().require_tls(true).add_root_certificates(dir.path().join("ca.pem"));
    if mutual {
        assert!(!attempt(trusted()).await, "a client without a certificate got in");
        assert!(attempt(trusted().add_client_certificate(client_cert.0.clone(), client_cert.1.clone())).await);
    } else {
        assert!(attempt(trusted()).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_serves_over_tls_with_a_ca_it_trusts() {
    serves_over_tls(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_serves_over_mutual_tls() {
    serves_over_tls(true).await;
}
