//! Colour maps for saliency, by key: `jet` (the paper's figures; the default), `viridis` (lightness
//! increases with the value, so it survives greyscale printing and colour-blind readers) and `turbo`
//! (jet's hues with smooth lightness). A map takes a value in [0, 1] to sRGB in [0, 1].

use std::fmt;

use anyhow::{bail, Result};
use castream_cam::overlay;

#[derive(Clone, Copy)]
pub struct ColourMap {
    pub key: &'static str,
    pub colour: fn(f32) -> [f32; 3],
}

impl ColourMap {
    /// MATLAB's piecewise-linear jet, as pytorch-grad-cam draws it.
    pub const JET: ColourMap = ColourMap { key: "jet", colour: overlay::jet };
    /// matplotlib's viridis.
    pub const VIRIDIS: ColourMap = ColourMap { key: "viridis", colour: viridis };
    /// Google's turbo (matplotlib's `turbo`).
    pub const TURBO: ColourMap = ColourMap { key: "turbo", colour: turbo };
    /// The registry.
    pub const ALL: [ColourMap; 3] = [ColourMap::JET, ColourMap::VIRIDIS, ColourMap::TURBO];

    /// The map named `key`; an unknown key lists the valid ones.
    pub fn named(key: &str) -> Result<ColourMap> {
        match ColourMap::ALL.into_iter().find(|m| m.key == key) {
            Some(m) => Ok(m),
            None => {
                let keys: Vec<&str> = ColourMap::ALL.iter().map(|m| m.key).collect();
                bail!("unknown colour map `{key}`; valid: {}. Fix: e.g. viridis", keys.join(", "))
            }
        }
    }

    /// A row-major map with values in [0, 1] as a CHW image in this colour map.
    pub fn heatmap(&self, map: &[f32]) -> Vec<f32> {
        overlay::heatmap(map, self.colour)
    }

    /// This colour map of `map` blended half and half on the CHW image `rgb`.
    pub fn blend(&self, rgb: &[f32], map: &[f32]) -> Vec<f32> {
        overlay::blend(rgb, map, 0.5, self.colour)
    }

    /// The colour of `v` as 8-bit RGB.
    pub fn rgb8(&self, v: f32) -> [u8; 3] {
        (self.colour)(v).map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
    }
}

impl std::str::FromStr for ColourMap {
    type Err = anyhow::Error;

    fn from_str(key: &str) -> Result<ColourMap> {
        ColourMap::named(key)
    }
}

impl Default for ColourMap {
    /// jet, the paper's.
    fn default() -> ColourMap {
        ColourMap::JET
    }
}

impl fmt::Debug for ColourMap {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.key)
    }
}

impl PartialEq for ColourMap {
    fn eq(&self, other: &ColourMap) -> bool {
        self.key == other.key
    }
}

/// A 256-entry table looked up as matplotlib's `ListedColormap` does: entry `floor(256 v)`, so
/// colours agree with matplotlib's to the byte.
fn listed(table: &[u32; 256], v: f32) -> [f32; 3] {
    let i = (v.clamp(0.0, 1.0) * 256.0) as usize;
    let c = table[i.min(255)];
    [c >> 16, (c >> 8) & 0xff, c & 0xff].map(|b| b as f32 / 255.0)
}

fn viridis(v: f32) -> [f32; 3] {
    listed(&VIRIDIS, v)
}

fn turbo(v: f32) -> [f32; 3] {
    listed(&TURBO, v)
}

