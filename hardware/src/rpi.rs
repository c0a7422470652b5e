//! A Raspberry Pi with a UPS HAT, through rppal (feature `rpi`): the HAT's
//! INA219 over I2C for the battery, a PWM fan, a GPIO status LED; thermal
//! zones, cpufreq and the firmware's throttling flags through sysfs.
//!
//! Compiles on any target; off a Pi, `RpiBoard::open` fails with rppal's
//! "unknown Raspberry Pi model" error instead of panicking.
//!
//! What the INA219 on a UPS HAT measures is the battery side: bus voltage is
//! the pack voltage, positive current charges the pack, negative current
//! discharges it. So: `charging` = current above +20 mA, `on_battery` =
//! current below -20 mA, state of charge from the pack voltage
//! (`ina219::li_ion_soc_pct`), input fields from the pack side.

use std::path::Path;

use embedded_hal::pwm::{ErrorType, SetDutyCycle};

use crate::drivers::{GpioLed, PwmFan};
use crate::ina219::{Ina219, Ina219Config, li_ion_soc_pct};
use crate::sysfs::SysfsBoard;
use crate::{
    Board, CpuGovernor, Fan, HardwareError, PowerReading, PowerSource, StatusLed, ThermalSensor, ThrottleFlags,
};

/// Where things are wired.
#[derive(Debug, Clone, PartialEq)]
pub struct RpiConfig {
    /// I2C bus of the HAT (1 on the 40-pin header).
    pub i2c_bus: u8,
    pub ina219: Ina219Config,
    /// Lithium-ion cells in series on the HAT (2 on most 18650 UPS HATs).
    pub cells: u32,
    /// PWM channel of the fan (0 or 1), if one is wired.
    pub fan_pwm_channel: Option<u8>,
    /// PWM frequency for the fan, Hz (25 kHz for 4-pin fans).
    pub fan_pwm_hz: f64,
    /// BCM number of the status LED pin, if one is wired.
    pub led_gpio: Option<u8>,
}

impl Default for RpiConfig {
    fn default() -> Self {
        Self {
            i2c_bus: 1,
            ina219: Ina219Config::default(),
            cells: 2,
            fan_pwm_channel: None,
            fan_pwm_hz: 25_000.0,
            led_gpio: None,
        }
    }
}

/// rppal's PWM as an embedded-hal 1.0 `SetDutyCycle` (rppal only implements the 0.2 trait).
pub struct RppalPwm(rppal::pwm::Pwm);

/// rppal's PWM error as an embedded-hal error.
#[derive(Debug)]
pub struct PwmError(pub rppal::pwm::Error);

impl embedded_hal::pwm::Error for PwmError {
    fn kind(&self) -> embedded_hal::pwm::ErrorKind {
        embedded_hal::pwm::ErrorKind::Other
    }
}

impl ErrorType for RppalPwm {
    type Error = PwmError;
}

impl SetDutyCycle for RppalPwm {
    fn max_duty_cycle(&self) -> u16 {
        u16::MAX
    }

    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Self::Error> {
        self.0.set_duty_cycle(f64::from(duty) / f64::from(u16::MAX)).map_err(PwmError)
    }
}

fn dev(e: impl std::fmt::Display) -> HardwareError {
    HardwareError::Device(e.to_string())
}

/// The board.
pub struct RpiBoard {
    sysfs: SysfsBoard,
    ina: Ina219<rppal::i2c::I2c>,
    cells: u32,
    fan: Option<PwmFan<RppalPwm>>,
    led: Option<GpioLed<rppal::gpio::OutputPin>>,
}

impl RpiBoard {
    /// Opens the I2C bus, programs the INA219, claims the fan and LED pins.
    ///
    /// # Errors
    /// Not a Pi, no permission on /dev/i2c-*, /dev/gpiomem or the PWM sysfs, or no INA219 answering.
    pub fn open(sys_root: &Path, cfg: &RpiConfig) -> Result<Self, HardwareError> {
        let i2c = rppal::i2c::I2c::with_bus(cfg.i2c_bus).map_err(dev)?;
        let ina = Ina219::new(i2c, cfg.ina219).map_err(dev)?;
        let fan = match cfg.fan_pwm_channel {
            Some(ch) => {
                let channel = if ch == 0 { rppal::pwm::Channel::Pwm0 } else { rppal::pwm::Channel::Pwm1 };
                let pwm =
                    rppal::pwm::Pwm::with_frequency(channel, cfg.fan_pwm_hz, 0.0, rppal::pwm::Polarity::Normal, true)
                        .map_err(dev)?;
                Some(PwmFan::new(RppalPwm(pwm)))
            }
            None => None,
        };
        let led = match cfg.led_gpio {
            Some(pin) => {
                Some(GpioLed::new(rppal::gpio::Gpio::new().map_err(dev)?.get(pin).map_err(dev)?.into_output()))
            }
            None => None,
        };
        Ok(Self { sysfs: SysfsBoard::new(sys_root), ina, cells: cfg.cells, fan, led })
    }
}

impl ThermalSensor for RpiBoard {
    fn soc_temperature_c(&mut self) -> Result<Option<f64>, HardwareError> {
        self.sysfs.soc_temperature_c()
    }

    fn thermal_zones(&mut self) -> Result<Vec<(String, f64)>, HardwareError> {
        self.sysfs.thermal_zones()
    }
}

impl PowerSource for RpiBoard {
    fn read_power(&mut self) -> Result<PowerReading, HardwareError> {
        let r = self.ina.read_all().map_err(dev)?;
        let charging = r.current_a > 0.02;
        let on_battery = r.current_a < -0.02;
        Ok(PowerReading {
            input_present: Some(!on_battery),
            on_battery: Some(on_battery),
            battery_soc_pct: Some(li_ion_soc_pct(r.bus_voltage_v, self.cells)),
            charging: Some(charging),
            input_voltage_v: Some(r.bus_voltage_v),
            input_current_a: Some(r.current_a),
            input_power_w: Some(r.power_w),
        })
    }
}

impl Board for RpiBoard {
    fn throttle_flags(&mut self) -> Result<Option<ThrottleFlags>, HardwareError> {
        self.sysfs.throttle_flags()
    }

    fn fan(&mut self) -> Option<&mut dyn Fan> {
        match self.fan.as_mut() {
            Some(f) => Some(f),
            None => self.sysfs.fan(),
        }
    }

    fn cpu_governor(&mut self) -> Option<&mut dyn CpuGovernor> {
        self.sysfs.cpu_governor()
    }

    fn status_led(&mut self) -> Option<&mut dyn StatusLed> {
        self.led.as_mut().map(|l| l as &mut dyn StatusLed)
    }
}
