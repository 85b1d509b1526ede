//! The settings of a sync session, validated before anything runs.

use std::time::Duration;

/// Settings of a sync session (host and clients must agree on the tick rate).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Simulation ticks per second. Defaults to 60.
    pub tick_rate_hz: u32,
    /// Ticks the host buffers each client's input before applying it (absorbs jitter; the
    /// client predicts this far ahead). Defaults to 4.
    pub delay_ticks: u32,
    /// Most fixed steps one [`Clock::advance`](crate::Clock::advance) runs; time beyond that is
    /// dropped (a stalled process catches up without a spiral of death). Defaults to 8.
    pub max_steps_per_advance: u32,
    /// Packets each input is repeated in, so one lost packet does not lose it. Defaults to 3.
    pub input_redundancy: u32,
    /// Bounds of the adaptive render delay for interpolated entities, in ticks. Defaults to
    /// 2 and 12.
    pub render_delay_ticks: (u32, u32),
    /// Largest speed-up or slow-down of a client's clock to keep the host's input buffer at
    /// its target depth, as a fraction. Defaults to 0.05 (5 %).
    pub max_time_dilation: f64,
    /// How long a dropped client may resume from its last acknowledged tick. Defaults to 30 s.
    pub resume_grace: Duration,
    /// Silence after which a peer counts as lost (the host stops sending to it; a client
    /// starts its reconnect ladder). Defaults to 1 s.
    pub peer_timeout: Duration,
    /// Most clients a host serves at once. Defaults to 64.
    pub max_clients: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            tick_rate_hz: 60,
            delay_ticks: 4,
            max_steps_per_advance: 8,
            input_redundancy: 3,
            render_delay_ticks: (2, 12),
            max_time_dilation: 0.05,
            resume_grace: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(1),
            max_clients: 64,
        }
    }
}

/// A setting that cannot work, with the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("sync setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting's name.
    pub setting: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl SyncConfig {
    /// Checks every setting; the first problem names the setting and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting, reason: &str| {
            Err(ConfigError {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.tick_rate_hz == 0 || self.tick_rate_hz > 1000 {
            return bad(
                "tick_rate_hz",
                "must be between 1 and 1000 ticks per second (60 is usual)",
            );
        }
        if self.delay_ticks > 255 {
            return bad("delay_ticks", "must be at most 255 ticks (4 is usual)");
        }
        if self.max_steps_per_advance == 0 {
            return bad(
                "max_steps_per_advance",
                "must be at least 1, or the simulation never advances",
            );
        }
        if self.input_redundancy == 0 || self.input_redundancy > 32 {
            return bad(
                "input_redundancy",
                "must be between 1 (no repeat) and 32 packets",
            );
        }
        let (lo, hi) = self.render_delay_ticks;
        if lo > hi {
            return bad(
                "render_delay_ticks",
                "the minimum must not exceed the maximum",
            );
        }
        if !(0.0..=0.25).contains(&self.max_time_dilation) {
            return bad(
                "max_time_dilation",
                "must be between 0 and 0.25 (a few percent keeps motion natural)",
            );
        }
        if self.peer_timeout < self.tick() * 4 {
            return bad(
                "peer_timeout",
                "must be at least 4 ticks, or every late packet looks like a lost peer",
            );
        }
        if self.max_clients == 0 || self.max_clients > 65_535 {
            return bad("max_clients", "must be between 1 and 65,535");
        }
        Ok(())
    }

    /// The duration of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_secs(1) / self.tick_rate_hz.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_bad_value_names_its_setting() {
        assert_eq!(SyncConfig::default().validate(), Ok(()));
        let cases: [(SyncConfig, &str); 6] = [
            (
                SyncConfig {
                    tick_rate_hz: 0,
                    ..Default::default()
                },
                "tick_rate_hz",
            ),
            (
                SyncConfig {
                    delay_ticks: 1000,
                    ..Default::default()
                },
                "delay_ticks",
            ),
            (
                SyncConfig {
                    max_steps_per_advance: 0,
                    ..Default::default()
                },
                "max_steps_per_advance",
            ),
            (
                SyncConfig {
                    input_redundancy: 0,
                    ..Default::default()
                },
                "input_redundancy",
            ),
            (
                SyncConfig {
                    render_delay_ticks: (5, 2),
                    ..Default::default()
                },
                "render_delay_ticks",
            ),
            (
                SyncConfig {
                    max_time_dilation: f64::NAN,
                    ..Default::default()
                },
                "max_time_dilation",
            ),
        ];
        for (cfg, setting) in cases {
            let e = cfg.validate().expect_err(setting);
            assert_eq!(e.setting, setting);
            assert!(e.to_string().contains(setting), "{e}");
        }
        assert_eq!(
            SyncConfig::default().tick(),
            Duration::from_nanos(16_666_666)
        );
    }
}
