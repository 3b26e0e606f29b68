//! `jwl migrate [service…]`: apply the migrations of the named services (all by default).

use jwl_service_kit::db::PoolSettings;

use crate::args::MigrateArgs;
use crate::services::ServiceName;

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let services = if args.services.is_empty() {
        ServiceName::ALL.to_vec()
    } else {
        args.services
    };
    for name in services {
        let url = args.databases.require_url_for(name)?;
        let pool = super::connect_and_migrate(name.entry(), url, &PoolSettings::default()).await?;
        pool.close().await;
    }
    Ok(())
}
