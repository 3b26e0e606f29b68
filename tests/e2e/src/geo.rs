//! Placing pickups and couriers at known distances from each other.

use serde::{Deserialize, Serialize};

/// Kilometres per degree of latitude (and of longitude at the equator).
const KM_PER_DEGREE: f64 = 111.32;

/// A WGS84 position as the HTTP API spells it (`{"lat","lon"}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

impl Point {
    /// Jiangwan, Shanghai: the centre of the tests' city.
    pub const JIANGWAN: Point = Point {
        lat: 31.3046,
        lon: 121.5011,
    };

    pub const fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }

    /// The point `north_km` north and `east_km` east of this one (flat-earth approximation,
    /// accurate to well under 1% for the tens of kilometres the tests use).
    pub fn offset_km(self, north_km: f64, east_km: f64) -> Point {
        let lat = self.lat + north_km / KM_PER_DEGREE;
        let lon = self.lon + east_km / (KM_PER_DEGREE * self.lat.to_radians().cos());
        Point { lat, lon }
    }

    /// Great-circle distance in km (the same haversine the dispatch service uses, via `jwl-events`).
    pub fn distance_km(self, other: Point) -> f64 {
        let here = jwl_events::GeoPoint {
            lat: self.lat,
            lon: self.lon,
        };
        let there = jwl_events::GeoPoint {
            lat: other.lat,
            lon: other.lon,
        };
        here.distance_km(&there)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_land_at_the_requested_distance() {
        let centre = Point::JIANGWAN;
        for (north, east) in [
            (1.0, 0.0),
            (0.0, 1.0),
            (3.0, 4.0),
            (-50.0, 0.0),
            (0.0, 50.0),
        ] {
            let wanted = f64::hypot(north, east);
            let got = centre.distance_km(centre.offset_km(north, east));
            assert!(
                (got - wanted).abs() < wanted * 0.01,
                "{north},{east}: {got} vs {wanted}"
            );
        }
    }
}
