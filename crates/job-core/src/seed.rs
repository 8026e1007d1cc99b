//! `job-pub seed`: test jobs bulk-inserted with COPY (binary), their fire times spread
//! evenly over `--fire-in MIN..MAX` from now.

use std::time::{Duration, SystemTime};

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::args::{DbPlan, SeedArgs};
use crate::db::DbError;

/// Inserts the jobs; returns how many.
pub async fn seed(
    pool: &deadpool_postgres::Pool,
    db: &DbPlan,
    s: &SeedArgs,
) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let sink = client
        .copy_in(&format!(
            "COPY {} (topic, payload, fire_at) FROM STDIN BINARY",
            db.table
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ]);
    let mut writer = std::pin::pin!(writer);
    let now = SystemTime::now();
    let (lo, hi) = s.fire_in;
    let span = (hi - lo) as f64;
    for i in 0..s.count {
        let offset_ms = lo as f64 + span * i as f64 / s.count.max(1) as f64;
        let at = if offset_ms >= 0.0 {
            now + Duration::from_secs_f64(offset_ms / 1000.0)
        } else {
            now - Duration::from_secs_f64(-offset_ms / 1000.0)
        };
        let n = i.to_string();
        let topic = s.topic_template.replace("{i}", &n);
        let payload = s.payload_template.replace("{i}", &n);
        writer.as_mut().write(&[&topic, &payload, &at]).await?;
    }
    Ok(writer.finish().await?)
}
