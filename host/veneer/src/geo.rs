//! Country of a client address from a MaxMind-format database (`[server] geoip`): MaxMind's
//! GeoIP2/GeoLite2 Country files (`country.iso_code`) and the public-domain ip-location-db
//! files (`country_code`) are both read. The whole file is held in memory and looked up with
//! no locking; a lookup decodes only the country field.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

/// An open database.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
    #[serde(borrow)]
    country: Option<Country<'a>>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

impl GeoDb {
    /// Opens `path`; fails with a clear message if it is not a MaxMind DB file.
    pub fn open(path: &Path) -> anyhow::Result<GeoDb> {
        let reader = maxminddb::Reader::open_readfile(path)
            .with_context(|| format!("{} is not a readable MaxMind DB file", path.display()))?;
        Ok(GeoDb { reader })
    }

    /// The ISO 3166 country of `ip`, upper case, if the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let record: Record<'_> = self.reader.lookup(ip).ok()??;
        let code = record
            .country_code
            .or_else(|| record.country.and_then(|c| c.iso_code))?;
        (code.len() == 2).then(|| code.to_ascii_uppercase())
    }

    /// The database's type as its metadata names it.
    pub fn kind(&self) -> &str {
        &self.reader.metadata.database_type
    }
}