/// matplotlib's `_viridis_data` (van der Walt and Smith), rounded to bytes.
#[rustfmt::skip]
const VIRIDIS: [u32; 256] = [
    0x440154, 0x440256, 0x450457, 0x450559, 0x46075a, 0x46085c, 0x460a5d, 0x460b5e, 0x470d60, 0x470e61,
    0x471063, 0x471164, 0x471365, 0x481467, 0x481668, 0x481769, 0x48186a, 0x481a6c, 0x481b6d, 0x481c6e,
    0x481d6f, 0x481f70, 0x482071, 0x482173, 0x482374, 0x482475, 0x482576, 0x482677, 0x482878, 0x482979,
    0x472a7a, 0x472c7a, 0x472d7b, 0x472e7c, 0x472f7d, 0x46307e, 0x46327e, 0x46337f, 0x463480, 0x453581,
    0x453781, 0x453882, 0x443983, 0x443a83, 0x443b84, 0x433d84, 0x433e85, 0x423f85, 0x424086, 0x424186,
    0x414287, 0x414487, 0x404588, 0x404688, 0x3f4788, 0x3f4889, 0x3e4989, 0x3e4a89, 0x3e4c8a, 0x3d4d8a,
    0x3d4e8a, 0x3c4f8a, 0x3c508b, 0x3b518b, 0x3b528b, 0x3a538b, 0x3a548c, 0x39558c, 0x39568c, 0x38588c,
    0x38598c, 0x375a8c, 0x375b8d, 0x365c8d, 0x365d8d, 0x355e8d, 0x355f8d, 0x34608d, 0x34618d, 0x33628d,
    0x33638d, 0x32648e, 0x32658e, 0x31668e, 0x31678e, 0x31688e, 0x30698e, 0x306a8e, 0x2f6b8e, 0x2f6c8e,
    0x2e6d8e, 0x2e6e8e, 0x2e6f8e, 0x2d708e, 0x2d718e, 0x2c718e, 0x2c728e, 0x2c738e, 0x2b748e, 0x2b758e,
    0x2a768e, 0x2a778e, 0x2a788e, 0x29798e, 0x297a8e, 0x297b8e, 0x287c8e, 0x287d8e, 0x277e8e, 0x277f8e,
    0x27808e, 0x26818e, 0x26828e, 0x26828e, 0x25838e, 0x25848e, 0x25858e, 0x24868e, 0x24878e, 0x23888e,
    0x23898e, 0x238a8d, 0x228b8d, 0x228c8d, 0x228d8d, 0x218e8d, 0x218f8d, 0x21908d, 0x21918c, 0x20928c,
    0x20928c, 0x20938c, 0x1f948c, 0x1f958b, 0x1f968b, 0x1f978b, 0x1f988b, 0x1f998a, 0x1f9a8a, 0x1e9b8a,
    0x1e9c89, 0x1e9d89, 0x1f9e89, 0x1f9f88, 0x1fa088, 0x1fa188, 0x1fa187, 0x1fa287, 0x20a386, 0x20a486,
    0x21a585, 0x21a685, 0x22a785, 0x22a884, 0x23a983, 0x24aa83, 0x25ab82, 0x25ac82, 0x26ad81, 0x27ad81,
    0x28ae80, 0x29af7f, 0x2ab07f, 0x2cb17e, 0x2db27d, 0x2eb37c, 0x2fb47c, 0x31b57b, 0x32b67a, 0x34b679,
    0x35b779, 0x37b878, 0x38b977, 0x3aba76, 0x3bbb75, 0x3dbc74, 0x3fbc73, 0x40bd72, 0x42be71, 0x44bf70,
    0x46c06f, 0x48c16e, 0x4ac16d, 0x4cc26c, 0x4ec36b, 0x50c46a, 0x52c569, 0x54c568, 0x56c667, 0x58c765,
    0x5ac864, 0x5cc863, 0x5ec962, 0x60ca60, 0x63cb5f, 0x65cb5e, 0x67cc5c, 0x69cd5b, 0x6ccd5a, 0x6ece58,
    0x70cf57, 0x73d056, 0x75d054, 0x77d153, 0x7ad151, 0x7cd250, 0x7fd34e, 0x81d34d, 0x84d44b, 0x86d549,
    0x89d548, 0x8bd646, 0x8ed645, 0x90d743, 0x93d741, 0x95d840, 0x98d83e, 0x9bd93c, 0x9dd93b, 0xa0da39,
    0xa2da37, 0xa5db36, 0xa8db34, 0xaadc32, 0xaddc30, 0xb0dd2f, 0xb2dd2d, 0xb5de2b, 0xb8de29, 0xbade28,
    0xbddf26, 0xc0df25, 0xc2df23, 0xc5e021, 0xc8e020, 0xcae11f, 0xcde11d, 0xd0e11c, 0xd2e21b, 0xd5e21a,
    0xd8e219, 0xdae319, 0xdde318, 0xdfe318, 0xe2e418, 0xe5e419, 0xe7e419, 0xeae51a, 0xece51b, 0xefe51c,
    0xf1e51d, 0xf4e61e, 0xf6e620, 0xf8e621, 0xfbe723, 0xfde725,
];

