//! A throwaway PostgreSQL schema for a test or a bench.

/// A throwaway PostgreSQL schema, selected through the URL's `search_path` option, so that
/// tests sharing the database never see each other's rows.
pub struct PgSchema {
    /// The database URL with this schema selected.
    pub url: String,
    /// A connection for the test's own queries.
    pub admin: tokio_postgres::Client,
    name: String,
}

impl PgSchema {
    /// Creates a schema in the database at `url`.
    pub async fn create(url: &str) -> PgSchema {
        PgSchema::create_named(url, "wk_test").await
    }

    /// Creates a schema named `<prefix>_<random>` in the database at `url`.
    pub async fn create_named(url: &str, prefix: &str) -> PgSchema {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-c%20search_path%3D{name}");
        PgSchema { url, admin, name }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }
}
