using System.Diagnostics.Metrics;

namespace Vmm.Virtio.Metrics;

/// <summary>
/// One side's per-queue instruments, created once per meter; each queue's counters are a
/// <see cref="QueueMetrics"/> got from <see cref="Get"/>. Names, with <c>P</c> the side's prefix
/// (<c>vmm.backend</c> or <c>vmm.frontend</c>), all tagged <c>device</c> and <c>queue</c>:
/// <list type="bullet">
/// <item><c>P.queue.kicks</c> (ObservableCounter, <c>{kick}</c>): driver-to-device notifications (device side: wake-ups by a kick).</item>
/// <item><c>P.queue.interrupts</c> (ObservableCounter, <c>{interrupt}</c>): device-to-driver notifications (used buffer notifications, vhost-user calls).</item>
/// <item><c>P.requests</c> (ObservableCounter, <c>{request}</c>, also tagged <c>direction</c>): requests completed.</item>
/// <item><c>P.request.bytes</c> (ObservableCounter, <c>By</c>, also tagged <c>direction</c>): data moved by requests that succeeded.</item>
/// <item><c>P.requests.in_flight</c> (ObservableGauge, <c>{request}</c>): requests started and not completed.</item>
/// <item><c>P.request.duration</c> (Histogram, <c>s</c>, also tagged <c>direction</c>): request latency, recorded only while a listener is subscribed.</item>
/// <item><c>P.queue.faults</c> (ObservableCounter, <c>{fault}</c>): queues stopped by an error (a malformed ring, guest memory out of range).</item>
/// </list>
/// </summary>
/// <remarks>
/// Nothing here takes a lock or allocates per request: counters are plain fields of one writer
/// (the queue's thread) read by the observable instruments' callbacks when a listener collects,
/// and the histogram is recorded with tag lists built once per queue. A queue's counters outlive
/// its rings: a queue restarted (a reconnect, a reset) keeps counting where it was, as the
/// cumulative instruments require.
/// </remarks>
public sealed class QueueInstruments
{
    private readonly Lock _lock = new();
    private QueueMetrics[] _queues = [];

    internal QueueInstruments(Meter meter, string prefix)
    {
        ArgumentNullException.ThrowIfNull(meter);
        Prefix = prefix;
        meter.CreateObservableCounter($"{prefix}.queue.kicks", () => Observe(static q => q.Kicks), "{kick}", "Driver-to-device notifications (kicks).");
        meter.CreateObservableCounter($"{prefix}.queue.interrupts", () => Observe(static q => q.Interrupts), "{interrupt}", "Device-to-driver notifications (interrupts, vhost-user calls).");
        meter.CreateObservableCounter($"{prefix}.requests", () => ObserveByDirection(static (q, d) => q.Requests(d)), "{request}", "Requests completed.");
        meter.CreateObservableCounter($"{prefix}.request.bytes", () => ObserveByDirection(static (q, d) => q.Bytes(d)), "By", "Data moved by requests that succeeded.");
        meter.CreateObservableGauge($"{prefix}.requests.in_flight", () => Observe(static q => (long)q.InFlight), "{request}", "Requests started and not completed.");
        meter.CreateObservableCounter($"{prefix}.queue.faults", () => Observe(static q => q.Faults), "{fault}", "Queues stopped by an error.");
        Duration = meter.CreateHistogram<double>($"{prefix}.request.duration", "s", "Request latency, from pop (device) or submit (driver) to completion.");
    }

    /// <summary>The instruments' name prefix, e.g. <c>vmm.backend</c>.</summary>
    public string Prefix { get; }

    /// <summary>The queues counted so far.</summary>
    public IReadOnlyList<QueueMetrics> Queues => Volatile.Read(ref _queues);

    internal Histogram<double> Duration { get; }

    /// <summary>
    /// The counters of queue <paramref name="queue"/> of <paramref name="device"/>, created on
    /// first use and kept for the process's life (a device that comes back under the same name
    /// continues its counts). Called when a queue starts, never per request.
    /// </summary>
    public QueueMetrics Get(string device, int queue)
    {
        ArgumentException.ThrowIfNullOrEmpty(device);
        ArgumentOutOfRangeException.ThrowIfNegative(queue);
        QueueMetrics[] queues = Volatile.Read(ref _queues);
        foreach (QueueMetrics q in queues)
        {
            if (q.Queue == queue && q.Device == device)
            {
                return q;
            }
        }

        lock (_lock)
        {
            foreach (QueueMetrics q in _queues)
            {
                if (q.Queue == queue && q.Device == device)
                {
                    return q;
                }
            }

            var created = new QueueMetrics(this, device, queue);

            // Copy on write: the callbacks read the array without the lock.
            Volatile.Write(ref _queues, [.. _queues, created]);
            return created;
        }
    }

    private Measurement<long>[] Observe(Func<QueueMetrics, long> read)
    {
        QueueMetrics[] queues = Volatile.Read(ref _queues);
        var measurements = new Measurement<long>[queues.Length];
        for (int i = 0; i < queues.Length; i++)
        {
            measurements[i] = new Measurement<long>(read(queues[i]), queues[i].Tags);
        }

        return measurements;
    }

    private Measurement<long>[] ObserveByDirection(Func<QueueMetrics, RequestDirection, long> read)
    {
        QueueMetrics[] queues = Volatile.Read(ref _queues);
        var measurements = new Measurement<long>[queues.Length * QueueMetrics.Directions];
        for (int i = 0; i < queues.Length; i++)
        {
            for (int d = 0; d < QueueMetrics.Directions; d++)
            {
                measurements[(i * QueueMetrics.Directions) + d] = new Measurement<long>(read(queues[i], (RequestDirection)d), queues[i].DirectionTags(d));
            }
        }

        return measurements;
    }
}
