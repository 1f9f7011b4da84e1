//! TLS to PostgreSQL with libpq's sslmode meanings. Needs the test server of
//! scripts/pg-test-server.sh (TLS on, self-signed certificate in `OUTCORE_TEST_PG_CA`).

mod common;

use outcore::storage::{PgStorage, Storage};
use outcore::Error;

fn server() -> Option<(String, String, String)> {
    match (
        std::env::var("OUTCORE_TEST_PG"),
        std::env::var("OUTCORE_TEST_PG_CA"),
        std::env::var("OUTCORE_TEST_PG_OTHER_CA"),
    ) {
        (Ok(url), Ok(ca), Ok(other)) => Some((url, ca, other)),
        _ => {
            common::pg_missing("OUTCORE_TEST_PG / _CA not set (scripts/test.sh starts a server)");
            None
        }
    }
}

/// How many of the server's connections with `app` as application name use TLS (and how many
/// there are).
fn tls_connections(url: &str, app: &str) -> (i64, i64) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a
             JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.application_name = $1",
            &[&app],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn require_encrypts_and_verify_full_authenticates() {
    let Some((url, ca, other)) = server() else {
        return;
    };
    let schema = format!("tls_{}", std::process::id());
    // sslmode=require: encrypted (the certificate is not checked, as in libpq).
    let app = format!("outcore_tls_{}", std::process::id());
    let store = PgStorage::open(&format!(
        "{url}?sslmode=require&application_name={app}&outcore_schema={schema}"
    ))
    .unwrap();
    store.head().unwrap();
    let (tls, all) = tls_connections(&url, &app);
    assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
    drop(store);

    // verify-full against the right CA, by host name.
    let local = url.replace("127.0.0.1", "localhost");
    let verified = PgStorage::open(&format!(
        "{local}?sslmode=verify-full&sslrootcert={ca}&outcore_schema={schema}"
    ))
    .unwrap();
    verified.head().unwrap();

    // verify-full against another CA: refused.
    let err = PgStorage::open(&format!(
        "{local}?sslmode=verify-full&sslrootcert={other}&outcore_schema={schema}"
    ))
    .unwrap_err();
    // A certificate the client rejects is not a lost connection: retrying cannot help.
    assert!(
        matches!(&err, Error::Postgres(pe) if !pe.is_connection_error()),
        "{err}"
    );

    // verify-full without a CA file: a clear error before connecting.
    let err = PgStorage::open(&format!("{local}?sslmode=verify-full")).unwrap_err();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}
