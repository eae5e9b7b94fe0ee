//! Connection admission, shared in shape by both transports: a cap on connections served at
//! once, and a cap per client address, so that one client cannot hold every slot.
//!
//! Addresses are counted by the network a single client typically controls: an IPv4 address,
//! or an IPv6 /64 (one host or one customer's LAN is usually given a whole /64, so counting
//! single IPv6 addresses would let it open billions of "different" clients). An IPv4 address
//! mapped into IPv6 (`::ffff:a.b.c.d`) counts as that IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals answered at once (a short message, then the close); more are closed without an
/// answer, so a flood of refused connections cannot itself hold an unbounded number of sockets.
const ANSWERED_REFUSALS: usize = 64;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its client address already has `max_connections_per_ip` connections.
    PerAddress,
    /// `max_connections` connections are open.
    Total,
}

/// The admission state of one listener.
pub struct ConnLimits {
    per_address: usize,
    total: Arc<Semaphore>,
    open: Mutex<HashMap<IpAddr, usize>>,
    refusals: Arc<Semaphore>,
}

impl ConnLimits {
    /// At most `total` connections at once, at most `per_address` of them from one client
    /// address.
    pub fn new(total: usize, per_address: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            per_address,
            total: Arc::new(Semaphore::new(total)),
            open: Mutex::new(HashMap::new()),
            refusals: Arc::new(Semaphore::new(ANSWERED_REFUSALS)),
        })
    }

    fn open(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map is consistent after every statement that changes it: a panic elsewhere while
        // holding the lock leaves nothing half-done.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, or says why not. `exempt` connections (from a trusted
    /// proxy, which carries many clients) count only towards the total.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, exempt: bool) -> Result<ConnSlot, Refusal> {
        let key = address_key(ip);
        let mut open = self.open();
        let count = open.get(&key).copied().unwrap_or(0);
        if !exempt && count >= self.per_address {
            return Err(Refusal::PerAddress);
        }
        let permit = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        let counted = (!exempt).then(|| {
            open.insert(key, count + 1);
            key
        });
        Ok(ConnSlot {
            limits: Arc::clone(self),
            counted,
            _permit: permit,
        })
    }

    /// Leave to answer one refused connection; `None` when too many refusals are being
    /// answered already (the connection is then closed at once).
    pub fn refusal_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.refusals).try_acquire_owned().ok()
    }

    /// Connections open from `ip`'s address group (for tests).
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        self.open().get(&address_key(ip)).copied().unwrap_or(0)
    }

    /// Address groups with open connections (for tests).
    #[cfg(test)]
    fn groups(&self) -> usize {
        self.open().len()
    }
}

/// One admitted connection; dropping it frees its slots.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    counted: Option<IpAddr>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Some(key) = self.counted else {
            return;
        };
        let mut open = self.limits.open();
        match open.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            // The last one: remove the entry, so the map holds only addresses with connections.
            _ => {
                open.remove(&key);
            }
        }
    }
}

/// Writes a refusal (`answer`) to a connection that was not admitted and closes it, all within
/// about two seconds. What the client sends meanwhile is read and discarded: closing a socket
/// with unread input makes the kernel send a reset, which can destroy the answer in flight.
pub(crate) async fn answer_and_close<S>(mut sock: S, answer: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        sock.write_all(answer).await?;
        sock.flush().await?;
        sock.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        // Bounded by the timeout and by 64 KiB.
        for _ in 0..16 {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The group `ip` is counted in: the IPv4 address itself (also when mapped into IPv6), or the
/// IPv6 /64 it is in.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_at_most_its_share_and_others_still_get_in() {
        let limits = ConnLimits::new(100, 2);
        let a1 = limits.admit(ip("127.0.0.1"), false).unwrap();
        let _a2 = limits.admit(ip("127.0.0.1"), false).unwrap();
        assert_eq!(
            limits.admit(ip("127.0.0.1"), false).err(),
            Some(Refusal::PerAddress)
        );
        let _b = limits.admit(ip("127.0.0.2"), false).unwrap();
        // Freeing one lets the address in again.
        drop(a1);
        let _a3 = limits.admit(ip("127.0.0.1"), false).unwrap();
        assert_eq!(limits.count(ip("127.0.0.1")), 2);
    }

    #[test]
    fn the_total_cap_holds_across_addresses_and_a_refusal_counts_nothing() {
        let limits = ConnLimits::new(2, 5);
        let _a = limits.admit(ip("10.0.0.1"), false).unwrap();
        let _b = limits.admit(ip("10.0.0.2"), false).unwrap();
        assert_eq!(
            limits.admit(ip("10.0.0.3"), false).err(),
            Some(Refusal::Total)
        );
        assert_eq!(limits.count(ip("10.0.0.3")), 0);
        // Exempt connections still count towards the total.
        assert_eq!(
            limits.admit(ip("10.0.0.4"), true).err(),
            Some(Refusal::Total)
        );
    }

    #[test]
    fn exempt_connections_are_not_counted_per_address() {
        let limits = ConnLimits::new(10, 1);
        let _a = limits.admit(ip("192.0.2.1"), true).unwrap();
        let _b = limits.admit(ip("192.0.2.1"), true).unwrap();
        assert_eq!(limits.count(ip("192.0.2.1")), 0);
        let _c = limits.admit(ip("192.0.2.1"), false).unwrap();
        assert!(limits.admit(ip("192.0.2.1"), false).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = ConnLimits::new(100, 1);
        let _a = limits.admit(ip("2001:db8:1:2::1"), false).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:ffff::9"), false).err(),
            Some(Refusal::PerAddress),
            "same /64"
        );
        let _b = limits.admit(ip("2001:db8:1:3::1"), false).unwrap();
        let _c = limits.admit(ip("203.0.113.5"), false).unwrap();
        assert_eq!(
            limits.admit(ip("::ffff:203.0.113.5"), false).err(),
            Some(Refusal::PerAddress),
            "mapped IPv4"
        );
    }

    #[test]
    fn closed_connections_leave_no_entries_behind() {
        let limits = ConnLimits::new(1000, 1000);
        let slots: Vec<_> = (0..200u8)
            .map(|i| limits.admit(IpAddr::from([10, 0, 0, i]), false).unwrap())
            .collect();
        assert_eq!(limits.groups(), 200);
        drop(slots);
        assert_eq!(limits.groups(), 0);
    }
}
