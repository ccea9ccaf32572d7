using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Vmm.Host.Run;
using Vmm.Virtio.Metrics;

namespace Vmm.Host.Stats;

/// <summary>One queue's figures over the last window (rates per second), and its device's totals.</summary>
/// <param name="Side">"backend" (the device side) or "frontend" (the VMM side).</param>
/// <param name="Device">The device's name.</param>
/// <param name="Queue">The queue's index.</param>
/// <param name="Requests">Requests completed since the start (all directions).</param>
/// <param name="RequestsPerSecond">Requests per second by direction (read, write, other).</param>
/// <param name="MebibytesPerSecond">MiB/s by direction (read, write, other).</param>
/// <param name="InFlight">Requests in flight at the end of the window.</param>
/// <param name="P50Microseconds">Median latency of the requests completed in the window (0: none, or no latency recorded).</param>
/// <param name="P99Microseconds">99th percentile latency of the window.</param>
/// <param name="KicksPerSecond">Kicks per second.</param>
/// <param name="InterruptsPerSecond">Interrupts (calls) per second.</param>
/// <param name="Reconnects">The device's reconnects since the start (front-end side).</param>
/// <param name="Faults">Faults since the start: the queue's, plus its device's connection or session faults.</param>
public sealed record StatsRow(
    string Side,
    string Device,
    int Queue,
    long Requests,
    double[] RequestsPerSecond,
    double[] MebibytesPerSecond,
    long InFlight,
    double P50Microseconds,
    double P99Microseconds,
    double KicksPerSecond,
    double InterruptsPerSecond,
    long Reconnects,
    long Faults);

/// <summary>
/// Reads the <c>ManagedVmm.Backend</c> and <c>ManagedVmm.Frontend</c> meters through a
/// <see cref="MeterListener"/>, as any external tool would, and turns them into per-queue rows
/// each time <see cref="Collect"/> is called. Observable instruments are read by
/// <see cref="Collect"/> on its caller's thread; the latency histograms arrive on the queues'
/// threads and go into per-queue bucket arrays with one <see cref="Interlocked"/> increment (no
/// lock, no allocation once a queue's row exists).
/// </summary>
public sealed class StatsCollector : IDisposable
{
    private const int Directions = 3;

    // The row the calling thread recorded a latency into last: a queue's thread records into
    // one row only, so the dictionary is looked up once per thread, not per request.
    [ThreadStatic]
    private static RowCache? t_lastRow;

    private readonly MeterListener _listener = new();
    private readonly ConcurrentDictionary<RowKey, RowState> _rows = new();
    private readonly ConcurrentDictionary<(string Side, string Device), DeviceState> _devices = new();
    private readonly Func<RowKey, RowState> _newRow = _ => new RowState();
    private readonly Func<(string Side, string Device), DeviceState> _newDevice = _ => new DeviceState();
    private long _lastCollect = Stopwatch.GetTimestamp();

