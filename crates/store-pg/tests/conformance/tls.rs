//! TLS to PostgreSQL, against a server of the test's own with certificates made here
//! (`openssl`): each `sslmode` connects, or refuses, as `tls.rs` documents, and a store
//! opened with TLS really talks over it (`pg_stat_ssl`).

use steadyflow_store::StoreError;
use steadyflow_store_pg::PgStore;
use steadyflow_store_pg::testing::{OwnServer, test_certificates};
use tokio_postgres::NoTls;

async fn encrypted_sessions(admin_url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .expect("admin");
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'steadyflow' AND s.ssl",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

/// A server of the test's own offering TLS with the certificates of
/// [`test_certificates`], authenticating by `hba`.
fn tls_server(hba: &str) -> Option<OwnServer> {
    OwnServer::start(
        "ssl = on\nssl_cert_file = '../server.pem'\nssl_key_file = '../server.key'",
        hba,
        |dir| {
            test_certificates(dir);
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        },
    )
}

fn refused(r: Result<PgStore, StoreError>) -> String {
    match r {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_connects_or_refuses_as_documented() {
    let Some(server) = tls_server(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
    ) else {
        return;
    };
    let dir = server.dir().display().to_string();
    let plain = server.url("");
    let at = |host: &str, query: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres{query}",
            server.port()
        )
    };

    // verify-full through the certificate's name, with its CA: connects, over TLS.
    let store = PgStore::connect(&at(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={dir}/ca.pem"),
    ))
    .await
    .expect("verify-full with the right CA");
    assert!(
        encrypted_sessions(&plain).await > 0,
        "the store's sessions use TLS"
    );
    drop(store);

    // The wrong CA: refused, saying why.
    let e = refused(
        PgStore::connect(&at(
            "localhost",
            &format!("?sslmode=verify-full&sslrootcert={dir}/other-ca.pem"),
        ))
        .await,
    );
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // The right CA but another name (127.0.0.1 is not in the certificate): verify-full
    // refuses, verify-ca (chain only) connects.
    let e = refused(
        PgStore::connect(&at(
            "127.0.0.1",
            &format!("?sslmode=verify-full&sslrootcert={dir}/ca.pem"),
        ))
        .await,
    );
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    drop(
        PgStore::connect(&at(
            "127.0.0.1",
            &format!("?sslmode=verify-ca&sslrootcert={dir}/ca.pem"),
        ))
        .await
        .expect("verify-ca ignores the name"),
    );
    // require: encrypted, the certificate not checked (as libpq without a root file).
    let store = PgStore::connect(&at("127.0.0.1", "?sslmode=require"))
        .await
        .expect("require");
    assert!(encrypted_sessions(&plain).await > 0);
    drop(store);
}

/// Without `sslmode` the store speaks plain, even to a server that offers TLS; a server
/// that only takes TLS (`hostssl`) then refuses it, and `sslmode=require` gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sslmode_the_connection_is_plain() {
    let Some(server) = tls_server("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    else {
        return;
    };
    let e = refused(PgStore::connect(&server.url("")).await);
    assert!(e.contains("pg_hba") || e.contains("no encryption"), "{e}");
    drop(
        PgStore::connect(&server.url("?sslmode=require"))
            .await
            .expect("require gets in"),
    );
}
