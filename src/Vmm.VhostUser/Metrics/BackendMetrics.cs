using System.Diagnostics;
using System.Diagnostics.Metrics;
using Vmm.Virtio;
using Vmm.Virtio.Metrics;

namespace Vmm.VhostUser.Metrics;

/// <summary>
/// The vhost-user back-end's session instruments on the <c>ManagedVmm.Backend</c> meter
/// (<see cref="VmmMeters.Backend"/>), all tagged <c>device</c>; the device's queues are counted
/// by <see cref="VmmMeters.BackendQueues"/>. Every call is on the control path (one per
/// connection or failure), never per request.
/// <list type="bullet">
/// <item><c>vmm.backend.sessions</c> (Counter, <c>{session}</c>): front-end connections served.</item>
/// <item><c>vmm.backend.sessions.active</c> (UpDownCounter, <c>{session}</c>): connections being served now (0 or 1).</item>
/// <item><c>vmm.backend.handshake.duration</c> (Histogram, <c>s</c>): from a connection's first message to its first ring started.</item>
/// <item><c>vmm.backend.session.faults</c> (Counter, <c>{fault}</c>, also tagged <c>error.type</c>): sessions ended by the front-end breaking the protocol or a limit, or by an unexpected error (a queue stopped by a malformed ring is <c>vmm.backend.queue.faults</c>).</item>
/// </list>
/// </summary>
public static class BackendMetrics
{
    private static readonly Counter<long> s_sessions =
        VmmMeters.Backend.CreateCounter<long>("vmm.backend.sessions", "{session}", "Front-end connections served.");

    private static readonly UpDownCounter<long> s_active =
        VmmMeters.Backend.CreateUpDownCounter<long>("vmm.backend.sessions.active", "{session}", "Front-end connections being served now.");

    private static readonly Histogram<double> s_handshake =
        VmmMeters.Backend.CreateHistogram<double>("vmm.backend.handshake.duration", "s", "From a connection's first message to its first ring started.");

    private static readonly Counter<long> s_faults =
        VmmMeters.Backend.CreateCounter<long>("vmm.backend.session.faults", "{fault}", "Sessions ended by an error.");

    /// <summary>The <c>device</c> tag of <paramref name="device"/>: its metrics name, or its type for a device of another kind.</summary>
    public static string DeviceName(IVirtioDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        return device is VirtioDeviceBase named ? named.MetricsName : device.DeviceId.ToString().ToLowerInvariant();
    }

    /// <summary>A connection is being served; returns its start for <see cref="FirstRingStarted"/>.</summary>
    public static long SessionStarted(string device)
    {
        s_sessions.Add(1, new KeyValuePair<string, object?>(VmmMeters.DeviceTag, device));
        s_active.Add(1, new KeyValuePair<string, object?>(VmmMeters.DeviceTag, device));
        return Stopwatch.GetTimestamp();
    }

    /// <summary>A connection <see cref="SessionStarted"/> counted is over.</summary>
    public static void SessionEnded(string device) =>
        s_active.Add(-1, new KeyValuePair<string, object?>(VmmMeters.DeviceTag, device));

    /// <summary>The connection's first ring started: its handshake is done.</summary>
    public static void FirstRingStarted(string device, long started) =>
        s_handshake.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, new KeyValuePair<string, object?>(VmmMeters.DeviceTag, device));

    /// <summary>A session ended by <paramref name="error"/>.</summary>
    public static void Fault(string device, Exception error) => s_faults.AddFault(device, error);
}
