//! Operating the server: system commands, the event log's commands and retention, periodic
//! housekeeping, the offline master-key rotation, and moving a deployment between stores.

pub mod housekeeping;
pub mod lease;
pub mod log;
pub mod rekey;
pub mod retention;
pub mod sys;
pub mod transfer;

use crate::factors::{email, passkey, recovery, totp};
use crate::identity::{accounts, apikeys, sessions, tokens};
use crate::infra::records::TableOwner;
use crate::infra::{limits, mail, node};
use crate::signin::ticket;

/// Every domain that owns tables, asked in this order by master-key rotation (which reports
/// in this order) and housekeeping. Every table has exactly one owner (a test checks).
pub fn owners() -> [&'static dyn TableOwner; 12] {
    [
        &tokens::Tables,
        &totp::Tables,
        &sessions::Tables,
        &mail::Tables,
        &recovery::Tables,
        &accounts::Tables,
        &apikeys::Tables,
        &email::Tables,
        &passkey::Tables,
        &ticket::Tables,
        &node::Tables,
        &limits::Tables,
    ]
}

#[cfg(test)]
mod tests {
    use super::owners;
    use portcullis_store::Table;

    #[test]
    fn every_table_has_exactly_one_owner() {
        for table in Table::ALL {
            let claims = owners()
                .iter()
                .filter(|o| o.tables().contains(&table))
                .count();
            assert_eq!(claims, 1, "{table:?} is claimed by {claims} owners");
        }
    }
}
