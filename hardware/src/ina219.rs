//! TI INA219 current/power monitor over I2C, as on common Raspberry Pi UPS
//! HATs. Generic over `embedded_hal::i2c::I2c`, so rppal's I2C drives it on a
//! Pi and `embedded-hal-mock` replays datasheet register values in tests.
//!
//! Register map and scales (INA219 datasheet, SBOS448): 0x00 configuration,
//! 0x01 shunt voltage (signed, LSB 10 µV), 0x02 bus voltage (bits 15..3,
//! LSB 4 mV; bit 1 CNVR, bit 0 OVF), 0x03 power (LSB 20 x current LSB),
//! 0x04 current (signed, LSB = current LSB), 0x05 calibration
//! (`trunc(0.04096 / (current_lsb x r_shunt))`). Registers are big-endian.

use embedded_hal::i2c::I2c;

/// Default I2C address (A0 = A1 = GND).
pub const DEFAULT_ADDRESS: u8 = 0x40;

const REG_CONFIG: u8 = 0x00;
const REG_SHUNT: u8 = 0x01;
const REG_BUS: u8 = 0x02;
const REG_POWER: u8 = 0x03;
const REG_CURRENT: u8 = 0x04;
const REG_CALIBRATION: u8 = 0x05;

/// Configuration written at start: 32 V bus range, PGA /8 (±320 mV),
/// 12-bit bus and shunt ADCs, continuous shunt and bus (the power-on default, 0x399F).
pub const CONFIG_32V_320MV_CONTINUOUS: u16 = 0x399F;

/// What the board around the chip looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ina219Config {
    pub address: u8,
    /// Shunt resistor, ohms (0.1 on most HATs; 0.01 on some UPS HATs).
    pub shunt_ohms: f64,
    /// Largest current expected, amperes; sets the current LSB (max / 2^15).
    pub max_current_a: f64,
}

impl Default for Ina219Config {
    fn default() -> Self {
        Self { address: DEFAULT_ADDRESS, shunt_ohms: 0.1, max_current_a: 3.2 }
    }
}

/// One reading of the monitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ina219Reading {
    pub bus_voltage_v: f64,
    pub shunt_voltage_v: f64,
    pub current_a: f64,
    pub power_w: f64,
    /// The power or current computation overflowed (bus register OVF bit).
    pub overflow: bool,
}

/// Errors of the driver: the bus's own error.
#[derive(Debug, thiserror::Error)]
pub enum Ina219Error<E: core::fmt::Debug> {
    #[error("I2C error talking to the INA219: {0:?}")]
    I2c(E),
}

/// The driver.
pub struct Ina219<I> {
    i2c: I,
    cfg: Ina219Config,
    current_lsb: f64,
    calibration: u16,
}

impl<I: I2c> Ina219<I> {
    /// Programs configuration and calibration.
    ///
    /// # Errors
    /// When the bus fails.
    pub fn new(i2c: I, cfg: Ina219Config) -> Result<Self, Ina219Error<I::Error>> {
        let current_lsb = cfg.max_current_a / 32768.0;
        let cal = (0.04096 / (current_lsb * cfg.shunt_ohms)).trunc();
        // The datasheet keeps bit 0 of the calibration register clear.
        let calibration = if cal.is_finite() { cal.clamp(2.0, 65534.0) as u16 & 0xFFFE } else { 4096 };
        let mut dev = Self { i2c, cfg, current_lsb, calibration };
        dev.write(REG_CONFIG, CONFIG_32V_320MV_CONTINUOUS)?;
        dev.write(REG_CALIBRATION, calibration)?;
        Ok(dev)
    }

    /// The calibration value programmed.
    #[must_use]
    pub fn calibration(&self) -> u16 {
        self.calibration
    }

    fn write(&mut self, reg: u8, value: u16) -> Result<(), Ina219Error<I::Error>> {
        let [hi, lo] = value.to_be_bytes();
        self.i2c.write(self.cfg.address, &[reg, hi, lo]).map_err(Ina219Error::I2c)
    }

    fn read(&mut self, reg: u8) -> Result<u16, Ina219Error<I::Error>> {
        let mut buf = [0u8; 2];
        self.i2c.write_read(self.cfg.address, &[reg], &mut buf).map_err(Ina219Error::I2c)?;
        Ok(u16::from_be_bytes(buf))
    }

    /// Reads shunt, bus, current and power.
    ///
    /// # Errors
    /// When the bus fails.
    pub fn read_all(&mut self) -> Result<Ina219Reading, Ina219Error<I::Error>> {
        let shunt = self.read(REG_SHUNT)? as i16;
        let bus = self.read(REG_BUS)?;
        let current = self.read(REG_CURRENT)? as i16;
        let power = self.read(REG_POWER)?;
        Ok(Ina219Reading {
            bus_voltage_v: f64::from(bus >> 3) * 0.004,
            shunt_voltage_v: f64::from(shunt) * 10e-6,
            current_a: f64::from(current) * self.current_lsb,
            power_w: f64::from(power) * 20.0 * self.current_lsb,
            overflow: bus & 1 == 1,
        })
    }
}

