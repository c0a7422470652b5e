//! Traces (docs/tracing.md): with `[otel] endpoint` set, the spans of Spark
//! Fleet's own crates go to an OTLP/gRPC endpoint (an OpenTelemetry
//! Collector, Jaeger, Tempo); log lines go on as before. The W3C trace context
//! of the span that sends a message crosses the wire inside the signed
//! envelope ([`current_traceparent`]), and the receiving side's span becomes
//! its child ([`follow`]), so one trace follows a batch or a job across
//! processes. Off (the default), no exporter runs and envelopes carry no
//! context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Layered;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::NetError;

/// The crates whose spans are exported (not the libraries below them).
const OUR_CRATES: [&str; 5] = ["fleet_agent", "fleet_controller", "fleet_net", "fleet_inference", "fleet_local"];
/// The W3C header the context travels in.
const TRACEPARENT: &str = "traceparent";
/// Whether this process exports traces: when not, carrying a context is skipped at once.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// `[otel]` of the agent's and the controller's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP over gRPC, e.g. `http://127.0.0.1:4317`. Empty (default): no traces.
    pub endpoint: String,
    /// Share of the traces this process starts that are kept, 0 to 1 (a trace
    /// started elsewhere follows its parent's choice). Default 1.
    pub sample_ratio: f64,
    /// `service.name` of the spans; empty: the program's name.
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self { endpoint: String::new(), sample_ratio: 1.0, service_name: String::new() }
    }
}

impl OtelConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// A ratio outside 0-1 or an endpoint that is no http(s) URL.
    pub fn validate(&self) -> Result<(), NetError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(NetError::Otel(format!("sample_ratio = {} must be between 0 and 1", self.sample_ratio)));
        }
        if !self.endpoint.is_empty() && !self.endpoint.starts_with("http://") && !self.endpoint.starts_with("https://")
        {
            return Err(NetError::Otel(format!(
                "endpoint = {:?} must be an OTLP/gRPC URL such as http://127.0.0.1:4317",
                self.endpoint
            )));
        }
        Ok(())
    }
}

/// The exporter of a process; [`Traces::shutdown`] sends what is buffered.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "Traces not all exported at shutdown.");
        }
    }
}

/// The OTLP layer for `cfg`, or `None` when no endpoint is set. Call inside
/// a Tokio runtime (the gRPC client needs one).
///
/// # Errors
/// Settings the exporter refuses.
pub fn layer<S>(cfg: &OtelConfig, program: &str) -> Result<Option<(impl Layer<S>, Traces)>, NetError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if cfg.endpoint.is_empty() {
        return Ok(None);
    }
    cfg.validate()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.endpoint.clone())
        .build()
        .map_err(|e| NetError::Otel(format!("exporter to {}: {e}", cfg.endpoint)))?;
    let name = if cfg.service_name.is_empty() { program.to_owned() } else { cfg.service_name.clone() };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    let tracer = provider.tracer(program.to_owned());
    // Our spans are DEBUG: without this layer no one wants them and they cost nothing.
    let ours = OUR_CRATES.iter().fold(Targets::new(), |t, c| t.with_target(*c, tracing::Level::DEBUG));
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(ours);
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some((layer, Traces { provider })))
}

/// Installs the process's subscriber: log lines filtered by `logs`, and
/// with `cfg.endpoint` set the spans of our crates to OTLP (whatever the log
/// level). Our spans are at DEBUG: with traces off and logs at INFO, none is
/// ever made, and the subscriber is the plain one (one global filter).
/// Call inside a Tokio runtime.
///
/// # Errors
/// Settings the exporter refuses.
pub fn init<F>(logs: F, cfg: &OtelConfig, program: &str) -> Result<Option<Traces>, NetError>
where
    F: tracing_subscriber::layer::Filter<Registry>
        + Layer<Layered<tracing_subscriber::fmt::Layer<Registry>, Registry>>
        + Send
        + Sync
        + 'static,
{
    match layer(cfg, program)? {
        Some((otel, traces)) => {
            let fmt = tracing_subscriber::fmt::layer().with_filter(logs);
            tracing_subscriber::registry().with(fmt).with(otel).init();
            Ok(Some(traces))
        }
        None => {
            tracing_subscriber::registry().with(tracing_subscriber::fmt::layer()).with(logs).init();
            Ok(None)
        }
    }
}

/// The W3C `traceparent` of the current span, or empty when nothing is traced.
#[must_use]
pub fn current_traceparent() -> String {
    if !EXPORTING.load(Ordering::Relaxed) {
        return String::new();
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` a child of the span `traceparent` names (from the wire);
/// nothing when it is empty or not a valid trace context. Call it before
/// `span` is entered or gets children: an OpenTelemetry span's parent is
/// fixed once it starts.
pub fn follow(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(OtelConfig::default().validate().is_ok());
        let bad = OtelConfig { sample_ratio: 1.5, ..OtelConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("between 0 and 1"));
        let bad = OtelConfig { endpoint: "127.0.0.1:4317".into(), ..OtelConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("http://127.0.0.1:4317"));
    }

    #[test]
    fn without_a_tracer_nothing_travels() {
        // No subscriber in this test's thread: nothing to carry, exporting or not.
        let span = tracing::info_span!("x");
        let _in = span.enter();
        assert_eq!(current_traceparent(), "");
        follow(&span, "not a context");
    }

    #[test]
    fn a_context_goes_out_and_comes_back_as_the_parent() {
        use opentelemetry::trace::TracerProvider as _;
        EXPORTING.store(true, Ordering::Relaxed);
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("send");
            let tp = sender.in_scope(current_traceparent);
            let trace_id = sender.context().span().span_context().trace_id();
            assert!(tp.starts_with("00-") && tp.contains(&trace_id.to_string()), "{tp}");
            let receiver = tracing::info_span!("receive");
            follow(&receiver, &tp);
            assert_eq!(receiver.context().span().span_context().trace_id(), trace_id);
        });
    }
}
