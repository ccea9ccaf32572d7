using System.Diagnostics.Metrics;
using BenchmarkDotNet.Attributes;
using Vmm.Virtio.Metrics;

namespace Vmm.Benchmarks;

/// <summary>
/// What counting one request costs a queue's thread (<see cref="QueueMetrics"/>: the start
/// timestamp and the completion), with no listener (the default) and with a MeterListener
/// subscribed to the meters (as <c>--stats</c>, dotnet-counters or OpenTelemetry are), which
/// also records the latency histogram.
/// </summary>
[MemoryDiagnoser]
public class MetricsBenchmarks
{
    private QueueMetrics _metrics = null!;
    private MeterListener? _listener;
    private long _sink;

    [Params(false, true)]
    public bool Listener { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _metrics = VmmMeters.BackendQueues.Get("bench", 0);
        if (Listener)
        {
            _listener = new MeterListener
            {
                InstrumentPublished = (instrument, listener) =>
                {
                    if (instrument.Meter.Name == VmmMeters.BackendName)
                    {
                        listener.EnableMeasurementEvents(instrument);
                    }
                },
            };
            _listener.SetMeasurementEventCallback<double>((_, value, _, _) => _sink += (long)value);
            _listener.Start();
        }
    }

    [GlobalCleanup]
    public void Cleanup() => _listener?.Dispose();

    /// <summary>What timing a request alone costs: the two clock reads of a latency.</summary>
    [Benchmark]
    public long TwoClockReads() => System.Diagnostics.Stopwatch.GetTimestamp() - System.Diagnostics.Stopwatch.GetTimestamp();

    [Benchmark]
    public void CountOneRequest()
    {
        long started = _metrics.StartTimestamp();
        _metrics.Completed(RequestDirection.Read, 4096, started);
    }
}
