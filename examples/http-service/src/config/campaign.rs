//! Campaigns: which coupons this service sells, how many, and when. They come from the
//! service's own configuration (flags, environment or a TOML file), never from a client: a
//! client that could send the stock could raise it.

use anyhow::{bail, Context};
use coupon_sdk::{CouponKeys, Window};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::SystemTime;

/// One coupon on sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// The coupon key in Redis; also the `{coupon}` segment of the URLs.
    pub coupon: String,
    /// How many users may hold it at once.
    pub stock: u64,
    /// When issuing is open, by the Redis server's clock; always open if `None`.
    pub window: Option<Window>,
}

impl Campaign {
    fn new(
        coupon: &str,
        stock: u64,
        window: Option<(SystemTime, SystemTime)>,
    ) -> anyhow::Result<Self> {
        if coupon.is_empty() {
            bail!("a campaign needs a coupon key");
        }
        // The same rule the module applies, checked once here instead of failing every request.
        CouponKeys::of(coupon.as_bytes())
            .map_err(|e| anyhow::anyhow!("coupon key {coupon:?}: {e}"))?;
        if stock > i64::MAX as u64 {
            bail!("stock of {coupon:?} must be at most {}", i64::MAX);
        }
        let window = match window {
            None => None,
            Some((start, end)) => {
                if start >= end {
                    bail!("the window of {coupon:?} must start before it ends");
                }
                Some(Window::between(start, end))
            }
        };
        Ok(Campaign {
            coupon: coupon.to_string(),
            stock,
            window,
        })
    }
}

/// `COUPON=STOCK` or `COUPON=STOCK@START/END` (RFC 3339 times, e.g.
/// `night=100@2026-11-22T22:00:00Z/2026-11-22T23:00:00Z`), as given to `--campaign`.
impl FromStr for Campaign {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> anyhow::Result<Self> {
        let format = "expected COUPON=STOCK or COUPON=STOCK@START/END";
        // The last `=`: a coupon key may contain one, a stock or a time never does.
        let (coupon, rest) = spec.rsplit_once('=').context(format)?;
        let (stock, window) = match rest.split_once('@') {
            None => (rest, None),
            Some((stock, window)) => {
                let (start, end) = window.split_once('/').context(format)?;
                (stock, Some((time(start)?, time(end)?)))
            }
        };
        let stock = stock
            .trim()
            .parse()
            .with_context(|| format!("stock {stock:?} in {spec:?}: {format}"))?;
        Campaign::new(coupon.trim(), stock, window)
    }
}

fn time(text: &str) -> anyhow::Result<SystemTime> {
    humantime::parse_rfc3339(text.trim())
        .with_context(|| format!("{text:?} is not an RFC 3339 time such as 2026-11-22T10:00:00Z"))
}

/// The campaigns file:
///
/// ```toml
/// [[campaign]]
/// coupon = "sale:2026-11-22"
/// stock = 1000
///
/// [[campaign]]
/// coupon = "night-sale"
/// stock = 100
/// starts = "2026-11-22T22:00:00Z"
/// ends = "2026-11-22T23:00:00Z"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignsFile {
    #[serde(default)]
    campaign: Vec<CampaignEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignEntry {
    coupon: String,
    stock: u64,
    starts: Option<String>,
    ends: Option<String>,
}

fn read_file(path: &Path) -> anyhow::Result<Vec<Campaign>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the campaigns file {}", path.display()))?;
    let file: CampaignsFile =
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
    file.campaign
        .into_iter()
        .map(|entry| {
            let window = match (entry.starts, entry.ends) {
                (None, None) => None,
                (Some(start), Some(end)) => Some((time(&start)?, time(&end)?)),
                _ => bail!(
                    "campaign {:?}: give both starts and ends, or neither",
                    entry.coupon
                ),
            };
            Campaign::new(&entry.coupon, entry.stock, window)
        })
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("in {}", path.display()))
}

/// Every campaign the service sells, by coupon key.
#[derive(Debug, Clone, Default)]
pub struct Campaigns(HashMap<String, Campaign>);

impl Campaigns {
    /// The campaigns of the flags and of the file together; a coupon named twice is an error.
    pub fn load(from_flags: Vec<Campaign>, file: Option<&Path>) -> anyhow::Result<Self> {
        let from_file = file.map(read_file).transpose()?.unwrap_or_default();
        let mut campaigns = HashMap::new();
        for campaign in from_flags.into_iter().chain(from_file) {
            if let Some(twice) = campaigns.insert(campaign.coupon.clone(), campaign) {
                bail!("coupon {:?} is configured twice", twice.coupon);
            }
        }
        if campaigns.is_empty() {
            bail!("no campaign configured: give --campaign COUPON=STOCK or --campaigns-file FILE");
        }
        Ok(Campaigns(campaigns))
    }

    pub fn get(&self, coupon: &str) -> Option<&Campaign> {
        self.0.get(coupon)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Campaign> {
        self.0.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_with_and_without_a_window() {
        let plain: Campaign = "sale:2026-11-22=1000".parse().unwrap();
        assert_eq!(
            (plain.coupon.as_str(), plain.stock, plain.window),
            ("sale:2026-11-22", 1000, None)
        );
        let timed: Campaign = "a=b=5@2026-11-22T22:00:00Z/2026-11-22T23:00:00Z"
            .parse()
            .unwrap();
        assert_eq!(timed.coupon, "a=b");
        assert_eq!(
            timed.window,
            Some(Window::between_ms(1_795_384_800_000, 1_795_388_400_000))
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            "sale",
            "=10",
            "sale=-1",
            "sale=ten",
            "sale=9223372036854775808",
            "a}b=10",
            "sale=10@2026-11-22T23:00:00Z/2026-11-22T22:00:00Z",
            "sale=10@2026-11-22T23:00:00Z",
            "sale=10@yesterday/tomorrow",
        ] {
            assert!(spec.parse::<Campaign>().is_err(), "{spec} was accepted");
        }
    }

    #[test]
    fn file_and_flags_together_and_no_coupon_twice() {
        let dir = std::env::temp_dir().join(format!("coupon-http-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("campaigns.toml");
        std::fs::write(
            &path,
            "[[campaign]]\ncoupon = \"night\"\nstock = 100\nstarts = \"2026-11-22T22:00:00Z\"\n\
             ends = \"2026-11-22T23:00:00Z\"\n",
        )
        .unwrap();
        let campaigns = Campaigns::load(vec!["sale=10".parse().unwrap()], Some(&path)).unwrap();
        assert_eq!(campaigns.get("night").map(|c| c.stock), Some(100));
        assert_eq!(campaigns.get("sale").map(|c| c.stock), Some(10));
        assert!(Campaigns::load(vec!["night=1".parse().unwrap()], Some(&path)).is_err());
        std::fs::write(
            &path,
            "[[campaign]]\ncoupon = \"x\"\nstock = 1\nstarts = \"2026-11-22T22:00:00Z\"\n",
        )
        .unwrap();
        assert!(
            Campaigns::load(Vec::new(), Some(&path)).is_err(),
            "a window needs both ends"
        );
        std::fs::write(&path, "[[campaign]]\ncoupon = \"x\"\nstok = 1\n").unwrap();
        assert!(
            Campaigns::load(Vec::new(), Some(&path)).is_err(),
            "typos are refused"
        );
        assert!(
            Campaigns::load(Vec::new(), None).is_err(),
            "nothing to sell"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