/// Google's turbo (Mikhailov, 2019; matplotlib's `_turbo_data`), rounded to bytes.
#[rustfmt::skip]
const TURBO: [u32; 256] = [
    0x30123b, 0x321543, 0x33184a, 0x341b51, 0x351e58, 0x36215f, 0x372466, 0x38276d, 0x392a73, 0x3a2d79,
    0x3b2f80, 0x3c3286, 0x3d358b, 0x3e3891, 0x3f3b97, 0x3f3e9c, 0x4040a2, 0x4143a7, 0x4146ac, 0x4249b1,
    0x424bb5, 0x434eba, 0x4451bf, 0x4454c3, 0x4456c7, 0x4559cb, 0x455ccf, 0x455ed3, 0x4661d6, 0x4664da,
    0x4666dd, 0x4669e0, 0x466be3, 0x476ee6, 0x4771e9, 0x4773eb, 0x4776ee, 0x4778f0, 0x477bf2, 0x467df4,
    0x4680f6, 0x4682f8, 0x4685fa, 0x4687fb, 0x458afc, 0x458cfd, 0x448ffe, 0x4391fe, 0x4294ff, 0x4196ff,
    0x4099ff, 0x3e9bfe, 0x3d9efe, 0x3ba0fd, 0x3aa3fc, 0x38a5fb, 0x37a8fa, 0x35abf8, 0x33adf7, 0x31aff5,
    0x2fb2f4, 0x2eb4f2, 0x2cb7f0, 0x2ab9ee, 0x28bceb, 0x27bee9, 0x25c0e7, 0x23c3e4, 0x22c5e2, 0x20c7df,
    0x1fc9dd, 0x1ecbda, 0x1ccdd8, 0x1bd0d5, 0x1ad2d2, 0x1ad4d0, 0x19d5cd, 0x18d7ca, 0x18d9c8, 0x18dbc5,
    0x18ddc2, 0x18dec0, 0x18e0bd, 0x19e2bb, 0x19e3b9, 0x1ae4b6, 0x1ce6b4, 0x1de7b2, 0x1fe9af, 0x20eaac,
    0x22ebaa, 0x25eca7, 0x27eea4, 0x2aefa1, 0x2cf09e, 0x2ff19b, 0x32f298, 0x35f394, 0x38f491, 0x3cf58e,
    0x3ff68a, 0x43f787, 0x46f884, 0x4af880, 0x4ef97d, 0x52fa7a, 0x55fa76, 0x59fb73, 0x5dfc6f, 0x61fc6c,
    0x65fd69, 0x69fd66, 0x6dfe62, 0x71fe5f, 0x75fe5c, 0x79fe59, 0x7dff56, 0x80ff53, 0x84ff51, 0x88ff4e,
    0x8bff4b, 0x8fff49, 0x92ff47, 0x96fe44, 0x99fe42, 0x9cfe40, 0x9ffd3f, 0xa1fd3d, 0xa4fc3c, 0xa7fc3a,
    0xa9fb39, 0xacfb38, 0xaffa37, 0xb1f936, 0xb4f836, 0xb7f735, 0xb9f635, 0xbcf534, 0xbef434, 0xc1f334,
    0xc3f134, 0xc6f034, 0xc8ef34, 0xcbed34, 0xcdec34, 0xd0ea34, 0xd2e935, 0xd4e735, 0xd7e535, 0xd9e436,
    0xdbe236, 0xdde037, 0xdfdf37, 0xe1dd37, 0xe3db38, 0xe5d938, 0xe7d739, 0xe9d539, 0xebd339, 0xecd13a,
    0xeecf3a, 0xefcd3a, 0xf1cb3a, 0xf2c93a, 0xf4c73a, 0xf5c53a, 0xf6c33a, 0xf7c13a, 0xf8be39, 0xf9bc39,
    0xfaba39, 0xfbb838, 0xfbb637, 0xfcb336, 0xfcb136, 0xfdae35, 0xfdac34, 0xfea933, 0xfea732, 0xfea431,
    0xfea130, 0xfe9e2f, 0xfe9b2d, 0xfe992c, 0xfe962b, 0xfe932a, 0xfe9029, 0xfd8d27, 0xfd8a26, 0xfc8725,
    0xfc8423, 0xfb8122, 0xfb7e21, 0xfa7b1f, 0xf9781e, 0xf9751d, 0xf8721c, 0xf76f1a, 0xf66c19, 0xf56918,
    0xf46617, 0xf36315, 0xf26014, 0xf15d13, 0xf05b12, 0xef5811, 0xed5510, 0xec530f, 0xeb500e, 0xea4e0d,
    0xe84b0c, 0xe7490c, 0xe5470b, 0xe4450a, 0xe2430a, 0xe14109, 0xdf3f08, 0xdd3d08, 0xdc3b07, 0xda3907,
    0xd83706, 0xd63506, 0xd43305, 0xd23105, 0xd02f05, 0xce2d04, 0xcc2b04, 0xca2a04, 0xc82803, 0xc52603,
    0xc32503, 0xc12302, 0xbe2102, 0xbc2002, 0xb91e02, 0xb71d02, 0xb41b01, 0xb21a01, 0xaf1801, 0xac1701,
    0xa91601, 0xa71401, 0xa41301, 0xa11201, 0x9e1001, 0x9b0f01, 0x980e01, 0x950d01, 0x920b01, 0x8e0a01,
    0x8b0902, 0x880802, 0x850702, 0x810602, 0x7e0502, 0x7a0403,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(m: ColourMap, v: f32) -> String {
        let [r, g, b] = m.rgb8(v);
        format!("#{r:02x}{g:02x}{b:02x}")
    }

    #[test]
    fn reference_colours() {
        // jet: dark blue, green at the middle, dark red (MATLAB's).
        assert_eq!(
            [hex(ColourMap::JET, 0.0), hex(ColourMap::JET, 0.5), hex(ColourMap::JET, 1.0)],
            ["#000080", "#80ff80", "#800000"]
        );
        // viridis's published endpoints and matplotlib's viridis(0.5).
        assert_eq!(
            [hex(ColourMap::VIRIDIS, 0.0), hex(ColourMap::VIRIDIS, 0.5), hex(ColourMap::VIRIDIS, 1.0)],
            ["#440154", "#21918c", "#fde725"]
        );
        // turbo's endpoints and matplotlib's turbo(0.5).
        assert_eq!(
            [hex(ColourMap::TURBO, 0.0), hex(ColourMap::TURBO, 0.5), hex(ColourMap::TURBO, 1.0)],
            ["#30123b", "#a4fc3c", "#7a0403"]
        );
        // Out-of-range values clamp.
        assert_eq!(hex(ColourMap::VIRIDIS, -1.0), "#440154");
        assert_eq!(hex(ColourMap::TURBO, 2.0), "#7a0403");
    }

    #[test]
    fn the_registry_by_key() {
        assert_eq!(ColourMap::default(), ColourMap::JET);
        for m in ColourMap::ALL {
            assert_eq!(ColourMap::named(m.key).unwrap(), m);
            assert_eq!(m.key.parse::<ColourMap>().unwrap(), m);
        }
        let err = ColourMap::named("rainbow").unwrap_err().to_string();
        assert!(err.contains("jet, viridis, turbo"), "{err}");
    }

    #[test]
    fn heatmap_and_blend_use_the_chosen_map() {
        let map = [0.0, 1.0];
        let v = ColourMap::VIRIDIS.heatmap(&map);
        // CHW: red plane, green plane, blue plane.
        assert_eq!(v, vec![68.0 / 255.0, 253.0 / 255.0, 1.0 / 255.0, 231.0 / 255.0, 84.0 / 255.0, 37.0 / 255.0]);
        let white = [1.0; 6];
        let b = ColourMap::VIRIDIS.blend(&white, &map);
        assert_eq!(b[0], 0.5 + 0.5 * 68.0 / 255.0);
    }
}
