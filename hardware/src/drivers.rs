//! Small drivers generic over embedded-hal 1.0 traits: a PWM fan and a GPIO
//! status LED. rppal provides the pins on a Pi (see `rpi`); tests use
//! `embedded-hal-mock`.

use embedded_hal::digital::OutputPin;
use embedded_hal::pwm::SetDutyCycle;

use crate::{Fan, HardwareError, StatusLed};

/// A fan on a PWM pin: duty 0.0-1.0 maps onto the pin's duty range.
pub struct PwmFan<P> {
    pin: P,
    duty: Option<f64>,
}

impl<P: SetDutyCycle> PwmFan<P> {
    #[must_use]
    pub fn new(pin: P) -> Self {
        Self { pin, duty: None }
    }
}

impl<P: SetDutyCycle> Fan for PwmFan<P> {
    fn set_duty(&mut self, duty: f64) -> Result<(), HardwareError> {
        let duty = duty.clamp(0.0, 1.0);
        let max = self.pin.max_duty_cycle();
        let raw = (duty * f64::from(max)).round() as u16;
        self.pin.set_duty_cycle(raw).map_err(|e| HardwareError::Device(format!("PWM fan: {e:?}")))?;
        self.duty = Some(f64::from(raw) / f64::from(max.max(1)));
        Ok(())
    }

    fn duty(&self) -> Option<f64> {
        self.duty
    }
}

/// A status LED on a GPIO output pin (active high).
pub struct GpioLed<P> {
    pin: P,
}

impl<P: OutputPin> GpioLed<P> {
    #[must_use]
    pub fn new(pin: P) -> Self {
        Self { pin }
    }
}

impl<P: OutputPin> StatusLed for GpioLed<P> {
    fn set_led(&mut self, on: bool) -> Result<(), HardwareError> {
        let r = if on { self.pin.set_high() } else { self.pin.set_low() };
        r.map_err(|e| HardwareError::Device(format!("status LED: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as PinT};
    use embedded_hal_mock::eh1::pwm::{Mock as PwmMock, Transaction as PwmT};

    #[test]
    fn fan_duty_maps_onto_the_pwm_range() {
        let tx = [
            PwmT::max_duty_cycle(1000),
            PwmT::set_duty_cycle(750),
            PwmT::max_duty_cycle(1000),
            PwmT::set_duty_cycle(1000),
            PwmT::max_duty_cycle(1000),
            PwmT::set_duty_cycle(0),
        ];
        let mut pwm = PwmMock::new(&tx);
        {
            let mut fan = PwmFan::new(&mut pwm);
            fan.set_duty(0.75).unwrap();
            assert_eq!(fan.duty(), Some(0.75));
            fan.set_duty(7.0).unwrap();
            fan.set_duty(-1.0).unwrap();
            assert_eq!(fan.duty(), Some(0.0));
        }
        pwm.done();
    }

    #[test]
    fn led_drives_the_pin() {
        let tx = [PinT::set(State::High), PinT::set(State::Low)];
        let mut pin = PinMock::new(&tx);
        {
            let mut led = GpioLed::new(&mut pin);
            led.set_led(true).unwrap();
            led.set_led(false).unwrap();
        }
        pin.done();
    }
}