/// State of charge of a lithium-ion pack from its resting voltage: a
/// piecewise-linear curve per cell (typical 18650 discharge at low current),
/// scaled by the number of cells in series. Coarse under load; the power
/// manager adds hysteresis on top.
pub const LI_ION_CELL_CURVE: [(f64, f64); 11] = [
    (3.00, 0.0),
    (3.30, 2.0),
    (3.40, 5.0),
    (3.50, 12.0),
    (3.60, 25.0),
    (3.70, 40.0),
    (3.80, 55.0),
    (3.90, 68.0),
    (4.00, 80.0),
    (4.10, 90.0),
    (4.20, 100.0),
];

/// State of charge (0-100 %) of `cells` lithium-ion cells in series at `pack_voltage_v`.
#[must_use]
pub fn li_ion_soc_pct(pack_voltage_v: f64, cells: u32) -> f64 {
    let v = pack_voltage_v / f64::from(cells.max(1));
    let curve = &LI_ION_CELL_CURVE;
    if v <= curve[0].0 {
        return 0.0;
    }
    for w in curve.windows(2) {
        let ((v0, s0), (v1, s1)) = (w[0], w[1]);
        if v <= v1 {
            return s0 + (s1 - s0) * (v - v0) / (v1 - v0);
        }
    }
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const A: u8 = DEFAULT_ADDRESS;

    fn init(cal: u16) -> Vec<T> {
        vec![T::write(A, vec![REG_CONFIG, 0x39, 0x9F]), T::write(A, vec![REG_CALIBRATION, (cal >> 8) as u8, cal as u8])]
    }

    #[test]
    fn calibration_follows_the_datasheet_formula() {
        // 0.1 ohm, 3.2 A max: current LSB 97.66 uA, Cal = trunc(0.04096 / (97.66e-6 * 0.1)) = 4194 (even).
        let mut i2c = Mock::new(&init(4194));
        {
            let dev = Ina219::new(&mut i2c, Ina219Config::default()).unwrap();
            assert_eq!(dev.calibration(), 4194);
        }
        i2c.done();
    }

    #[test]
    fn reads_scale_registers_as_the_datasheet_says() {
        // 0.1 ohm shunt, 2 A max -> current LSB 61.04 uA, Cal = 6710.
        let cfg = Ina219Config { max_current_a: 2.0, ..Default::default() };
        let mut tx = init(6710);
        // Shunt 0x0FA0 = 4000 x 10 uV = 40 mV (datasheet shunt format, PGA /8).
        tx.push(T::write_read(A, vec![REG_SHUNT], vec![0x0F, 0xA0]));
        // Bus 0x5DC2: (0x5DC2 >> 3) = 3000 x 4 mV = 12.0 V, CNVR set, no overflow.
        tx.push(T::write_read(A, vec![REG_BUS], vec![0x5D, 0xC2]));
        // Current = shunt x Cal / 4096 = 4000 x 6710 / 4096 = 6552 -> 6552 x 61.04 uA = 0.40 A.
        tx.push(T::write_read(A, vec![REG_CURRENT], vec![0x19, 0x98]));
        // Power = current x bus / 5000 = 6552 x 3000 / 5000 = 3931 -> x 20 x LSB = 4.80 W.
        tx.push(T::write_read(A, vec![REG_POWER], vec![0x0F, 0x5B]));
        let mut i2c = Mock::new(&tx);
        let r = Ina219::new(&mut i2c, cfg).unwrap().read_all().unwrap();
        assert!((r.shunt_voltage_v - 0.040).abs() < 1e-9, "{r:?}");
        assert!((r.bus_voltage_v - 12.0).abs() < 1e-9, "{r:?}");
        assert!((r.current_a - 0.40).abs() < 0.001, "{r:?}");
        assert!((r.power_w - 4.80).abs() < 0.01, "{r:?}");
        assert!(!r.overflow);
        i2c.done();
    }

    #[test]
    fn negative_shunt_means_discharge_current() {
        let cfg = Ina219Config { max_current_a: 2.0, ..Default::default() };
        let mut tx = init(6710);
        // -40 mV: two's complement of 4000 = 0xF060 (datasheet: negative shunt voltages are two's complement).
        tx.push(T::write_read(A, vec![REG_SHUNT], vec![0xF0, 0x60]));
        tx.push(T::write_read(A, vec![REG_BUS], vec![0x3E, 0x83])); // 0x3E83 >> 3 = 2000 -> 8.0 V, OVF set
        tx.push(T::write_read(A, vec![REG_CURRENT], vec![0xE6, 0x68])); // -6552
        tx.push(T::write_read(A, vec![REG_POWER], vec![0x0A, 0x3C])); // 2620
        let mut i2c = Mock::new(&tx);
        let r = Ina219::new(&mut i2c, cfg).unwrap().read_all().unwrap();
        assert!((r.shunt_voltage_v + 0.040).abs() < 1e-9);
        assert!((r.current_a + 0.40).abs() < 0.001);
        assert!((r.bus_voltage_v - 8.0).abs() < 1e-9);
        assert!(r.overflow);
        i2c.done();
    }

    #[test]
    fn soc_curve() {
        assert_eq!(li_ion_soc_pct(8.40, 2), 100.0);
        assert_eq!(li_ion_soc_pct(5.8, 2), 0.0);
        assert!((li_ion_soc_pct(3.75, 1) - 47.5).abs() < 1e-9);
        assert!((li_ion_soc_pct(7.40, 2) - 40.0).abs() < 1e-9);
        assert_eq!(li_ion_soc_pct(4.5, 1), 100.0);
    }
}
