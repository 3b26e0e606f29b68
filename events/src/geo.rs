//! GPS coordinates (WGS 84) and great-circle distance.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in kilometres (IUGG), used by the haversine formula.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Why a pair of numbers is not a valid position.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// Latitude not finite or outside -90..=90 degrees.
    #[error("latitude must be a finite number in -90..=90, got {0}")]
    Latitude(f64),
    /// Longitude not finite or outside -180..=180 degrees.
    #[error("longitude must be a finite number in -180..=180, got {0}")]
    Longitude(f64),
}

/// A position in decimal degrees. Deserialisation goes through [`GeoPoint::new`], so a point
/// read from JSON is always in range. The fields are public for reading and for pattern
/// matching; code that builds a point by hand should use [`GeoPoint::new`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawGeoPoint")]
pub struct GeoPoint {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
}

/// The unchecked wire shape of a [`GeoPoint`].
#[derive(Deserialize)]
struct RawGeoPoint {
    lat: f64,
    lon: f64,
}

impl TryFrom<RawGeoPoint> for GeoPoint {
    type Error = GeoError;
    fn try_from(raw: RawGeoPoint) -> Result<Self, GeoError> {
        GeoPoint::new(raw.lat, raw.lon)
    }
}

impl GeoPoint {
    /// A point, if both coordinates are finite and in range. A subnormal coordinate (closer to
    /// 0 than `f64::MIN_POSITIVE`, far below any GPS precision) becomes 0: PostgreSQL's float
    /// arithmetic refuses to underflow (`radians(5e-324)` is an error, not 0), so such a point
    /// could be accepted here and then fail every write that projects it.
    pub fn new(lat: f64, lon: f64) -> Result<Self, GeoError> {
        let flush = |degrees: f64| if degrees.is_subnormal() { 0.0 } else { degrees };
        let point = Self {
            lat: flush(lat),
            lon: flush(lon),
        };
        point.validate()?;
        Ok(point)
    }

    /// Checks the ranges again (for points built with a struct literal).
    pub fn validate(&self) -> Result<(), GeoError> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err(GeoError::Latitude(self.lat));
        }
        if !(self.lon.is_finite() && (-180.0..=180.0).contains(&self.lon)) {
            return Err(GeoError::Longitude(self.lon));
        }
        Ok(())
    }

    /// Great-circle distance to `other` in kilometres (haversine on a spherical Earth).
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let half_dlat = (other.lat - self.lat).to_radians() / 2.0;
        let half_dlon = (other.lon - self.lon).to_radians() / 2.0;
        let h = half_dlat.sin().powi(2) + lat1.cos() * lat2.cos() * half_dlon.sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint::new(lat, lon).unwrap()
    }

    #[test]
    fn beijing_to_shanghai_is_about_1067_km() {
        let beijing = point(39.9042, 116.4074);
        let shanghai = point(31.2304, 121.4737);
        let d = beijing.distance_km(&shanghai);
        assert!((d - 1067.0).abs() < 1067.0 * 0.01, "got {d}");
        assert!(
            (shanghai.distance_km(&beijing) - d).abs() < 1e-9,
            "symmetric"
        );
    }

    #[test]
    fn distance_to_self_is_zero_and_antipodes_half_circumference() {
        let p = point(31.2304, 121.4737);
        assert_eq!(p.distance_km(&p), 0.0);
        let d = point(0.0, 0.0).distance_km(&point(0.0, 180.0));
        assert!(
            (d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6,
            "got {d}"
        );
    }

    #[test]
    fn short_city_distance_is_accurate() {
        // People's Square to the Bund, Shanghai: about 1.7 km.
        let d = point(31.2317, 121.4726).distance_km(&point(31.2400, 121.4900));
        assert!((1.6..1.9).contains(&d), "got {d}");
    }

    #[test]
    fn subnormal_coordinates_become_zero() {
        let p = point(-5e-324, 1e-310);
        assert_eq!((p.lat, p.lon), (0.0, 0.0));
        let read: GeoPoint = serde_json::from_str(r#"{"lat":5e-324,"lon":-2e-320}"#).unwrap();
        assert_eq!((read.lat, read.lon), (0.0, 0.0));
        let smallest_normal = point(f64::MIN_POSITIVE, -f64::MIN_POSITIVE);
        assert_eq!(
            (smallest_normal.lat, smallest_normal.lon),
            (f64::MIN_POSITIVE, -f64::MIN_POSITIVE)
        );
    }

    #[test]
    fn new_validates_ranges_and_finiteness() {
        assert!(GeoPoint::new(90.0, 180.0).is_ok());
        assert!(GeoPoint::new(-90.0, -180.0).is_ok());
        assert_eq!(GeoPoint::new(91.0, 0.0), Err(GeoError::Latitude(91.0)));
        assert_eq!(GeoPoint::new(0.0, -180.5), Err(GeoError::Longitude(-180.5)));
        assert!(matches!(
            GeoPoint::new(f64::NAN, 0.0),
            Err(GeoError::Latitude(_))
        ));
        assert!(matches!(
            GeoPoint::new(0.0, f64::INFINITY),
            Err(GeoError::Longitude(_))
        ));
    }

    #[test]
    fn deserialisation_goes_through_validation() {
        let ok: GeoPoint = serde_json::from_str(r#"{"lat":31.2,"lon":121.5,"alt":4}"#).unwrap();
        assert_eq!(ok, point(31.2, 121.5));
        let err = serde_json::from_str::<GeoPoint>(r#"{"lat":91,"lon":0}"#).unwrap_err();
        assert!(err.to_string().contains("latitude"), "{err}");
        assert!(serde_json::from_str::<GeoPoint>(r#"{"lat":"31","lon":0}"#).is_err());
        assert!(serde_json::from_str::<GeoPoint>(r#"{"lat":31}"#).is_err());
    }
}