    public StatsCollector()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (Bind(instrument) is { } binding)
            {
                listener.EnableMeasurementEvents(instrument, binding);
            }
        };
        _listener.SetMeasurementEventCallback<long>(OnLong);
        _listener.SetMeasurementEventCallback<double>(OnDouble);
        _listener.Start();
    }

    private enum Kind
    {
        Kicks,
        Interrupts,
        Requests,
        Bytes,
        InFlight,
        QueueFaults,
        Duration,
        Reconnects,
        DeviceFaults,
    }

    /// <summary>Reads every observable instrument and returns one row per queue seen, rates over the time since the last call.</summary>
    public IReadOnlyList<StatsRow> Collect()
    {
        _listener.RecordObservableInstruments();
        long now = Stopwatch.GetTimestamp();
        double seconds = Math.Max(1e-3, Stopwatch.GetElapsedTime(_lastCollect, now).TotalSeconds);
        _lastCollect = now;
        var rows = new List<StatsRow>(_rows.Count);
        foreach ((RowKey key, RowState state) in _rows.OrderBy(r => r.Key.Side, StringComparer.Ordinal).ThenBy(r => r.Key.Device, StringComparer.Ordinal).ThenBy(r => r.Key.Queue))
        {
            DeviceState? device = _devices.GetValueOrDefault((key.Side, key.Device));
            rows.Add(state.Take(key, seconds, device));
        }

        return rows;
    }

    public void Dispose() => _listener.Dispose();

    private static Binding? Bind(Instrument instrument)
    {
        string? side = instrument.Meter.Name switch
        {
            VmmMeters.BackendName => "backend",
            VmmMeters.FrontendName => "frontend",
            _ => null,
        };
        if (side is null)
        {
            return null;
        }

        string prefix = $"vmm.{side}.";
        if (!instrument.Name.StartsWith(prefix, StringComparison.Ordinal))
        {
            return null;
        }

        Kind? kind = instrument.Name[prefix.Length..] switch
        {
            "queue.kicks" => Kind.Kicks,
            "queue.interrupts" => Kind.Interrupts,
            "requests" => Kind.Requests,
            "request.bytes" => Kind.Bytes,
            "requests.in_flight" => Kind.InFlight,
            "queue.faults" => Kind.QueueFaults,
            "request.duration" => Kind.Duration,
            "reconnects" => Kind.Reconnects,
            "faults" or "session.faults" => Kind.DeviceFaults,
            _ => null,
        };
        return kind is { } k ? new Binding(side, k) : null;
    }

    private void OnLong(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        if (state is not Binding binding || !TryReadTags(tags, out string? device, out int queue, out int direction))
        {
            return;
        }

        if (binding.Kind is Kind.Reconnects or Kind.DeviceFaults)
        {
            DeviceState d = _devices.GetOrAdd((binding.Side, device), _newDevice);
            if (binding.Kind == Kind.Reconnects)
            {
                Interlocked.Add(ref d.Reconnects, value);
            }
            else
            {
                Interlocked.Add(ref d.Faults, value);
            }

            return;
        }

        if (queue < 0)
        {
            return;
        }

        // Observable instruments: called from Collect, on its thread, with cumulative values.
        RowState row = _rows.GetOrAdd(new RowKey(binding.Side, device, queue), _newRow);
        switch (binding.Kind)
        {
            case Kind.Kicks:
                row.Kicks = value;
                break;
            case Kind.Interrupts:
                row.Interrupts = value;
                break;
            case Kind.InFlight:
                row.InFlight = value;
                break;
            case Kind.QueueFaults:
                row.Faults = value;
                break;
            case Kind.Requests when direction >= 0:
                row.Requests[direction] = value;
                break;
            case Kind.Bytes when direction >= 0:
                row.Bytes[direction] = value;
                break;
        }
    }

    private void OnDouble(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        // On a queue's thread, once per request: a lookup and an interlocked increment.
        if (state is Binding { Kind: Kind.Duration } binding && TryReadTags(tags, out string? device, out int queue, out _) && queue >= 0)
        {
            RowCache? last = t_lastRow;
            RowState row;
            if (last is not null && ReferenceEquals(last.Owner, this) && ReferenceEquals(last.Side, binding.Side) && last.Queue == queue && string.Equals(last.Device, device, StringComparison.Ordinal))
            {
                row = last.Row;
            }
            else
            {
                row = _rows.GetOrAdd(new RowKey(binding.Side, device, queue), _newRow);
                t_lastRow = new RowCache(this, binding.Side, device, queue, row);
            }

            Interlocked.Increment(ref row.Latency[LatencyHistogram.Index((ulong)Math.Max(0, value * 1e9))]);
        }
    }

    private static bool TryReadTags(ReadOnlySpan<KeyValuePair<string, object?>> tags, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? device, out int queue, out int direction)
    {
        device = null;
        queue = -1;
        direction = -1;
        foreach (KeyValuePair<string, object?> tag in tags)
        {
            switch (tag.Key)
            {
                case VmmMeters.DeviceTag:
                    device = tag.Value as string;
                    break;
                case VmmMeters.QueueTag when tag.Value is int q:
                    queue = q;
                    break;
                case VmmMeters.DirectionTag:
                    direction = tag.Value switch
                    {
                        "read" => (int)RequestDirection.Read,
                        "write" => (int)RequestDirection.Write,
                        _ => (int)RequestDirection.Other,
                    };
                    break;
            }
        }

        return device is not null;
    }

    private readonly record struct RowKey(string Side, string Device, int Queue);

    private sealed record Binding(string Side, Kind Kind);

    private sealed record RowCache(StatsCollector Owner, string Side, string Device, int Queue, RowState Row);

    private sealed class DeviceState
    {
        public long Reconnects;
        public long Faults;
    }

    private sealed class RowState
    {
        public readonly long[] Requests = new long[Directions];
        public readonly long[] Bytes = new long[Directions];
        public readonly long[] Latency = new long[LatencyHistogram.BucketCount];
        public long Kicks;
        public long Interrupts;
        public long InFlight;
        public long Faults;

        private readonly long[] _lastRequests = new long[Directions];
        private readonly long[] _lastBytes = new long[Directions];
        private readonly LatencyHistogram _window = new();
        private long _lastKicks;
        private long _lastInterrupts;

        public StatsRow Take(RowKey key, double seconds, DeviceState? device)
        {
            var rates = new double[Directions];
            var mebibytes = new double[Directions];
            for (int d = 0; d < Directions; d++)
            {
                rates[d] = (Requests[d] - _lastRequests[d]) / seconds;
                mebibytes[d] = (Bytes[d] - _lastBytes[d]) / seconds / (1024.0 * 1024.0);
                _lastRequests[d] = Requests[d];
                _lastBytes[d] = Bytes[d];
            }

            double kicks = (Kicks - _lastKicks) / seconds;
            double interrupts = (Interrupts - _lastInterrupts) / seconds;
            _lastKicks = Kicks;
            _lastInterrupts = Interrupts;
            _window.Clear();
            _window.Drain(Latency);
            return new StatsRow(
                key.Side,
                key.Device,
                key.Queue,
                Requests.Sum(),
                rates,
                mebibytes,
                InFlight,
                _window.Percentile(50) / 1000.0,
                _window.Percentile(99) / 1000.0,
                kicks,
                interrupts,
                device is null ? 0 : Interlocked.Read(ref device.Reconnects),
                Faults + (device is null ? 0 : Interlocked.Read(ref device.Faults)));
        }
    }
}
